// Proof that -Wthread-safety is really checking (CMakeLists.txt, TIDELOOP_THREAD_SAFETY):
// configure compiles this file once per lock type with TL_VIOLATION=<n> and
// -Werror=thread-safety, and fails if any of them compiles. Without the error flag every
// variant must compile, so a failure is the analysis and nothing else. A clean analysis build
// is only evidence if a broken lock discipline breaks it: this catches annotations that
// expand to nothing (a compiler without the attributes, a header that lost them).
#include "scheduler/spinlock.hpp"
#include "tideloop/internal/annotated_mutex.hpp"
#include "tideloop/sync/internal/sync_mutex.hpp"

namespace tideloop::internal {

struct Guarded {
  StdMutex mu;
  int a ABSL_GUARDED_BY(mu) = 0;
  StdRecursiveMutex rmu;
  int b ABSL_GUARDED_BY(rmu) = 0;
  SpinLock spin;
  int c ABSL_GUARDED_BY(spin) = 0;
  SyncMutex sync;
  int d ABSL_GUARDED_BY(sync) = 0;

  void locked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { ++a; }

  // Correct uses: these must never warn.
  void fine() {
    {
      LockGuard<StdMutex> g(mu);
      ++a;
      locked();
    }
    {
      UniqueLock l(mu);
      l.unlock();
      l.lock();
      ++a;
    }
    {
      LockGuard<StdRecursiveMutex> g(rmu);
      ++b;
    }
    if (spin.try_lock()) {
      ++c;
      spin.unlock();
    }
    {
      SyncLock l(&sync);
      ++d;
    }
  }

  void violation() {
#if TL_VIOLATION == 1
    ++a;  // StdMutex not held
#elif TL_VIOLATION == 2
    UniqueLock l(mu);
    l.unlock();
    ++a;  // released by UniqueLock::unlock()
#elif TL_VIOLATION == 3
    ++b;  // StdRecursiveMutex not held
#elif TL_VIOLATION == 4
    LockGuard<SpinLock> g(spin);
    ++c;
    locked();  // requires mu, holds spin
#elif TL_VIOLATION == 5
    if (spin.try_lock()) {
      spin.unlock();
    } else {
      ++c;  // written on the path where try_lock failed
    }
#elif TL_VIOLATION == 6
    ++d;  // SyncMutex not held
#endif
  }
};

}  // namespace tideloop::internal
