// SyncMutex: the short-critical-section lock inside the sync primitives
// (channel buffers, waiter lists). Not part of the public API.
//
// Why not absl::Mutex or std::mutex: absl::Mutex comes precompiled from the
// distribution without ThreadSanitizer annotations, so under TSan every
// access it guards looks like a race; std::mutex would do, but a pthread
// mutex call is a function call into libc even uncontended. This is
// Drepper's three-state futex mutex ("Futexes Are Tricky", mutex 3): the
// uncontended lock is one inline CAS and the unlock one inline exchange, a
// contended locker spins briefly (the sections it protects are a few dozen
// instructions) and then sleeps on the futex, so a preempted holder on an
// oversubscribed machine costs no burnt core. All synchronisation is through
// std::atomic, which the sanitizers understand.
#pragma once

#include <atomic>
#include <cstdint>

#include "absl/base/thread_annotations.h"

namespace tideloop::internal {

class ABSL_LOCKABLE SyncMutex {
 public:
  SyncMutex() = default;
  SyncMutex(const SyncMutex&) = delete;
  SyncMutex& operator=(const SyncMutex&) = delete;

  void lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    std::uint32_t c = kFree;
    if (state_.compare_exchange_strong(c, kLocked, std::memory_order_acquire,
                                       std::memory_order_relaxed))
      return;
    lock_slow();
  }
  void unlock() ABSL_UNLOCK_FUNCTION() {
    if (state_.exchange(kFree, std::memory_order_release) == kContended) wake_one();
  }

 private:
  static constexpr std::uint32_t kFree = 0;
  static constexpr std::uint32_t kLocked = 1;     // held, nobody sleeping
  static constexpr std::uint32_t kContended = 2;  // held, sleepers possible

  void lock_slow() noexcept;  // src/sync/sync_mutex.cpp
  void wake_one() noexcept;

  std::atomic<std::uint32_t> state_{kFree};
};

// RAII holder, like absl::MutexLock.
class ABSL_SCOPED_LOCKABLE SyncLock {
 public:
  explicit SyncLock(SyncMutex* m) ABSL_EXCLUSIVE_LOCK_FUNCTION(m) : m_(m) { m_->lock(); }
  SyncLock(const SyncLock&) = delete;
  SyncLock& operator=(const SyncLock&) = delete;
  ~SyncLock() ABSL_UNLOCK_FUNCTION() { m_->unlock(); }

 private:
  SyncMutex* m_;
};

}  // namespace tideloop::internal
