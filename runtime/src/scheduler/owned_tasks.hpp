// OwnedTasks: the set of every live task of one runtime, so that shutdown can
// cancel tasks that are idle (waiting on something that will never come) and
// not sitting in any queue. Sharded by the spawning worker: a task usually
// completes on the worker that spawned it, so bind and remove hit a lock and
// list head that stay in that worker's cache (random shards cost a cache miss
// per spawn). Each shard is an intrusive doubly-linked list (O(1) insert and
// remove, no allocation).
//
// Worker-local shards (multi-thread workers): a task spawned on worker W is
// linked into W's list, which only W touches, so bind and remove on W take no
// lock and no atomic RMW (on chained_spawn the shard lock's xchg was the
// single hottest instruction, ~15% of the cycles per spawn). A task that
// completes on another thread is pushed onto W's lock-free "removed" stack
// instead; W unlinks those (and drops their owner references) at its next
// bind, maintenance tick or park. Past kWakeOwnerAt pending removals the
// remover asks the scheduler to wake W, so a sleeping owner cannot pin an
// unbounded number of finished tasks. Spawns from threads that are not
// workers use the locked shards as before. close_and_shutdown_all runs after
// the workers are joined, so it sees every local list quiescent.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>

#include "scheduler/spinlock.hpp"
#include "tideloop/internal/annotated_mutex.hpp"
#include "tideloop/internal/task_core.hpp"

namespace tideloop::internal {

class OwnedTasks {
 public:
  static constexpr std::size_t kShards = 64;

  static constexpr std::uint32_t kLocalBase = kLocalOwnerBase;  // owner_shard of local shards
  static constexpr std::uint32_t kWakeOwnerAt = 1024;

  explicit OwnedTasks(std::size_t local_shards = 0)
      : n_local_(local_shards), local_(new LocalShard[local_shards]) {}

  // On worker `w` (only that thread): adds t, which carries an owner
  // reference, to w's list. Never fails: a task bound after close (during
  // shutdown, before the workers are joined) is cancelled by
  // close_and_shutdown_all, which runs after the join.
  void bind_local(TaskHeader* t, std::size_t w) noexcept {
    LocalShard& s = local_[w];
    if (s.removed.load(std::memory_order_relaxed) != nullptr) drain_removed(s);
    t->owner_shard = kLocalBase + static_cast<std::uint32_t>(w);
    t->in_owner_set = true;
    t->owned_prev = nullptr;
    t->owned_next = s.head;
    if (s.head) s.head->owned_prev = t;
    s.head = t;
    s.count.store(s.count.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }

  enum class Removed { kNo, kYes, kDeferred, kDeferredWakeOwner };
  // t completed on the calling thread, which is worker `here` (-1: not a
  // worker). kYes: unlinked, the caller drops the owner reference. kNo: not
  // in the set (shutdown took it). kDeferred*: handed to its owner worker,
  // which drops the reference (kDeferredWakeOwner: wake that worker).
  Removed remove(TaskHeader* t, long here) noexcept {
    const std::uint32_t sh = t->owner_shard;
    if (sh < kLocalBase) return remove(t) ? Removed::kYes : Removed::kNo;
    LocalShard& s = local_[sh - kLocalBase];
    if (static_cast<long>(sh - kLocalBase) == here) {
      if (!t->in_owner_set) return Removed::kNo;
      unlink_local(s, t);
      return Removed::kYes;
    }
    // Another thread's list: hand it over (Treiber push).
    TaskHeader* head = s.removed.load(std::memory_order_relaxed);
    do {
      t->owned_removed_next = head;
    } while (!s.removed.compare_exchange_weak(head, t, std::memory_order_release,
                                              std::memory_order_relaxed));
    // Exact (live() subtracts it); on the cache line the push just took.
    const std::uint32_t n = s.pending.fetch_add(1, std::memory_order_relaxed) + 1;
    return n % kWakeOwnerAt == 0 ? Removed::kDeferredWakeOwner : Removed::kDeferred;
  }

  // Worker `w`: unlinks the tasks other threads finished (maintenance, park).
  void drain_removed(std::size_t w) noexcept {
    LocalShard& s = local_[w];
    if (s.removed.load(std::memory_order_relaxed) != nullptr) drain_removed(s);
  }

  // Adds t (which carries an owner reference) to shard `hint` (the spawning
  // worker's index; any value works). False if closed: caller rejects it.
  bool bind(TaskHeader* t, std::size_t hint) noexcept {
    t->owner_shard = static_cast<std::uint32_t>(hint & (kShards - 1));
    Shard& s = shards_[t->owner_shard];
    LockGuard<SpinLock> g(s.lock);
    if (closed_.load(std::memory_order_acquire)) return false;
    t->in_owner_set = true;
    t->owned_prev = nullptr;
    t->owned_next = s.head;
    if (s.head) s.head->owned_prev = t;
    s.head = t;
    ++s.count;
    return true;
  }

  // True if t was in the set (the caller then drops the owner reference).
  bool remove(TaskHeader* t) noexcept {
    Shard& s = shards_[t->owner_shard];
    LockGuard<SpinLock> g(s.lock);
    if (!t->in_owner_set) return false;  // popped by close_and_shutdown_all
    unlink(s, t);
    return true;
  }

  // Closes the set (later binds fail) and cancels every task in it. Worker
  // threads must be joined already (their lists are read without locks).
  void close_and_shutdown_all() noexcept {
    closed_.store(true, std::memory_order_release);
    for (std::size_t w = 0; w < n_local_; ++w) {
      LocalShard& s = local_[w];
      drain_removed(s);
      while (TaskHeader* t = s.head) {
        unlink_local(s, t);
        shutdown_task(t);
        ref_dec(t);  // the owner reference
      }
    }
    for (Shard& s : shards_) {
      // Taking the lock once after setting closed_ fences out binds in flight.
      for (;;) {
        TaskHeader* t;
        {
          LockGuard<SpinLock> g(s.lock);
          t = s.head;
          if (!t) break;
          unlink(s, t);
        }
        shutdown_task(t);
        ref_dec(t);  // the owner reference
      }
    }
  }

  bool is_closed() const noexcept { return closed_.load(std::memory_order_acquire); }

  // Tasks finished on another thread and not yet drained by their (maybe
  // sleeping) owner are not counted, though their blocks are freed only then.
  std::uint64_t live() noexcept {
    std::uint64_t n = 0;
    for (std::size_t w = 0; w < n_local_; ++w) {
      // pending first: a drain between the loads can then only over-count.
      const std::uint64_t p = local_[w].pending.load(std::memory_order_acquire);
      const std::uint64_t c = local_[w].count.load(std::memory_order_acquire);
      n += c > p ? c - p : 0;
    }
    for (Shard& s : shards_) {
      LockGuard<SpinLock> g(s.lock);
      n += s.count;
    }
    return n;
  }

 private:
  struct alignas(64) Shard {
    SpinLock lock;
    TaskHeader* head ABSL_GUARDED_BY(lock) = nullptr;
    std::uint64_t count ABSL_GUARDED_BY(lock) = 0;
  };
  struct alignas(64) LocalShard {
    TaskHeader* head = nullptr;           // owner worker only
    std::atomic<std::uint64_t> count{0};  // written by the owner only
    // Finished elsewhere, to unlink: pushed by any thread, drained by the owner.
    alignas(64) std::atomic<TaskHeader*> removed{nullptr};
    std::atomic<std::uint32_t> pending{0};  // pushed, not yet drained
  };
  // Takes t out of the list headed by `head`.
  static void unlink_from(TaskHeader*& head, TaskHeader* t) noexcept {
    if (t->owned_prev) {
      t->owned_prev->owned_next = t->owned_next;
    } else {
      head = t->owned_next;
    }
    if (t->owned_next) t->owned_next->owned_prev = t->owned_prev;
    t->owned_prev = t->owned_next = nullptr;
    t->in_owner_set = false;
  }
  static void unlink_local(LocalShard& s, TaskHeader* t) noexcept {
    unlink_from(s.head, t);
    s.count.store(s.count.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  }
  void drain_removed(LocalShard& s) noexcept {
    TaskHeader* t = s.removed.exchange(nullptr, std::memory_order_acquire);
    std::uint32_t n = 0;
    while (t != nullptr) {
      TaskHeader* next = t->owned_removed_next;
      unlink_local(s, t);
      ref_dec(t);  // the owner reference the remover left to us
      t = next;
      ++n;
    }
    if (n) s.pending.fetch_sub(n, std::memory_order_relaxed);
  }
  static void unlink(Shard& s, TaskHeader* t) noexcept ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.lock) {
    unlink_from(s.head, t);
    --s.count;
  }

  const std::size_t n_local_;
  std::unique_ptr<LocalShard[]> local_;
  std::atomic<bool> closed_{false};
  std::array<Shard, kShards> shards_;
};

}  // namespace tideloop::internal
