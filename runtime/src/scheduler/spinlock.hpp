// A test-and-test-and-set spin lock for critical sections of a few
// instructions (owner-set shards, oneshot slots), where a futex mutex's
// syscall path would cost more than the work. Falls back to yielding so a
// preempted holder on an oversubscribed machine does not burn a core.
#pragma once

#include <atomic>
#include <thread>

namespace tideloop::internal {

class SpinLock {
 public:
  void lock() noexcept {
    for (int spins = 0;; ++spins) {
      if (!locked_.exchange(true, std::memory_order_acquire)) return;
      while (locked_.load(std::memory_order_relaxed)) {
        if (++spins > 64) {
          std::this_thread::yield();
        } else {
#if defined(__x86_64__) || defined(__i386__)
          __builtin_ia32_pause();
#endif
        }
      }
    }
  }
  bool try_lock() noexcept {
    return !locked_.exchange(true, std::memory_order_acquire);
  }
  void unlock() noexcept {
    locked_.store(false, std::memory_order_release);
  }

 private:
  std::atomic<bool> locked_{false};
};

}  // namespace tideloop::internal
