// Where the sync primitives' shared blocks come from. Not part of the public
// API.
//
// Normally the scalable allocator the tasks use (oneTBB's tbbmalloc: no global
// lock, per-thread caches). Under AddressSanitizer or ThreadSanitizer the
// plain global operator new instead: the sanitizers intercept malloc/free but
// not tbbmalloc, so with it ASan would not see a use-after-free of a channel
// block, and TSan would not see the happens-before that tbbmalloc's private
// free lists give to a block freed on one thread and reused on another (it
// reports the reuse as a data race).
#pragma once

#include <cstddef>
#include <new>

#include "tideloop/internal/task_core.hpp"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define TIDELOOP_SYNC_PLAIN_ALLOC 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define TIDELOOP_SYNC_PLAIN_ALLOC 1
#endif
#endif

namespace tideloop::internal {

inline void* sync_alloc(std::size_t n) {
#ifdef TIDELOOP_SYNC_PLAIN_ALLOC
  return ::operator new(n);
#else
  return task_alloc(n);
#endif
}

inline void sync_free(void* p, std::size_t n) noexcept {
#ifdef TIDELOOP_SYNC_PLAIN_ALLOC
#ifdef __cpp_sized_deallocation
  ::operator delete(p, n);
#else
  (void)n;  // clang before 19 has sized deallocation off by default
  ::operator delete(p);
#endif
#else
  task_free(p, n);
#endif
}

}  // namespace tideloop::internal
