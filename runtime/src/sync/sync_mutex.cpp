// SyncMutex slow paths: spin, then sleep on the futex. See
// tideloop/sync/internal/sync_mutex.hpp.
#include "tideloop/sync/internal/sync_mutex.hpp"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace tideloop::internal {

namespace {
// Spins before sleeping: the protected sections are a few dozen instructions,
// so a holder that is running releases well within this; one that was
// preempted will not, and then the futex is cheaper than spinning on.
constexpr int kSpins = 100;

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}
}  // namespace

void SyncMutex::lock_slow() noexcept {
  for (int i = 0; i < kSpins; ++i) {
    std::uint32_t c = state_.load(std::memory_order_relaxed);
    if (c == kFree && state_.compare_exchange_weak(c, kLocked, std::memory_order_acquire,
                                                   std::memory_order_relaxed))
      return;
    if (c == kContended) break;  // others already sleep: queue up behind them
    cpu_relax();
  }
  // From here on we may sleep, so whoever unlocks must wake: mark contended.
  // Taking the lock this way leaves it kContended, which at worst costs one
  // spurious wake at unlock.
  while (state_.exchange(kContended, std::memory_order_acquire) != kFree) {
    syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&state_), FUTEX_WAIT_PRIVATE, kContended,
            nullptr, nullptr, 0);
  }
}

void SyncMutex::wake_one() noexcept {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&state_), FUTEX_WAKE_PRIVATE, 1, nullptr,
          nullptr, 0);
}

}  // namespace tideloop::internal
