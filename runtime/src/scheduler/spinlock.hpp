// A test-and-test-and-set spin lock for critical sections of a few
// instructions (owner-set shards, oneshot slots), where a futex mutex's
// syscall path would cost more than the work. Falls back to yielding so a
// preempted holder on an oversubscribed machine does not burn a core.
#pragma once

#include <atomic>
#include <thread>

#include "absl/base/thread_annotations.h"

namespace tideloop::internal {

// One spin-wait step: tells the core we are spinning (x86 `pause`).
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

// Annotated for -Wthread-safety; hold it with LockGuard<SpinLock>
// (tideloop/internal/annotated_mutex.hpp), which the analysis can see.
class ABSL_LOCKABLE SpinLock {
 public:
  void lock() noexcept ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    for (int spins = 0;; ++spins) {
      if (!locked_.exchange(true, std::memory_order_acquire)) return;
      while (locked_.load(std::memory_order_relaxed)) {
        if (++spins > 64) {
          std::this_thread::yield();
        } else {
          cpu_relax();
        }
      }
    }
  }
  bool try_lock() noexcept ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true) {
    return !locked_.exchange(true, std::memory_order_acquire);
  }
  void unlock() noexcept ABSL_UNLOCK_FUNCTION() { locked_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> locked_{false};
};

}  // namespace tideloop::internal
