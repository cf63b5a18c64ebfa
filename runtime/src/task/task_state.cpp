// The task state machine: every transition of TaskHeader::state is here, one
// atomic read-modify-write each. See internal/task_core.hpp for the bits and
// who holds references.
#include <tbb/scalable_allocator.h>

#include <cstdlib>
#include <new>

#include "scheduler/parker.hpp"
#include "task/wake_quiescence.hpp"
#include "tideloop/internal/task_core.hpp"
#include "tideloop/runtime.hpp"

namespace tideloop::internal {

using namespace st;

namespace {
constexpr std::uint64_t ref_count(std::uint64_t s) {
  return s >> 6;
}

// Frees a task block and releases its hold on the runtime.
void dealloc(TaskHeader* t) noexcept;

// Caller holds RUNNING and the output is stored: publish completion, hand the
// output to the joiner or drop it, release the owner-set and running refs.
void complete(TaskHeader* t) noexcept {
  // Leave the owner set first (we hold RUNNING, so shutdown cannot be
  // cancelling it concurrently); its reference is released below with ours.
  const std::uint64_t n = 1 + (t->scheduler->release(t) ? 1 : 0);
  std::uint64_t cur = t->state.load(std::memory_order_acquire);
  if (!(cur & kJoinInterest)) {
    if (ref_count(cur) == n) {
      // Detached and nobody else holds a reference (the acquire load saw
      // every other holder's release), so nobody can observe the state any
      // more: free without publishing COMPLETE (the block's destructor drops
      // the output). Saves the RMW on every detached task.
      dealloc(t);
      return;
    }
    // Detached (join interest never comes back): drop the output while our
    // references still pin the block, then publish completion and drop both
    // references in one step. Dropping it after the CAS raced with whoever
    // held the last other reference (a Waker) freeing the block: a double
    // destroy of the output, or a use after free.
    t->drop_output();
    for (;;) {
      const std::uint64_t next = (cur ^ (kRunning | kComplete)) - n * kRefOne;
      if (t->state.compare_exchange_weak(cur, next, std::memory_order_acq_rel,
                                         std::memory_order_acquire)) {
        if (ref_count(next) == 0) dealloc(t);
        return;
      }
    }
  }
  const std::uint64_t prev = t->state.fetch_xor(kRunning | kComplete, std::memory_order_acq_rel);
  if (!(prev & kJoinInterest)) {
    t->drop_output();
  } else if (prev & kJoinWaker) {
    t->join_waker.wake_by_ref();
    const std::uint64_t p2 = t->state.fetch_and(~kJoinWaker, std::memory_order_acq_rel);
    // safety: the handle left while we held the waker; we drop it.
    if (!(p2 & kJoinInterest)) t->join_waker.reset();
  }
  const std::uint64_t before = t->state.fetch_sub(n * kRefOne, std::memory_order_acq_rel);
  if (ref_count(before) == n) dealloc(t);
}

void cancel_and_complete(TaskHeader* t) noexcept {
  TaskHeader* saved = tl_current_task;
  tl_current_task = t;
  t->cancel_future();
  tl_current_task = saved;
  complete(t);
}

void wake_by_ref(TaskHeader* t) noexcept {
  WakeBracket bracket;
  std::uint64_t cur = t->state.load(std::memory_order_acquire);
  for (;;) {
    if (cur & (kComplete | kNotified)) return;
    std::uint64_t next = cur | kNotified;
    const bool submit = !(cur & kRunning);
    if (submit) next += kRefOne;  // the new notification's reference
    if (t->state.compare_exchange_weak(cur, next, std::memory_order_acq_rel,
                                       std::memory_order_acquire)) {
      if (submit) t->scheduler->schedule(t);
      return;
    }
  }
}

void wake_by_val(TaskHeader* t) noexcept {
  WakeBracket bracket;
  std::uint64_t cur = t->state.load(std::memory_order_acquire);
  for (;;) {
    std::uint64_t next;
    enum { kNothing, kSubmit, kDrop } action;
    if (cur & kRunning) {
      // The runner re-queues it; our reference goes (the runner holds one).
      next = (cur | kNotified) - kRefOne;
      action = kNothing;
    } else if (cur & (kComplete | kNotified)) {
      next = cur - kRefOne;
      action = kDrop;
    } else {
      next = cur | kNotified;  // our reference becomes the notification's
      action = kSubmit;
    }
    if (t->state.compare_exchange_weak(cur, next, std::memory_order_acq_rel,
                                       std::memory_order_acquire)) {
      if (action == kSubmit) {
        t->scheduler->schedule(t);
      } else if (action == kDrop && ref_count(next) == 0) {
        dealloc(t);
      }
      return;
    }
  }
}

void* waker_clone(void* d) {
  ref_inc(static_cast<TaskHeader*>(d));
  return d;
}
void waker_wake(void* d) {
  wake_by_val(static_cast<TaskHeader*>(d));
}
void waker_wake_by_ref(void* d) {
  wake_by_ref(static_cast<TaskHeader*>(d));
}
void waker_drop(void* d) {
  ref_dec(static_cast<TaskHeader*>(d));
}
constexpr WakerVTable kTaskWakerVTable{waker_clone, waker_wake, waker_wake_by_ref, waker_drop};

}  // namespace

// Under AddressSanitizer / ThreadSanitizer task blocks and frames come from
// malloc: the sanitizers intercept it but not tbbmalloc, so with tbbmalloc
// ASan cannot see a use-after-free of a task, and TSan reports a block freed
// on one thread and reused on another as a data race (it cannot see the
// hand-off through tbbmalloc's private free lists). Same rule as
// sync/internal/alloc.hpp.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define TIDELOOP_TASK_PLAIN_ALLOC 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define TIDELOOP_TASK_PLAIN_ALLOC 1
#endif
#endif

#ifdef TIDELOOP_TASK_PLAIN_ALLOC
void* task_alloc(std::size_t n) {
  void* p = std::malloc(n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
void task_free(void* p, std::size_t) noexcept {
  std::free(p);
}
#else
// Task blocks (cell + coroutine frame) are allocated and freed at spawn rate,
// mostly on the same worker. A per-thread cache per 64-byte size class serves
// them in a few instructions and keeps the memory warm; tbbmalloc backs it
// (and takes everything above the caps). Measured: tbbmalloc alone handed
// 10,000-task bursts fresh pages each time (page faults were 8% of
// spawn_many_local), glibc was faster than that, this is faster than both.
// The cache is an array of pointers per class, not a list threaded through
// the free blocks: popping a list must load each block's link before the
// next allocation can proceed, a chain of cache misses once a burst outgrows
// L2 (that load was ~9% of spawn_many_local/1); with the array, a spawn burst
// only stores into the blocks and the misses overlap.
// The API is sized (every caller passes the size it allocated), so blocks
// carry no size header: a coroutine task block is 192 B, not 256 B.
namespace {
constexpr std::size_t kClassBytes = 64;
constexpr std::size_t kClasses = 16;  // cached sizes up to 960 B
// At most this much memory per thread sits in the cache (all classes
// together). A 10,000-task burst of 192 B blocks (1.9 MB) stays cached whole:
// with a 4,096-block cap, the rest went back and forth through tbbmalloc on
// every burst (spawn_many_local/1: 73.5 -> 68.3 ns per spawn).
constexpr std::size_t kCacheBytes = std::size_t{4} << 20;
constexpr std::uint32_t class_capacity(std::size_t cls) {
  return static_cast<std::uint32_t>(kCacheBytes / (cls * kClassBytes));
}

struct BlockCache {
  void** slots[kClasses] = {};  // allocated on the first free into the class
  std::uint32_t count[kClasses] = {};
  std::size_t bytes = 0;  // cached in all classes
  ~BlockCache();
};
thread_local bool tl_cache_dead = false;  // trivially destructible: safe at exit
thread_local BlockCache tl_cache;

BlockCache::~BlockCache() {
  tl_cache_dead = true;
  for (std::size_t c = 0; c < kClasses; ++c) {
    for (std::uint32_t i = 0; i < count[c]; ++i) scalable_free(slots[c][i]);
    count[c] = 0;
    scalable_free(slots[c]);
    slots[c] = nullptr;
  }
}

constexpr std::size_t size_class(std::size_t n) {
  return (n + kClassBytes - 1) / kClassBytes;
}
}  // namespace

void* task_alloc(std::size_t n) {
  const std::size_t cls = size_class(n);
  if (cls > 0 && cls < kClasses) {
    if (!tl_cache_dead) {
      BlockCache& c = tl_cache;
      if (const std::uint32_t k = c.count[cls]) {
        c.count[cls] = k - 1;
        c.bytes -= cls * kClassBytes;
        // The block a few allocations from now: start its fetch early.
        if (k > 4) __builtin_prefetch(c.slots[cls][k - 5], 1);
        return c.slots[cls][k - 1];
      }
    }
    n = cls * kClassBytes;  // a whole class, so the block can be cached when freed
  }
  void* p = scalable_malloc(n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

void task_free(void* p, std::size_t n) noexcept {
  const std::size_t cls = size_class(n);
  if (cls > 0 && cls < kClasses && !tl_cache_dead) {
    BlockCache& c = tl_cache;
    if (c.bytes + cls * kClassBytes <= kCacheBytes) {
      if (c.slots[cls] == nullptr) {
        c.slots[cls] = static_cast<void**>(scalable_malloc(class_capacity(cls) * sizeof(void*)));
        if (c.slots[cls] == nullptr) {
          scalable_free(p);
          return;
        }
      }
      c.slots[cls][c.count[cls]++] = p;  // fits: count * class bytes <= kCacheBytes
      c.bytes += cls * kClassBytes;
      return;
    }
  }
  scalable_free(p);
}
#endif

namespace {
void dealloc(TaskHeader* t) noexcept {
  t->destroy();
}
}  // namespace

Waker TaskHeader::waker() {
  ref_inc(this);
  return Waker(this, &kTaskWakerVTable);
}

void ref_inc(TaskHeader* t) noexcept {
  t->state.fetch_add(kRefOne, std::memory_order_relaxed);
}

void ref_dec(TaskHeader* t) noexcept {
  if (ref_count(t->state.fetch_sub(kRefOne, std::memory_order_acq_rel)) == 1) dealloc(t);
}

void notify_self(TaskHeader* t) noexcept {
  t->state.fetch_or(kNotified, std::memory_order_release);
}

void run_task(TaskHeader* t) noexcept {
  tl_fresh_task = nullptr;  // whatever runs now may publish the fresh task
  std::uint64_t cur = t->state.load(std::memory_order_acquire);
  if (ref_count(cur) == 2 && (cur & (kNotified | kJoinInterest | kLifecycleMask)) == kNotified &&
      t->owner_shard >= kLocalOwnerBase) {
    // The only holders are its worker-local owner list and our notification
    // (the acquire load saw every other holder's release), and no JoinHandle
    // exists: nothing else can write the state, so a store takes RUNNING.
    t->state.store((cur & ~kNotified) | kRunning, std::memory_order_relaxed);
  } else {
    for (;;) {
      if (cur & kLifecycleMask) {
        // Stale notification: the task was shut down (RUNNING taken by the
        // canceller) or already completed. Drop the notification's reference.
        ref_dec(t);
        return;
      }
      const std::uint64_t next = (cur & ~kNotified) | kRunning;
      if (t->state.compare_exchange_weak(cur, next, std::memory_order_acq_rel,
                                         std::memory_order_acquire))
        break;
    }
  }
  if (cur & kCancelled) {
    cancel_and_complete(t);
    return;
  }
  TaskHeader* saved = tl_current_task;
  tl_current_task = t;
  const bool done = t->poll_future();
  // "Fresh" lasts only inside the poll that spawned the task: after it, the
  // scheduler may move the LIFO slot's task to the queue (budget, parking)
  // without going through schedule_local, and a thief may take it.
  tl_fresh_task = nullptr;
  tl_current_task = saved;
  if (done) {
    complete(t);
    return;
  }
  cur = t->state.load(std::memory_order_acquire);
  for (;;) {
    if (cur & kCancelled) {
      cancel_and_complete(t);
      return;
    }
    if (cur & kNotified) {
      // Woken during its own poll: our reference becomes the new
      // notification's; re-queue behind other work.
      if (t->state.compare_exchange_weak(cur, cur & ~kRunning, std::memory_order_acq_rel,
                                         std::memory_order_acquire)) {
        t->scheduler->yield_task(t);
        return;
      }
    } else {
      const std::uint64_t next = (cur & ~kRunning) - kRefOne;
      if (t->state.compare_exchange_weak(cur, next, std::memory_order_acq_rel,
                                         std::memory_order_acquire)) {
        if (ref_count(next) == 0) dealloc(t);
        return;
      }
    }
  }
}

void drop_notified(TaskHeader* t) noexcept {
  ref_dec(t);
}

void shutdown_task(TaskHeader* t) noexcept {
  std::uint64_t cur = t->state.load(std::memory_order_acquire);
  for (;;) {
    if (cur & kComplete) return;
    if (cur & kRunning) {
      // Its runner sees CANCELLED when the current poll ends.
      if (t->state.compare_exchange_weak(cur, cur | kCancelled, std::memory_order_acq_rel,
                                         std::memory_order_acquire))
        return;
      continue;
    }
    // Idle (maybe with a queued notification, which becomes stale): take
    // RUNNING and cancel here. We borrow the caller's reference as the
    // "running" one, so add one for complete() to drop.
    if (t->state.compare_exchange_weak(cur, (cur | kRunning | kCancelled) + kRefOne,
                                       std::memory_order_acq_rel, std::memory_order_acquire)) {
      cancel_and_complete(t);
      return;
    }
  }
}

void reject_task(TaskHeader* t) noexcept {
  // Fresh task, not shared yet: refs = owner + notification + join handle.
  t->state.fetch_or(kRunning | kCancelled, std::memory_order_acq_rel);
  cancel_and_complete(t);  // drops the notification's ref (release() is false)
  ref_dec(t);              // the owner-set ref it never got to use
}

void abort_task(TaskHeader* t) noexcept {
  WakeBracket bracket;
  std::uint64_t cur = t->state.load(std::memory_order_acquire);
  for (;;) {
    if (cur & (kComplete | kCancelled)) return;
    std::uint64_t next = cur | kCancelled;
    bool submit = false;
    if (!(cur & (kRunning | kNotified))) {
      next = (next | kNotified) + kRefOne;
      submit = true;
    } else if (cur & kRunning) {
      next |= kNotified;
    }
    if (t->state.compare_exchange_weak(cur, next, std::memory_order_acq_rel,
                                       std::memory_order_acquire)) {
      if (submit) t->scheduler->schedule(t);
      return;
    }
  }
}

namespace {
// Publishes t->join_waker (already written by the handle). False: completed.
bool set_join_waker(TaskHeader* t) noexcept {
  std::uint64_t cur = t->state.load(std::memory_order_acquire);
  for (;;) {
    if (cur & kComplete) {
      t->join_waker.reset();
      return false;
    }
    if (t->state.compare_exchange_weak(cur, cur | kJoinWaker, std::memory_order_acq_rel,
                                       std::memory_order_acquire))
      return true;
  }
}
}  // namespace

bool join_poll(TaskHeader* t, const Waker& w) noexcept {
  std::uint64_t cur = t->state.load(std::memory_order_acquire);
  if (cur & kComplete) return true;
  if (cur & kJoinWaker) {
    // safety: while JOIN_WAKER is set the runtime only reads the field.
    if (t->join_waker.will_wake(w)) return false;
    for (;;) {
      if (cur & kComplete) return true;
      if (t->state.compare_exchange_weak(cur, cur & ~kJoinWaker, std::memory_order_acq_rel,
                                         std::memory_order_acquire))
        break;
    }
  }
  t->join_waker = w;
  return !set_join_waker(t);
}

void join_drop(TaskHeader* t) noexcept {
  if (join_drop_fresh(t)) return;  // detached right after a local spawn
  std::uint64_t cur = t->state.load(std::memory_order_acquire);
  if (!(cur & (kComplete | kJoinWaker))) {
    // Fast path (detach of a running or queued task): give up interest and
    // our reference in one step. Not complete, so the owner set still holds
    // a reference and the count cannot reach zero here.
    if (t->state.compare_exchange_strong(cur, (cur & ~kJoinInterest) - kRefOne,
                                         std::memory_order_acq_rel, std::memory_order_acquire))
      return;
  }
  for (;;) {
    if (cur & kComplete) {
      if (t->state.compare_exchange_weak(cur, cur & ~kJoinInterest, std::memory_order_acq_rel,
                                         std::memory_order_acquire)) {
        t->drop_output();
        if (!(cur & kJoinWaker)) t->join_waker.reset();
        break;
      }
    } else if (t->state.compare_exchange_weak(cur, cur & ~(kJoinInterest | kJoinWaker),
                                              std::memory_order_acq_rel,
                                              std::memory_order_acquire)) {
      t->join_waker.reset();
      break;
    }
  }
  ref_dec(t);
}

namespace {
void* parker_clone(void* d) {
  static_cast<SharedParker*>(d)->ref();
  return d;
}
void parker_wake_by_ref(void* d) {
  static_cast<SharedParker*>(d)->parker.unpark();
}
void parker_drop(void* d) {
  static_cast<SharedParker*>(d)->unref();
}
void parker_wake(void* d) {
  parker_wake_by_ref(d);
  parker_drop(d);
}
constexpr WakerVTable kParkerWakerVTable{parker_clone, parker_wake, parker_wake_by_ref,
                                         parker_drop};

struct ThreadParkerSlot {
  SharedParker* p = nullptr;
  ~ThreadParkerSlot() {
    if (p) p->unref();
  }
};
thread_local ThreadParkerSlot tl_parker;
}  // namespace

SharedParker* current_thread_parker() {
  if (tl_parker.p == nullptr) tl_parker.p = new SharedParker();
  return tl_parker.p;
}

Waker thread_waker() {
  SharedParker* p = current_thread_parker();
  p->ref();
  return Waker(p, &kParkerWakerVTable);
}

void join_block(TaskHeader* t) {
  // Checked first, so the misuse is caught every time, not only when the
  // task happens to be unfinished (blocking a worker can deadlock it).
  if (tl_current_task != nullptr)
    throw std::logic_error("tideloop: JoinHandle::join() called from inside a task; co_await it");
  if (is_complete(t)) return;
  SharedParker* p = current_thread_parker();
  Waker w = thread_waker();
  while (!join_poll(t, w)) {
    p->parker.park();
    if (is_complete(t)) break;
  }
}

bool coop_poll_proceed(TaskHeader* t) noexcept {
  if (tl_budget > 0) return true;
  notify_self(t);
  return false;
}

}  // namespace tideloop::internal
