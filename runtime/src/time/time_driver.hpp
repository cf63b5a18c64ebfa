// TimeDriver: a runtime's timers, sharded so that workers do not share a
// lock (one global timer lock is a known Tokio contention point).
//
//  - A timer registers in the shard of the thread that first polls it
//    (threads are spread over the shards round-robin; with 2x as many shards
//    as workers, workers rarely share one). Registering and cancelling take
//    only that shard's spin lock, from any thread: the entry remembers its
//    shard, so a task that migrated (or a canceller on another thread) finds
//    it in O(1).
//  - Each shard holds a TimerWheel (1 ms ticks) for deadlines at least a tick
//    away and a small binary heap ("near" timers) for deadlines within the
//    next tick, which therefore fire at their exact deadline instead of the
//    next tick boundary: the sub-millisecond path.
//  - Only the thread that holds the runtime's driver (a parked worker, or a
//    worker doing maintenance) fires timers: process() visits the shards
//    whose published next deadline has passed, pops what is due under the
//    shard lock, and wakes the tasks after unlocking.
//  - The driver publishes how long it will sleep (sleep_until); a registrant
//    whose deadline is earlier wakes it, so a new short timer is not stuck
//    behind a long park. The Dekker pair (next_deadline store / sleep_until
//    load on one side, sleep_until store / next_deadline load on the other,
//    all seq_cst) guarantees one side sees the other.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <vector>

#include "scheduler/spinlock.hpp"
#include "tideloop/internal/annotated_mutex.hpp"
#include "tideloop/time.hpp"

namespace tideloop::internal {

class TimeDriver;

inline constexpr std::int64_t kNever = std::numeric_limits<std::int64_t>::max();

class alignas(64) TimerShard {
 public:
  TimeDriver* driver = nullptr;
  SpinLock lock;
  TimerWheel wheel ABSL_GUARDED_BY(lock);
  std::vector<TimerEntry*> near ABSL_GUARDED_BY(lock);  // min-heap on deadline_ns
  bool shutdown ABSL_GUARDED_BY(lock) = false;
  // A one-slot waker cache: the timers of the task whose
  // waker sits here share it (counted in cache_users) instead of cloning
  // their own, so a task that keeps creating and dropping timers (a timeout
  // around every read) does no refcount traffic. The slot is replaced only
  // when unused; it keeps its task's block allocated until then.
  TaskHeader* cache_task ABSL_GUARDED_BY(lock) = nullptr;
  Waker cache_waker ABSL_GUARDED_BY(lock);
  std::uint32_t cache_users ABSL_GUARDED_BY(lock) = 0;
  // Lower bound of the earliest fire time (ns) in this shard, kNever when
  // empty. Written under lock; read without it by the driver to skip shards.
  std::atomic<std::int64_t> next_deadline{kNever};
};

class TimeDriver {
 public:
  // 1 ms: Tokio's resolution. Finer ticks cost more cascading and more
  // wake-ups for the same timers; the near heap covers short deadlines.
  static constexpr std::int64_t kTickNs = 1'000'000;

  // `unpark` interrupts the driver's current or next sleep (thread-safe).
  TimeDriver(std::size_t workers, std::function<void()> unpark);
  ~TimeDriver();
  TimeDriver(const TimeDriver&) = delete;
  TimeDriver& operator=(const TimeDriver&) = delete;

  // --- any thread ---
  // Registers e (state kIdle) with self's waker. True when it is already due
  // (or the driver shut down) and was not registered.
  bool register_entry(TimerEntry& e, TaskHeader* self);

  // --- the driver thread (one at a time) ---
  // Fires every timer due at `now_ns`; returns how many.
  std::size_t process(std::int64_t now_ns);
  // Earliest fire time over all shards (a lower bound), kNever if none.
  std::int64_t next_deadline() const noexcept;
  // Publishes that the driver sleeps until `until` at the latest and returns
  // the (possibly earlier) time it must wake at. Pair with end_sleep().
  std::int64_t begin_sleep(std::int64_t until) noexcept;
  void end_sleep() noexcept;
  // Fires every pending timer as "shut down"; later registrations complete
  // at once the same way.
  void shutdown();

  std::size_t num_shards() const noexcept { return shards_.size(); }
  // Live registrations (tests and metrics; takes every shard lock).
  std::size_t pending() const;

  std::int64_t tick_floor(std::int64_t ns) const noexcept {
    return ns <= origin_ns_ ? 0 : (ns - origin_ns_) / kTickNs;
  }
  std::int64_t tick_ceil(std::int64_t ns) const noexcept {
    return ns <= origin_ns_ ? 0 : (ns - origin_ns_ + kTickNs - 1) / kTickNs;
  }
  std::int64_t tick_time(std::uint64_t tick) const noexcept {
    return origin_ns_ + static_cast<std::int64_t>(tick) * kTickNs;
  }

  // Gives e self's waker, from the cache when possible. May leave a replaced
  // waker in *evicted, to drop after unlocking.
  static void attach_waker(TimerShard& s, TimerEntry& e, TaskHeader* self, Waker* evicted)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.lock);
  // Takes e's waker away (into *out unless it was a cache share).
  static void detach_waker(TimerShard& s, TimerEntry& e, Waker* out) noexcept
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.lock);

 private:
  TimerShard& shard_for_current_thread() noexcept;
  void fire_locked(TimerShard& s, TimerEntry* e, std::uint8_t state)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.lock);
  std::int64_t recompute_locked(TimerShard& s) noexcept ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.lock);

  const std::int64_t origin_ns_;
  std::function<void()> unpark_;
  std::vector<std::unique_ptr<TimerShard>> shards_;
  std::size_t shard_mask_;
  // The time the driver sleeps until, or kNotSleeping.
  std::atomic<std::int64_t> sleep_until_;
  // Driver-thread scratch: wakers collected under shard locks.
  std::vector<Waker> fired_;
};

// Near heap operations (under the shard lock).
void near_push(std::vector<TimerEntry*>& h, TimerEntry* e);
void near_remove(std::vector<TimerEntry*>& h, TimerEntry* e);
TimerEntry* near_pop(std::vector<TimerEntry*>& h);

// The time driver of the calling thread's runtime; throws std::logic_error
// when there is none (outside a runtime, or time disabled).
TimeDriver& current_time_driver();

}  // namespace tideloop::internal
