// Internals of a spawned task, shared by the schedulers, JoinHandle and the leaf
// futures. Not part of the public API; names here may change.
//
// A task is one heap block: a TaskHeader (state word, scheduler, links, join
// waker) followed by the future (a coroutine handle or an inline callable) and
// the output slot. The state word packs lifecycle bits and a reference count so
// that every transition is one atomic read-modify-write:
//
//   RUNNING        a thread is polling the future (exclusive access to it)
//   COMPLETE       the future is gone and the output slot is final
//   NOTIFIED       a "poll me" notification exists (queued, or due after the
//                  current poll)
//   JOIN_INTEREST  a JoinHandle exists and owns the right to read the output
//   JOIN_WAKER     `join_waker` is published to the runtime (see join protocol)
//   CANCELLED      abort/shutdown requested; the next runner cancels instead
//   refcount       bits 6..63; held by: the owner set, each queued notification
//                  (a running poll inherits the one it consumed), the
//                  JoinHandle, and every Waker.
#pragma once

#include <atomic>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <stdexcept>
#include <utility>
#include <variant>

#include "tideloop/waker.hpp"

namespace tideloop {

// What a joiner sees when the task was aborted or dropped at shutdown.
class TaskCancelled : public std::runtime_error {
 public:
  TaskCancelled() : std::runtime_error("task was cancelled") {}
  using std::runtime_error::runtime_error;
};

namespace internal {

class TaskHeader;
class RuntimeCore;

namespace st {
inline constexpr std::uint64_t kRunning = 1;
inline constexpr std::uint64_t kComplete = 2;
inline constexpr std::uint64_t kNotified = 4;
inline constexpr std::uint64_t kJoinInterest = 8;
inline constexpr std::uint64_t kJoinWaker = 16;
inline constexpr std::uint64_t kCancelled = 32;
inline constexpr std::uint64_t kRefOne = 64;
inline constexpr std::uint64_t kLifecycleMask = kRunning | kComplete;
}  // namespace st

// The contract every leaf future (something a task can wait on) implements.
// poll_ready is called only by the thread that currently runs `task`: it
// returns true when the awaited event happened, or registers task's waker with
// the event source and returns false. It may be called spuriously, any number
// of times, and must stay correct (the Rust Future::poll contract). This is
// what lets a woken task re-check before resuming its coroutine, so spurious
// or stale wake-ups never resume a coroutine early.
class Pollable {
 public:
  virtual bool poll_ready(TaskHeader* task) = 0;

 protected:
  ~Pollable() = default;
};

// Who runs a task when it is woken, and who owns it.
class Scheduler {
 public:
  // A wake-up: `t` carries one notification reference that the scheduler now owns.
  virtual void schedule(TaskHeader* t) = 0;
  // The task woke itself while running (yield_now, budget exhausted): queue it
  // behind other work, never in a LIFO slot. Carries a notification reference.
  virtual void yield_task(TaskHeader* t) = 0;
  // The task completed: remove it from the owner set. Returns true if the set
  // held a reference that the caller must now drop.
  virtual bool release(TaskHeader* t) = 0;

 protected:
  ~Scheduler() = default;
};

void* task_alloc(std::size_t n);
void task_free(void* p, std::size_t n) noexcept;

class TaskHeader {
 public:
  explicit TaskHeader(Scheduler* s)
      : state(st::kRefOne * 3 | st::kNotified | st::kJoinInterest), scheduler(s) {}
  TaskHeader(const TaskHeader&) = delete;
  TaskHeader& operator=(const TaskHeader&) = delete;

  // Run the future once; true when it finished and the output slot is set.
  // Caller holds RUNNING.
  virtual bool poll_future() = 0;
  // Destroy the future and store "cancelled" as output. Caller holds RUNNING.
  virtual void cancel_future() = 0;
  // Destroy the output (nobody will read it).
  virtual void drop_output() = 0;
  // Free the block. Refcount reached zero.
  virtual void destroy() = 0;

  // A new waker for this task (adds a reference).
  Waker waker();

  // 80 bytes in all (with the vtable pointer): spawn bursts keep thousands of
  // task blocks live, and a coroutine task block (header, output, frame
  // prefix, a small frame) must stay within three cache lines (192 B) to keep
  // 10,000 of them in a 2 MiB L2 (measured: 256 B blocks cost ~14 ns/spawn).
  std::atomic<std::uint64_t> state;
  Scheduler* scheduler;
  // Links in the owner set (OwnedTasks); guarded by that set's shard lock, or
  // owned by the worker of a worker-local list.
  TaskHeader* owned_prev = nullptr;
  TaskHeader* owned_next = nullptr;
  std::uint32_t owner_shard = 0;  // set once at bind, before the task is shared
                                  // (>= kLocalOwnerBase: a worker-local list)
  bool in_owner_set = false;      // guarded like the links
  // Join protocol: while JOIN_WAKER is clear the JoinHandle owns this field;
  // while it is set the runtime may read it (to wake the joiner at completion).
  Waker join_waker;
  union {
    // Runner-only (valid while RUNNING is held): the leaf future the
    // coroutine waits on. Dead once the future is gone (completed/cancelled).
    Pollable* pending = nullptr;
    // After completion: link in the owner worker's stack of tasks finished
    // on other threads (the future is gone, so `pending` is free).
    TaskHeader* owned_removed_next;
  };
  // Runner-only: the innermost suspended coroutine to resume.
  std::coroutine_handle<> resume_point;

 protected:
  ~TaskHeader() = default;
};

// owner_shard values from here up name a worker-local owner list, which only
// that worker touches until the workers are joined at shutdown (see
// scheduler/owned_tasks.hpp). Such a task's state has no hidden writer: every
// other party that can change it holds a counted reference.
inline constexpr std::uint32_t kLocalOwnerBase = 1u << 16;

// The task being polled on this thread, or null (block_on roots count as tasks).
inline thread_local TaskHeader* tl_current_task = nullptr;
// The task this worker thread just spawned into its own LIFO slot, while it
// is still there and unpolled: until then only this thread can reach it (the
// slot and the local owner list are the worker's, and an unpolled task has
// no wakers), so join_drop may update its state without an atomic RMW. Set by
// the multi-thread scheduler's local spawn; cleared when the slot is written
// again, whenever a task starts running on this thread and when the spawning
// poll ends (so only the spawning task's own code can see it set).
inline thread_local TaskHeader* tl_fresh_task = nullptr;
// Cooperative budget: leaf futures that make progress spend one unit; at zero
// they report "not ready" and re-queue the task so others (timers, I/O) run.
inline constexpr std::uint32_t kInitialBudget = 128;
inline thread_local std::uint32_t tl_budget = kInitialBudget;

// --- state transitions (task_state.cpp) ---
void ref_inc(TaskHeader* t) noexcept;
void ref_dec(TaskHeader* t) noexcept;  // destroys at zero
// Marks a running task NOTIFIED from inside its own poll (yield, budget): it is
// re-queued behind other work when the poll returns.
void notify_self(TaskHeader* t) noexcept;
// Polls a task for which the caller owns a notification reference. Handles
// cancel, completion, re-notification and the final dealloc.
void run_task(TaskHeader* t) noexcept;
// Drops a queued notification without polling (queues drained at shutdown).
void drop_notified(TaskHeader* t) noexcept;
// Shutdown of one owned task: cancels it now if idle, or flags it for its
// runner. Called by the owner set when it closes; consumes nothing.
void shutdown_task(TaskHeader* t) noexcept;
// A task refused by a closed owner set at spawn: cancel it and drop the
// owner and notification references.
void reject_task(TaskHeader* t) noexcept;
// JoinHandle::abort(): cancels the task the next time it is polled.
void abort_task(TaskHeader* t) noexcept;
// Join protocol. Returns true when the output can be read; otherwise `w` has
// been published as the join waker.
bool join_poll(TaskHeader* t, const Waker& w) noexcept;
// JoinHandle destructor: releases join interest (and the output, if complete)
// and the handle's reference.
void join_drop(TaskHeader* t) noexcept;
// join_drop's fast path, inline for `spawn(...).detach()`: a task detached
// while still fresh (see tl_fresh_task) gives up interest and the handle's
// reference with a plain store. False: not fresh, call join_drop.
inline bool join_drop_fresh(TaskHeader* t) noexcept {
  if (t != tl_fresh_task) return false;
  tl_fresh_task = nullptr;
  const std::uint64_t cur = t->state.load(std::memory_order_relaxed);
  if (cur & (st::kComplete | st::kJoinWaker)) return false;
  t->state.store((cur & ~st::kJoinInterest) - st::kRefOne, std::memory_order_relaxed);
  return true;
}
// Blocks the calling (non-runtime) thread until the task completed.
void join_block(TaskHeader* t);

inline bool is_complete(const TaskHeader* t) noexcept {
  return (t->state.load(std::memory_order_acquire) & st::kComplete) != 0;
}

// Cooperative budget check for leaf futures: false (and the task re-queued)
// when this task has used its budget for this tick.
bool coop_poll_proceed(TaskHeader* t) noexcept;
inline void coop_spend() noexcept {
  if (tl_budget > 0) --tl_budget;
}

// Awaiter base for leaf futures: derive, implement poll_ready, and
// `co_await` works inside any tideloop task.
template <class Derived>
class LeafAwaiter : public Pollable {
 public:
  bool await_ready() noexcept { return false; }
  bool await_suspend(std::coroutine_handle<> h) {
    TaskHeader* t = tl_current_task;
    if (t == nullptr) throw std::logic_error("tideloop: awaited outside a tideloop task");
    if (static_cast<Derived*>(this)->poll_ready(t)) return false;
    t->pending = this;
    t->resume_point = h;
    return true;
  }
};

// --- output slot ---
struct Unit {};
struct CancelledTag {};
template <class T>
using Stored = std::conditional_t<std::is_void_v<T>, Unit, T>;

template <class T>
class TaskCell : public TaskHeader {
 public:
  using TaskHeader::TaskHeader;
  void drop_output() override { out_.template emplace<0>(); }
  // Reads the output once (caller is the JoinHandle and saw COMPLETE).
  T take_output() {
    auto v = std::move(out_);
    out_.template emplace<0>();
    switch (v.index()) {
      case 1:
        if constexpr (std::is_void_v<T>) {
          return;
        } else {
          return std::move(std::get<1>(v));
        }
      case 2:
        std::rethrow_exception(std::get<2>(v));
      case 3:
        throw TaskCancelled();
      default:
        throw std::logic_error("tideloop: task output already taken");
    }
  }
  bool output_is_cancelled() const { return out_.index() == 3; }

 protected:
  ~TaskCell() = default;
  std::variant<std::monostate, Stored<T>, std::exception_ptr, CancelledTag> out_;
};

}  // namespace internal
}  // namespace tideloop
