// Helpers shared by the native tests: sanitizer detection, per-build
// sizes for stress tests, and Gate (a one-shot event tasks can await).
#pragma once

#include <mutex>

#include "tideloop/runtime.hpp"

#if defined(__SANITIZE_THREAD__)
#define TL_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TL_TSAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define TL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TL_ASAN 1
#endif
#endif

namespace tltest {

// Release / ASan / TSan sizes.
constexpr long scaled(long release, long asan, long tsan) {
#if defined(TL_TSAN)
  (void)release;
  (void)asan;
  return tsan;
#elif defined(TL_ASAN)
  (void)release;
  (void)tsan;
  return asan;
#else
  (void)asan;
  (void)tsan;
  return release;
#endif
}

// A one-shot event: tasks await it, any thread opens it (waking by value).
class Gate {
 public:
  void open() {
    tideloop::Waker w;
    {
      std::lock_guard<std::mutex> g(mu_);
      open_ = true;
      w = std::move(waker_);
    }
    w.wake();
  }
  class Awaiter : public tideloop::internal::LeafAwaiter<Awaiter> {
   public:
    explicit Awaiter(Gate* g) : g_(g) {}
    bool poll_ready(tideloop::internal::TaskHeader* t) {
      std::lock_guard<std::mutex> lk(g_->mu_);
      if (g_->open_) return true;
      g_->waker_ = t->waker();
      return false;
    }
    void await_resume() noexcept {}

   private:
    Gate* g_;
  };
  Awaiter wait() { return Awaiter(this); }

 private:
  std::mutex mu_;
  bool open_ = false;
  tideloop::Waker waker_;
};

}  // namespace tltest
