// OwnedTasks: the set of every live task of one runtime, so that shutdown can
// cancel tasks that are idle (waiting on something that will never come) and
// not sitting in any queue. Sharded by the spawning worker: a task usually
// completes on the worker that spawned it, so bind and remove hit a lock and
// list head that stay in that worker's cache (random shards cost a cache miss
// per spawn). Each shard is an intrusive doubly-linked list (O(1) insert and
// remove, no allocation).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>

#include "scheduler/spinlock.hpp"
#include "tideloop/internal/task_core.hpp"

namespace tideloop::internal {

class OwnedTasks {
 public:
  static constexpr std::size_t kShards = 64;

  explicit OwnedTasks(std::uint64_t id) : id_(id) {}

  // Adds t (which carries an owner reference) to shard `hint` (the spawning
  // worker's index; any value works). False if closed: caller rejects it.
  bool bind(TaskHeader* t, std::size_t hint) noexcept {
    t->owner_shard = static_cast<std::uint32_t>(hint & (kShards - 1));
    Shard& s = shards_[t->owner_shard];
    std::lock_guard<SpinLock> g(s.lock);
    if (closed_.load(std::memory_order_acquire)) return false;
    t->owner_id = id_;
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
    std::lock_guard<SpinLock> g(s.lock);
    if (t->owner_id != id_) return false;  // popped by close_and_shutdown_all
    unlink(s, t);
    return true;
  }

  // Closes the set (later binds fail) and cancels every task in it.
  void close_and_shutdown_all() noexcept {
    closed_.store(true, std::memory_order_release);
    for (Shard& s : shards_) {
      // Taking the lock once after setting closed_ fences out binds in flight.
      for (;;) {
        TaskHeader* t;
        {
          std::lock_guard<SpinLock> g(s.lock);
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

  std::uint64_t live() noexcept {
    std::uint64_t n = 0;
    for (Shard& s : shards_) {
      std::lock_guard<SpinLock> g(s.lock);
      n += s.count;
    }
    return n;
  }

 private:
  struct alignas(64) Shard {
    SpinLock lock;
    TaskHeader* head = nullptr;
    std::uint64_t count = 0;
  };
  static void unlink(Shard& s, TaskHeader* t) noexcept {
    if (t->owned_prev) {
      t->owned_prev->owned_next = t->owned_next;
    } else {
      s.head = t->owned_next;
    }
    if (t->owned_next) t->owned_next->owned_prev = t->owned_prev;
    t->owned_prev = t->owned_next = nullptr;
    t->owner_id = 0;
    --s.count;
  }

  const std::uint64_t id_;
  std::atomic<bool> closed_{false};
  std::array<Shard, kShards> shards_;
};

}  // namespace tideloop::internal
