// Waker: a type-erased, reference-counted "please poll me again" handle, the
// same contract as Rust's std::task::Waker. Leaf futures (channels, timers,
// sockets, join handles) store the waker of the task that waits on them and
// call wake() when the awaited event happened. A waker may outlive its task:
// the reference it holds keeps the task header's memory valid.
#pragma once

#include <utility>

namespace tideloop {

struct WakerVTable {
  void* (*clone)(void* data);  // returns data for the new waker (adds a reference)
  void (*wake)(void* data);    // wakes and consumes this reference
  void (*wake_by_ref)(void* data);
  void (*drop)(void* data);  // releases this reference
};

class Waker {
 public:
  Waker() = default;
  Waker(void* data, const WakerVTable* vt) : data_(data), vt_(vt) {}
  Waker(const Waker& o) : data_(o.vt_ ? o.vt_->clone(o.data_) : nullptr), vt_(o.vt_) {}
  Waker(Waker&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), vt_(std::exchange(o.vt_, nullptr)) {}
  Waker& operator=(const Waker& o) {
    if (this != &o) *this = Waker(o);
    return *this;
  }
  Waker& operator=(Waker&& o) noexcept {
    if (this != &o) {
      reset();
      data_ = std::exchange(o.data_, nullptr);
      vt_ = std::exchange(o.vt_, nullptr);
    }
    return *this;
  }
  ~Waker() { reset(); }

  explicit operator bool() const { return vt_ != nullptr; }
  // Wakes the target and empties this waker.
  void wake() {
    if (vt_) {
      const auto* vt = std::exchange(vt_, nullptr);
      vt->wake(std::exchange(data_, nullptr));
    }
  }
  void wake_by_ref() const {
    if (vt_) vt_->wake_by_ref(data_);
  }
  // True when both wake the same target (used to skip re-registering).
  bool will_wake(const Waker& o) const { return data_ == o.data_ && vt_ == o.vt_; }
  void reset() {
    if (vt_) std::exchange(vt_, nullptr)->drop(std::exchange(data_, nullptr));
  }

 private:
  void* data_ = nullptr;
  const WakerVTable* vt_ = nullptr;
};

}  // namespace tideloop
