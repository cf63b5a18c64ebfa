// Timers for tideloop tasks: sleep, sleep_until, timeout, interval.
//
//   co_await tideloop::sleep(10ms);
//   int v = co_await tideloop::timeout(50ms, fetch());   // throws TimedOut
//   auto iv = tideloop::interval(100ms);
//   for (;;) { co_await iv.tick(); ... }
//
// Semantics (the same as Tokio's):
//  - A timer fires at or after its deadline, never before. Deadlines more than
//    1 ms ahead are kept in a hierarchical timing wheel with 1 ms ticks and
//    fire on the first tick boundary at or after the deadline (up to 1 ms
//    late plus wake-up latency); deadlines less than 1 ms ahead take a
//    sub-millisecond path (a small per-shard heap and a precise timerfd wait)
//    and fire within microseconds of the deadline.
//  - A Sleep registers with the runtime when it is first polled (co_awaited),
//    not when it is created; destroying it (for example when its task is
//    cancelled or a timeout drops it) deregisters it in O(1), from any thread.
//  - Timers are owned by the runtime whose task first polls them and need a
//    runtime with time enabled (the default); awaiting one elsewhere throws
//    std::logic_error.
//  - When the runtime shuts down, pending timers complete and their awaiters
//    throw TaskCancelled (only visible to block_on roots: spawned tasks are
//    cancelled anyway).
//
// Error convention: timeout() throws tideloop::TimedOut, a std::system_error
// carrying std::errc::timed_out (ETIMEDOUT), like the I/O layer's
// Result::value() throws std::system_error with the failing errno.
//
// Thread-safety: a Sleep, Timeout or Interval is used by one task at a time
// (like any awaiter). The runtime side is sharded per thread: registering and
// cancelling take one uncontended spin lock of the calling thread's shard.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <system_error>
#include <type_traits>
#include <utility>

#include "tideloop/internal/task_core.hpp"
#include "tideloop/task.hpp"
#include "tideloop/time/timer_wheel.hpp"

namespace tideloop {

using Clock = std::chrono::steady_clock;
using Instant = Clock::time_point;
using Duration = std::chrono::nanoseconds;

// Thrown by timeout() when the deadline passed before the task completed.
class TimedOut : public std::system_error {
 public:
  TimedOut()
      : std::system_error(std::make_error_code(std::errc::timed_out),
                          "tideloop: deadline elapsed") {}
};

namespace internal {

class TimerShard;

// A timer registration, embedded in Sleep. Not part of the public API.
struct TimerEntry : TimerWheelNode {
  enum : std::uint8_t { kIdle = 0, kRegistered = 1, kFired = 2, kShutdown = 3 };
  static constexpr std::uint32_t kNoHeap = ~std::uint32_t{0};

  std::int64_t deadline_ns = 0;  // Clock, ns since its epoch
  // A clock reading no later than the first poll (the creation time for
  // sleep(d)), or 0 when unknown; lets registration skip a clock read.
  std::int64_t created_ns = 0;
  // Set at registration; the shard whose lock guards the links and `waker`.
  TimerShard* shard = nullptr;
  std::uint32_t heap_index = kNoHeap;  // position in the shard's near heap
  // kRegistered -> kFired/kShutdown is published (release) by the driver
  // after its last access to the entry; everything else happens under the
  // shard lock or on the owning task's thread.
  std::atomic<std::uint8_t> state{kIdle};
  // Runner-only: the task whose waker is stored (skips re-cloning it).
  TaskHeader* registered_task = nullptr;
  // Guarded by the shard's lock while kRegistered: the waker to wake, or
  // (cached_waker) a share of the shard's cached waker of the same task.
  Waker waker;
  bool cached_waker = false;
};

// True when the entry fired (or the runtime shut down); otherwise it is
// registered with self's waker. Throws std::logic_error outside a runtime
// with time enabled (only possible on the first poll, inside await_suspend).
bool timer_poll(TimerEntry& e, TaskHeader* self);
// Deregisters if registered. Safe against a concurrent firing.
void timer_cancel(TimerEntry& e) noexcept;

inline std::int64_t to_ns(Instant t) noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
// now + d without overflow (a huge d means "never").
inline Instant saturating_add(Instant now, Duration d) noexcept {
  constexpr auto kFar = std::chrono::hours(24 * 365 * 100);
  if (d > kFar) d = kFar;
  return now + d;
}

}  // namespace internal

// A future that completes at its deadline. Registers on first poll.
class Sleep final : public internal::LeafAwaiter<Sleep> {
 public:
  explicit Sleep(Instant deadline) noexcept { entry_.deadline_ns = internal::to_ns(deadline); }
  // `now` is a clock reading taken no later than this call (saves one).
  Sleep(Instant deadline, Instant now) noexcept : Sleep(deadline) {
    entry_.created_ns = internal::to_ns(now);
  }
  // Moving a registered Sleep deregisters the source; the new one
  // registers again when polled.
  Sleep(Sleep&& o) noexcept {
    internal::timer_cancel(o.entry_);
    entry_.deadline_ns = o.entry_.deadline_ns;
    entry_.created_ns = o.entry_.created_ns;
    const auto s = o.entry_.state.load(std::memory_order_acquire);
    if (s != internal::TimerEntry::kRegistered) entry_.state.store(s, std::memory_order_relaxed);
  }
  Sleep& operator=(Sleep&&) = delete;
  Sleep(const Sleep&) = delete;
  ~Sleep() { internal::timer_cancel(entry_); }

  // Rust Future::poll: true once the deadline passed. O(1).
  bool poll_ready(internal::TaskHeader* self) override {
    if (internal::tl_budget == 0 && !internal::coop_poll_proceed(self)) return false;
    if (entry_.state.load(std::memory_order_acquire) >= internal::TimerEntry::kFired ||
        internal::timer_poll(entry_, self)) {
      internal::coop_spend();
      return true;
    }
    return false;
  }
  void await_resume() const {
    if (entry_.state.load(std::memory_order_relaxed) == internal::TimerEntry::kShutdown)
      throw TaskCancelled("tideloop: runtime shut down while a timer was pending");
  }

  Instant deadline() const noexcept {
    return Instant(std::chrono::nanoseconds(entry_.deadline_ns));
  }
  // True once the timer fired (as observed by its runtime).
  bool is_elapsed() const noexcept {
    return entry_.state.load(std::memory_order_acquire) >= internal::TimerEntry::kFired;
  }
  // Changes the deadline; a registered timer is deregisterd and registers
  // again on the next poll. Call from the task that owns the Sleep.
  void reset(Instant deadline) noexcept {
    internal::timer_cancel(entry_);
    entry_.deadline_ns = internal::to_ns(deadline);
    entry_.created_ns = 0;
    entry_.state.store(internal::TimerEntry::kIdle, std::memory_order_relaxed);
  }

 private:
  internal::TimerEntry entry_;
};

// Completes `d` from now (d <= 0: at the next poll).
template <class Rep, class Period>
Sleep sleep(std::chrono::duration<Rep, Period> d) {
  const Instant now = Clock::now();
  return Sleep(internal::saturating_add(now, std::chrono::duration_cast<Duration>(d)), now);
}
// Completes at `deadline`.
inline Sleep sleep_until(Instant deadline) {
  return Sleep(deadline);
}

// Runs `inner` on the awaiting task (no spawn) and races it against a
// deadline: the inner task's value (or exception) if it completes first,
// else TimedOut is thrown and the inner task's frame is destroyed (its
// pending leaf futures deregister, exactly like a cancelled task).
// The inner task is polled before the deadline is checked, so a task that is
// ready at the deadline still wins.
template <class T>
class [[nodiscard]] Timeout : public internal::LeafAwaiter<Timeout<T>> {
 public:
  Timeout(Task<T> inner, Instant deadline) : inner_(inner.release()), sleep_(deadline) {
    if (!inner_) throw std::invalid_argument("tideloop: timeout() of an empty Task");
  }
  Timeout(Timeout&& o) noexcept
      : inner_(std::exchange(o.inner_, {})), sleep_(std::move(o.sleep_)) {}
  Timeout(const Timeout&) = delete;
  Timeout& operator=(const Timeout&) = delete;
  ~Timeout() {
    if (inner_) inner_.destroy();
  }

  bool poll_ready(internal::TaskHeader* self) override {
    if (!started_) {
      started_ = true;
      if (drive(self, inner_)) return true;
    } else if (inner_pending_ == nullptr || inner_pending_->poll_ready(self)) {
      inner_pending_ = nullptr;
      if (drive(self, inner_resume_)) return true;
    }
    if (sleep_.poll_ready(self)) {
      timed_out_ = true;
      return true;
    }
    return false;
  }

  T await_resume() {
    if (timed_out_) throw TimedOut();
    sleep_.reset(Instant::max());  // deregister now, not at destruction
    return inner_.promise().take();
  }

 private:
  // Resumes the inner coroutine on this thread until it completes (true) or
  // suspends on a leaf future, which we take over from the task header so
  // that the task's own pending leaf stays this Timeout.
  bool drive(internal::TaskHeader* self, std::coroutine_handle<> h) {
    internal::Pollable* saved_pending = self->pending;
    std::coroutine_handle<> saved_resume = self->resume_point;
    self->pending = nullptr;
    h.resume();
    inner_pending_ = self->pending;
    inner_resume_ = self->resume_point;
    self->pending = saved_pending;
    self->resume_point = saved_resume;
    return inner_.done();
  }

  typename Task<T>::Handle inner_;
  Sleep sleep_;
  internal::Pollable* inner_pending_ = nullptr;
  std::coroutine_handle<> inner_resume_;
  bool started_ = false;
  bool timed_out_ = false;
};

template <class T, class Rep, class Period>
Timeout<T> timeout(std::chrono::duration<Rep, Period> d, Task<T> inner) {
  return Timeout<T>(std::move(inner), internal::saturating_add(
                                          Clock::now(), std::chrono::duration_cast<Duration>(d)));
}
template <class T>
Timeout<T> timeout_at(Instant deadline, Task<T> inner) {
  return Timeout<T>(std::move(inner), deadline);
}

namespace internal {
template <class A>
auto await_as_task(A a) -> Task<decltype(std::declval<A&>().await_resume())> {
  co_return co_await std::move(a);
}
}  // namespace internal

// timeout() for any awaiter that is not a Task (e.g. stream.read(buf)):
// wrapped in a coroutine first (one frame allocation).
template <class A, class Rep, class Period>
requires(!internal::IsTask<std::decay_t<A>>::value) && requires(A& a) {
  a.await_resume();
}
auto timeout(std::chrono::duration<Rep, Period> d, A&& awaiter) {
  return timeout(d, internal::await_as_task(std::forward<A>(awaiter)));
}

// What an Interval does when ticks were missed (the task was late).
enum class MissedTickBehavior {
  kBurst,  // fire the missed ticks as fast as possible (Tokio's default)
  kDelay,  // the next tick is one period after the late one
  kSkip,   // skip the missed ticks, stay aligned to start + k * period
};

// Ticks every `period`; the first tick completes immediately.
class Interval {
 public:
  Interval(Instant start, Duration period, MissedTickBehavior behavior = MissedTickBehavior::kBurst)
      : period_(period), behavior_(behavior), sleep_(start) {
    if (period <= Duration::zero())
      throw std::invalid_argument("tideloop: interval period must be positive");
  }

  class TickAwaiter : public internal::LeafAwaiter<TickAwaiter> {
   public:
    explicit TickAwaiter(Interval* iv) : iv_(iv) {}
    bool poll_ready(internal::TaskHeader* self) override {
      if (!iv_->sleep_.poll_ready(self)) return false;
      at_ = iv_->sleep_.deadline();
      iv_->schedule_next(at_);
      return true;
    }
    // The instant this tick was scheduled for.
    Instant await_resume() const noexcept { return at_; }

   private:
    Interval* iv_;
    Instant at_{};
  };
  // Completes at the next tick; returns the tick's scheduled instant.
  TickAwaiter tick() { return TickAwaiter(this); }

  // The next tick happens one period from now.
  void reset() { sleep_.reset(Clock::now() + period_); }
  Duration period() const noexcept { return period_; }
  MissedTickBehavior missed_tick_behavior() const noexcept { return behavior_; }
  void set_missed_tick_behavior(MissedTickBehavior b) noexcept { behavior_ = b; }

 private:
  void schedule_next(Instant fired_at) {
    Instant next = fired_at + period_;
    if (behavior_ != MissedTickBehavior::kBurst) {
      const Instant now = Clock::now();
      if (next <= now) {
        if (behavior_ == MissedTickBehavior::kDelay) {
          next = now + period_;
        } else {
          const auto missed = (now - fired_at) / period_;
          next = fired_at + period_ * (missed + 1);
        }
      }
    }
    sleep_.reset(next);
  }

  Duration period_;
  MissedTickBehavior behavior_;
  Sleep sleep_;
};

template <class Rep, class Period>
Interval interval(std::chrono::duration<Rep, Period> period) {
  return Interval(Clock::now(), std::chrono::duration_cast<Duration>(period));
}
template <class Rep, class Period>
Interval interval_at(Instant start, std::chrono::duration<Rep, Period> period) {
  return Interval(start, std::chrono::duration_cast<Duration>(period));
}

}  // namespace tideloop
