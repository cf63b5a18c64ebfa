// The scheduler of a block_on root: the root runs on the thread that called
// block_on, so a wake-up only sets a flag and unparks that thread.
#pragma once

#include <atomic>

#include "scheduler/parker.hpp"
#include "tideloop/internal/task_core.hpp"

namespace tideloop::internal {

class BlockOnScheduler final : public Scheduler {
 public:
  explicit BlockOnScheduler(SharedParker* p) : parker_(p) {}
  void schedule(TaskHeader*) override { notify(); }
  void yield_task(TaskHeader*) override { notify(); }
  bool release(TaskHeader*) override { return false; }
  // Consumes a pending notification.
  bool take_notified() noexcept { return notified_.exchange(false, std::memory_order_acquire); }

 private:
  void notify() noexcept {
    // safety: take our own parker reference before publishing the flag; once
    // it is set the blocked thread may return and destroy *this.
    SharedParker* p = parker_;
    p->ref();
    notified_.store(true, std::memory_order_release);
    p->parker.unpark();
    p->unref();
  }
  SharedParker* parker_;
  std::atomic<bool> notified_{false};
};

}  // namespace tideloop::internal
