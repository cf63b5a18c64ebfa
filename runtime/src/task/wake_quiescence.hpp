// Wake quiescence: lets a runtime free its scheduler without a reference
// count per task. A wake-up reads task->scheduler and calls schedule() after
// its state CAS; if that task is completed by shutdown in between, the
// scheduler could be freed under the waker. Tokio pays an Arc clone per task
// for this. We instead bracket each wake with two plain stores to a
// per-thread sequence number (odd = inside a wake) and have the runtime's
// destructor wait until no thread is inside a wake that began before it.
//
// Ordering: the entry store (release) precedes the waker's acq_rel state CAS;
// shutdown's own CAS on that task reads from the waker's CAS, so shutdown
// sees the odd sequence number when it later scans the slots.
#pragma once

#include <atomic>
#include <cstdint>

namespace tideloop::internal {

struct WakeSlot {
  std::atomic<std::uint64_t> seq{0};
};

WakeSlot* register_wake_slot();
inline thread_local WakeSlot* tl_wake_slot = nullptr;

class WakeBracket {
 public:
  WakeBracket() noexcept : s_(tl_wake_slot ? tl_wake_slot : register_wake_slot()) {
    s_->seq.store(s_->seq.load(std::memory_order_relaxed) + 1, std::memory_order_release);
  }
  ~WakeBracket() {
    s_->seq.store(s_->seq.load(std::memory_order_relaxed) + 1, std::memory_order_release);
  }

 private:
  WakeSlot* s_;
};

// Blocks until every thread that was inside a wake when this was called has
// left it.
void wait_for_wakers_quiescent() noexcept;

}  // namespace tideloop::internal
