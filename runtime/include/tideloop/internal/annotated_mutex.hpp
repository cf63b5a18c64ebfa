// std::mutex and std::recursive_mutex with clang's thread-safety attributes,
// and the scoped holders that go with them, so that -Wthread-safety checks
// every field marked ABSL_GUARDED_BY. Not part of the public API.
//
// Why a wrapper: libstdc++'s std::mutex and std::lock_guard carry no
// capability attributes, so clang cannot see that a std::lock_guard holds
// anything; absl::Mutex carries them, but Debian's absl is built without
// ThreadSanitizer annotations, so TSan reports everything it guards as a race
// (runtime/src/blocking/blocking_pool.cpp). This is the same std::mutex
// underneath: every member is an inline forwarder, so neither behaviour nor
// cost changes, and TSan still intercepts the pthread calls.
#pragma once

#include <mutex>

#include "absl/base/thread_annotations.h"

namespace tideloop::internal {

// M is std::mutex or std::recursive_mutex. For the recursive one the analysis
// is as strict as for a plain mutex (clang 14 has no reentrant capabilities):
// a function may take it once; re-entry through a call chain (a task dropped
// during shutdown calling shutdown() again) is invisible to it, since the
// analysis looks at one function at a time.
template <class M>
class ABSL_LOCKABLE AnnotatedMutex {
 public:
  AnnotatedMutex() = default;
  AnnotatedMutex(const AnnotatedMutex&) = delete;
  AnnotatedMutex& operator=(const AnnotatedMutex&) = delete;
  ~AnnotatedMutex() = default;

  void lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  bool try_lock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true) { return mu_.try_lock(); }
  void unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }

  // The mutex itself, for std::unique_lock / std::condition_variable (UniqueLock).
  M& native() noexcept { return mu_; }

 private:
  M mu_;
};

using StdMutex = AnnotatedMutex<std::mutex>;
using StdRecursiveMutex = AnnotatedMutex<std::recursive_mutex>;

// std::lock_guard for anything with annotated lock()/unlock() (StdMutex,
// StdRecursiveMutex, SpinLock).
template <class M>
class ABSL_SCOPED_LOCKABLE LockGuard {
 public:
  explicit LockGuard(M& m) ABSL_EXCLUSIVE_LOCK_FUNCTION(m) : m_(m) { m_.lock(); }
  LockGuard(const LockGuard&) = delete;
  LockGuard& operator=(const LockGuard&) = delete;
  ~LockGuard() ABSL_UNLOCK_FUNCTION() { m_.unlock(); }

 private:
  M& m_;
};

// std::unique_lock<std::mutex> over a StdMutex: may be released and taken
// again, and waits on a std::condition_variable through native().
class ABSL_SCOPED_LOCKABLE UniqueLock {
 public:
  explicit UniqueLock(StdMutex& m) ABSL_EXCLUSIVE_LOCK_FUNCTION(m) : lock_(m.native()) {}
  UniqueLock(const UniqueLock&) = delete;
  UniqueLock& operator=(const UniqueLock&) = delete;
  ~UniqueLock() ABSL_UNLOCK_FUNCTION() = default;

  void lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { lock_.lock(); }
  void unlock() ABSL_UNLOCK_FUNCTION() { lock_.unlock(); }

  // For condition_variable::wait*(): the wait releases and retakes the mutex
  // inside the call, so to the analysis the lock is held across it. A wait
  // predicate is a separate function to the analysis: write the wait as a
  // loop (`while (!ready) cv.wait(lock.native());`, which is what the
  // predicate overload does) so the guarded reads are checked under the lock.
  std::unique_lock<std::mutex>& native() noexcept { return lock_; }

 private:
  std::unique_lock<std::mutex> lock_;
};

}  // namespace tideloop::internal
