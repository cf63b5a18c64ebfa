// Model-based tests of the timers, from random seeds (see model_support.hpp
// for TIDELOOP_SEED / TIDELOOP_MODEL_ITERS and the replay command):
//
//  - TimerWheelModel: the bare TimerWheel against a std::multimap of
//    deadlines. Random inserts (past, same deadline as a pending timer, every
//    level, just below/at/above the span, several spans ahead), cancels of
//    pending timers and of fired, cancelled or never-inserted ones (through
//    the `linked` flag, as every caller guards remove()), advances (no-op,
//    one tick, to one tick before the earliest deadline, to the earliest
//    deadline, to next_expiration(), random jumps up to several spans) and
//    fast_forward. After every step: exactly the due timers fired, each once,
//    never early, in deadline order; nothing else changed; next_expiration()
//    lies in (elapsed, earliest deadline].
//  - TimeDriverModel: the runtime's sharded TimeDriver (wheel + sub-ms near
//    heap per shard, waker cache, the sleep/unpark handshake) driven with a
//    virtual clock, registrations and cancels from three threads (so several
//    shards), waker swaps (a timer polled by another task), process(),
//    begin_sleep/end_sleep and shutdown. Checks: a timer fires once, at or
//    after its deadline and no later than its tick boundary (its exact
//    deadline on the near path); a cancelled timer never fires; cancel of a
//    fired, shut-down or never-registered timer is a no-op; each firing wakes
//    exactly the task that polled it last; a sleeping driver is never left
//    sleeping past a new timer; next_deadline() is a lower bound; after
//    shutdown no waker reference is left (every probe task is back to one).
// Existing tests (time_wheel_test, timer_wheel_far_test) use fixed seeds
// and the wheel alone; these explore new seeds on every run.
#include <gtest/gtest.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "model_support.hpp"
#include "test_support.hpp"
#include "tideloop/time/timer_wheel.hpp"
#include "time/time_driver.hpp"

namespace {

using tideloop::TimerWheel;
using tideloop::TimerWheelNode;
using tlmodel::where;

constexpr std::uint64_t kSpan = TimerWheel::kMaxDuration;   // 2^36 ticks
constexpr std::uint64_t kTop = kSpan / TimerWheel::kSlots;  // top-level slot width

// ---------------------------------------------------------------------------
// TimerWheel against a multimap

struct WheelTimer : TimerWheelNode {
  int id = 0;
};

enum class Life { kNever, kPending, kFired, kCancelled };

void wheel_case(std::uint64_t seed, long steps, long* fired_total) {
  std::mt19937_64 rng(seed);
  // Start times that put the first turns near interesting boundaries.
  std::uint64_t start = 0;
  switch (rng() % 5) {
    case 0:
      break;
    case 1:
      start = rng() % (std::uint64_t{1} << 40);
      break;
    case 2:
      start = (std::uint64_t{1} << 32) - rng() % 5000;  // a 32-bit wrap ahead
      break;
    case 3:
      start = kSpan * (1 + rng() % 4) - 1 - rng() % 3000;  // a top-level turn ahead
      break;
    default:
      start = kTop * (1 + rng() % 63) - rng() % 70;  // a top-level slot ahead
      break;
  }
  TimerWheel w(start);
  const std::size_t n = std::size_t{8} << (rng() % 7);  // 8 .. 512 timers
  std::vector<WheelTimer> pool(n);
  std::vector<Life> life(n, Life::kNever);
  std::multimap<std::uint64_t, int> model;  // deadline -> id, pending only
  std::vector<std::multimap<std::uint64_t, int>::iterator> at(n);
  for (std::size_t i = 0; i < n; ++i) pool[i].id = static_cast<int>(i);
  // Operation mix (out of 16): inserts, then cancels, then advances.
  const int inserts = 4 + static_cast<int>(rng() % 7);
  const int cancels = 1 + static_cast<int>(rng() % 3);

  auto delay = [&]() -> std::uint64_t {
    switch (rng() % 14) {
      case 0:
        return 1 + rng() % 64;
      case 1:
        return 1 + rng() % 4096;
      case 2:
        return 1 + rng() % (std::uint64_t{1} << 24);
      case 3:
        return 1 + rng() % kTop;
      case 4:
        return 1 + rng() % kSpan;
      case 5:
        return kSpan - 1 - rng() % 3;  // just below one span
      case 6:
        return kSpan + rng() % 3;  // at or just beyond one span
      case 7:
        return kSpan * (1 + rng() % 6) + rng() % kSpan;  // several spans
      case 8:                                            // on a slot boundary of a random level
        return std::uint64_t{1} << (6 * (rng() % 6));
      default:
        return 1 + rng() % 300;
    }
  };

  for (long step = 0; step < steps; ++step) {
    const std::uint64_t now = w.elapsed();
    const int op = static_cast<int>(rng() % 16);
    if (op < inserts) {
      const int id = static_cast<int>(rng() % n);
      if (life[id] == Life::kPending) continue;  // in use
      std::uint64_t when;
      const unsigned kind = rng() % 16;
      if (kind == 0) {
        when = now - rng() % std::min<std::uint64_t>(now + 1, 100);  // now or past
      } else if (kind < 4 && !model.empty()) {
        // The same deadline as a pending timer: ties must all fire together.
        auto it = model.begin();
        std::advance(it, static_cast<long>(rng() % std::min<std::size_t>(model.size(), 8)));
        when = it->first;
      } else {
        when = now + delay();
      }
      const bool ok = w.insert(&pool[id], when);
      ASSERT_EQ(ok, when > now) << "insert at " << when << ", elapsed " << now << where(seed, step);
      ASSERT_EQ(pool[id].linked, ok) << where(seed, step);
      if (ok) {
        life[id] = Life::kPending;
        at[id] = model.emplace(when, id);
      }
    } else if (op < inserts + cancels) {
      // Cancel anything: a pending timer is removed, a fired, cancelled or
      // never-inserted one is left alone by the caller's `linked` guard.
      const int id = static_cast<int>(rng() % n);
      ASSERT_EQ(pool[id].linked, life[id] == Life::kPending)
          << "linked flag of timer " << id << where(seed, step);
      if (pool[id].linked) {
        w.remove(&pool[id]);
        ASSERT_FALSE(pool[id].linked) << where(seed, step);
        model.erase(at[id]);
        life[id] = Life::kCancelled;
      }
    } else if (op == 15 && rng() % 4 == 0) {
      // fast_forward: a no-op unless the wheel is empty.
      const std::uint64_t to = now + rng() % (kSpan * 2);
      w.fast_forward(to);
      ASSERT_EQ(w.elapsed(), model.empty() ? std::max(now, to) : now) << where(seed, step);
    } else {
      std::uint64_t to = now;
      const std::uint64_t earliest = model.empty() ? now : model.begin()->first;
      switch (rng() % 12) {
        case 0:
          break;  // no-op
        case 1:
          to = now + 1;
          break;
        case 2:
          if (!model.empty()) to = earliest - 1;  // the tick before: nothing may fire early
          break;
        case 3:
        case 4:
          to = earliest;
          break;
        case 5:
        case 6:
          if (auto e = w.next_expiration()) to = *e;
          break;
        case 7:
          to = now + rng() % (std::uint64_t{1} << (rng() % 37));
          break;
        case 8:
          to = now + rng() % (3 * kSpan);  // across several turns
          break;
        default:
          to = now + rng() % 5000;
          break;
      }
      std::vector<int> got;
      std::uint64_t last = 0;
      for (TimerWheelNode* p = w.advance(to); p != nullptr; p = p->next) {
        const int id = static_cast<WheelTimer*>(p)->id;
        ASSERT_EQ(life[id], Life::kPending)
            << "timer " << id << " fired but is not pending" << where(seed, step);
        ASSERT_LE(p->when, to) << "timer " << id << " fired early" << where(seed, step);
        ASSERT_GT(p->when, now) << "timer " << id << " fired late" << where(seed, step);
        ASSERT_GE(p->when, last) << "fired out of deadline order" << where(seed, step);
        ASSERT_EQ(p->when, at[id]->first) << where(seed, step);
        ASSERT_FALSE(p->linked) << where(seed, step);
        last = p->when;
        got.push_back(id);
      }
      std::vector<int> want;
      for (auto it = model.begin(); it != model.end() && it->first <= to;) {
        want.push_back(it->second);
        life[it->second] = Life::kFired;
        it = model.erase(it);
      }
      std::sort(got.begin(), got.end());
      std::sort(want.begin(), want.end());
      ASSERT_EQ(got, want) << "advance " << now << " -> " << to << where(seed, step);
      ASSERT_EQ(w.elapsed(), std::max(now, to)) << where(seed, step);
      *fired_total += static_cast<long>(got.size());
    }
    ASSERT_EQ(w.size(), model.size()) << where(seed, step);
    const std::optional<std::uint64_t> e = w.next_expiration();
    ASSERT_EQ(e.has_value(), !model.empty()) << where(seed, step);
    if (e) {
      ASSERT_GT(*e, w.elapsed()) << where(seed, step);
      ASSERT_LE(*e, model.begin()->first)
          << "next_expiration() later than the earliest deadline" << where(seed, step);
    }
  }
  // Nothing lost: what is left fires by the end of time, in order.
  std::uint64_t last = 0;
  std::size_t rest = 0;
  for (TimerWheelNode* p = w.advance(~std::uint64_t{0} >> 1); p != nullptr; p = p->next) {
    ASSERT_GE(p->when, last) << where(seed, steps);
    last = p->when;
    ++rest;
  }
  ASSERT_EQ(rest, model.size()) << where(seed, steps);
  *fired_total += static_cast<long>(rest);
  ASSERT_TRUE(w.empty());
}

TEST(TimerWheelModel, RandomOperationsMatchAnOrderedMap) {
  const tlmodel::Cases cases(400, 100, 100);
  long fired = 0;
  for (long k = 0; k < cases.count(); ++k) {
    wheel_case(cases.seed(k), 3000, &fired);
    if (HasFatalFailure()) return;
  }
  std::printf("%ld cases, %ld timers fired\n", cases.count(), fired);
}

// ---------------------------------------------------------------------------
// TimeDriver against a model

namespace in = tideloop::internal;
using in::TimeDriver;
using in::TimerEntry;

// Runs jobs synchronously on its own thread: a registration or cancel from
// there lands in that thread's shard, and the test stays deterministic.
class Runner {
 public:
  Runner() : t_([this] { loop(); }) {}
  ~Runner() {
    {
      std::lock_guard<std::mutex> g(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    t_.join();
  }
  void run(const std::function<void()>& f) {
    std::unique_lock<std::mutex> g(mu_);
    job_ = &f;
    cv_.notify_all();
    cv_.wait(g, [&] { return job_ == nullptr; });
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> g(mu_);
    for (;;) {
      cv_.wait(g, [&] { return stop_ || job_ != nullptr; });
      if (job_ == nullptr) return;
      (*job_)();
      job_ = nullptr;
      cv_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  const std::function<void()>* job_ = nullptr;
  bool stop_ = false;
  std::thread t_;
};

struct DriverTimer {
  TimerEntry e;
  // Model:
  std::uint8_t state = TimerEntry::kIdle;
  std::int64_t fire_at = 0;  // when registered: the time process() must fire it by
  int probe = -1;            // whose waker it holds
};

constexpr std::int64_t kMs = TimeDriver::kTickNs;

void driver_case(std::uint64_t seed, long steps, Runner* runners, long* stats) {
  std::mt19937_64 rng(seed);
  constexpr int kProbes = 3;
  // Probes outlive the driver: the driver's waker cache holds references.
  tltest::ProbeTask probes[kProbes];
  int wakes_seen[kProbes] = {0, 0, 0};
  std::atomic<int> unparks{0};
  const std::size_t workers = 1 + rng() % 4;  // 2..8 shards
  auto drv = std::make_unique<TimeDriver>(workers, [&] { unparks.fetch_add(1); });
  // Virtual time, relative to the driver's origin so that tick boundaries
  // (and so every outcome) depend on the seed only.
  const std::int64_t t0 = drv->tick_time(0);
  std::int64_t clock = t0 + static_cast<std::int64_t>(rng() % (1000 * kMs));
  std::int64_t processed = clock;                       // the time of the last process()
  const std::size_t n = std::size_t{4} << (rng() % 6);  // 4 .. 128 timers
  std::vector<std::unique_ptr<DriverTimer>> ts;
  for (std::size_t i = 0; i < n; ++i) ts.push_back(std::make_unique<DriverTimer>());
  std::multiset<std::int64_t> pending;  // fire_at of registered timers
  bool sleeping = false, shut = false;
  std::int64_t sleep_until = 0;
  int unparks_at_sleep = 0;

  // Where an operation on a timer runs: the driver's thread or a runner's.
  auto on_some_thread = [&](const std::function<void()>& f) {
    // Mostly here: a hop to a runner costs two context switches.
    const unsigned who = rng() % 8;
    if (who < 6) {
      f();
    } else {
      runners[who - 6].run(f);
    }
  };
  auto check_wakes = [&](long step) {
    for (int p = 0; p < kProbes; ++p)
      ASSERT_EQ(probes[p].wakes(), wakes_seen[p]) << "wake-ups of probe " << p << where(seed, step);
  };

  for (long step = 0; step < steps; ++step) {
    const int op = static_cast<int>(rng() % 20);
    DriverTimer& t = *ts[rng() % n];
    // (An operation that does not apply to the chosen timer falls through
    // to the next one.)
    if (op < 7 && t.state != TimerEntry::kRegistered) {
      // Register (reusing the timer as Sleep::reset does).
      in::timer_cancel(t.e);  // a no-op: not registered
      std::int64_t d;
      switch (rng() % 10) {
        case 0:
          d = -static_cast<std::int64_t>(rng() % (5 * kMs));  // already due
          break;
        case 1:
          d = static_cast<std::int64_t>(rng() % kMs);  // sub-millisecond
          break;
        case 2:
          d = kMs - 1 + static_cast<std::int64_t>(rng() % 3);  // the tick boundary
          break;
        case 3:
          d = static_cast<std::int64_t>(rng() % (3600'000 * kMs));  // up to an hour
          break;
        case 4:  // up to two wheel spans (1 ms ticks: 2 x 795 days)
          d = static_cast<std::int64_t>(rng() % (2 * kSpan)) * kMs;
          break;
        default:
          d = static_cast<std::int64_t>(rng() % (200 * kMs));
          break;
      }
      // Sometimes the same deadline as another timer.
      const DriverTimer& other = *ts[rng() % n];
      t.e.deadline_ns =
          (rng() % 4 == 0 && other.e.deadline_ns > t0) ? other.e.deadline_ns : clock + d;
      // created_ns: a clock reading no later than now, or unknown.
      t.e.created_ns = rng() % 2 ? clock : 0;
      t.e.state.store(TimerEntry::kIdle, std::memory_order_relaxed);
      t.e.registered_task = nullptr;
      const int p = static_cast<int>(rng() % kProbes);
      bool due = false;
      on_some_thread([&] { due = drv->register_entry(t.e, &probes[p]); });
      if (due) {
        ASSERT_EQ(t.e.state.load(), shut ? TimerEntry::kShutdown : TimerEntry::kFired)
            << where(seed, step);
        if (!shut) {
          ASSERT_LE(t.e.deadline_ns, clock)
              << "registration fired a timer early" << where(seed, step);
        }
        t.state = t.e.state.load();
        if (!shut) ++stats[0];
      } else {
        ASSERT_FALSE(shut) << "registered after shutdown" << where(seed, step);
        if (t.e.created_ns != 0) {
          ASSERT_GT(t.e.deadline_ns, t.e.created_ns)
              << "a due timer was registered instead of completing" << where(seed, step);
        }
        ASSERT_EQ(t.e.state.load(), TimerEntry::kRegistered) << where(seed, step);
        t.state = TimerEntry::kRegistered;
        t.probe = p;
        if (t.e.heap_index != TimerEntry::kNoHeap) {
          // Near path: exact deadline, only for deadlines within a tick.
          t.fire_at = t.e.deadline_ns;
          ++stats[1];
        } else {
          t.fire_at = drv->tick_time(static_cast<std::uint64_t>(drv->tick_ceil(t.e.deadline_ns)));
          ASSERT_GE(t.fire_at, t.e.deadline_ns) << where(seed, step);
          ASSERT_LT(t.fire_at - t.e.deadline_ns, kMs) << where(seed, step);
          ++stats[2];
        }
        pending.insert(t.fire_at);
        // The handshake with a sleeping driver: it is woken, or it sleeps
        // no later than this timer's fire time.
        if (sleeping && t.fire_at < sleep_until) {
          ASSERT_GT(unparks.load(), unparks_at_sleep)
              << "driver sleeping until " << sleep_until - t0 << " not woken for a timer at "
              << t.fire_at - t0 << where(seed, step);
        }
      }
    } else if (op < 10) {
      // Cancel, whatever the timer's state: only a registered one changes.
      on_some_thread([&] { in::timer_cancel(t.e); });
      if (t.state == TimerEntry::kRegistered) {
        pending.erase(pending.find(t.fire_at));
        t.state = TimerEntry::kIdle;
      }
      ASSERT_EQ(t.e.state.load(), t.state) << "cancel" << where(seed, step);
    } else if (op < 11 && t.state != TimerEntry::kIdle) {
      // Polled by another task: a registered timer takes the new waker; a
      // fired one reports ready. (An idle one would register: that needs a
      // runtime.)
      const int p = static_cast<int>(rng() % kProbes);
      bool ready = false;
      on_some_thread([&] { ready = in::timer_poll(t.e, &probes[p]); });
      ASSERT_EQ(ready, t.state != TimerEntry::kRegistered) << where(seed, step);
      if (!ready) t.probe = p;
    } else if (op < 13) {
      clock += static_cast<std::int64_t>(rng() % (3 * kMs));  // time passes
    } else if (op < 14 && !shut) {
      if (!sleeping) {
        // The driver goes to sleep: never past the earliest timer.
        const std::int64_t until = clock + static_cast<std::int64_t>(rng() % (10'000 * kMs));
        sleep_until = drv->begin_sleep(until);
        ASSERT_LE(sleep_until, until) << where(seed, step);
        if (!pending.empty()) {
          ASSERT_LE(sleep_until, *pending.begin())
              << "driver would oversleep a timer" << where(seed, step);
        }
        unparks_at_sleep = unparks.load();
        sleeping = true;
      } else {
        drv->end_sleep();
        sleeping = false;
      }
    } else if (!sleeping) {
      // process(): to a random time, or exactly to/just before a fire time.
      std::int64_t to = clock;
      switch (rng() % 8) {
        case 0:
          if (!pending.empty()) to = std::max(processed, *pending.begin() - 1);
          break;
        case 1:
        case 2:
          if (!pending.empty()) to = std::max(processed, *pending.begin());
          break;
        case 3:
          if (const std::int64_t nd = drv->next_deadline(); nd != in::kNever)
            to = std::max(processed, nd);
          break;
        case 4:  // a long jump (a suspended machine, a far timer)
          to = clock + static_cast<std::int64_t>(rng() % (kSpan / 8)) * kMs;
          break;
        default:
          break;
      }
      clock = std::max(clock, to);
      processed = to;
      const std::size_t fired = drv->process(to);
      std::size_t want = 0;
      for (auto& tp : ts) {
        DriverTimer& x = *tp;
        if (x.state != TimerEntry::kRegistered) continue;
        if (x.fire_at <= to) {
          ASSERT_EQ(x.e.state.load(), TimerEntry::kFired)
              << "timer due at " << x.fire_at - t0 << " not fired by " << to - t0
              << where(seed, step);
          x.state = TimerEntry::kFired;
          pending.erase(pending.find(x.fire_at));
          ++wakes_seen[x.probe];
          ++want;
        } else {
          ASSERT_EQ(x.e.state.load(), TimerEntry::kRegistered)
              << "timer due at " << x.fire_at - t0 << " (deadline " << x.e.deadline_ns - t0
              << ") fired early at " << to - t0 << where(seed, step);
        }
      }
      ASSERT_EQ(fired, want) << where(seed, step);
      stats[3] += static_cast<long>(fired);
    }
    if (!shut && (step == steps - 1 || rng() % 4000 == 0)) {
      // Shutdown: every pending timer completes as "shut down", once.
      if (sleeping) drv->end_sleep();
      sleeping = false;
      drv->shutdown();
      shut = true;
      for (auto& tp : ts) {
        if (tp->state == TimerEntry::kRegistered) {
          tp->state = TimerEntry::kShutdown;
          ++wakes_seen[tp->probe];
        }
      }
      pending.clear();
      // Exactly the registered timers' tasks are woken: shutdown() drops each
      // shard's cached waker without waking it (it used to wake it: a
      // spurious wake-up this test found).
      for (int p = 0; p < kProbes; ++p) {
        ASSERT_EQ(probes[p].wakes(), wakes_seen[p]) << "probe " << p << where(seed, step);
      }
    }
    {
      int reg[kProbes] = {0, 0, 0};
      for (auto& tp : ts)
        if (tp->state == TimerEntry::kRegistered && !tp->e.cached_waker) ++reg[tp->probe];
      for (int p = 0; p < kProbes; ++p) {
        const std::uint64_t bound = 1 + reg[p] + (shut ? 0 : drv->num_shards());
        ASSERT_LE(probes[p].refs(), bound) << "probe " << p << " op " << op << where(seed, step);
      }
    }
    // Every timer's state matches the model (nothing fired unbidden, a
    // cancelled timer stays idle), as do the wake-ups and the counts.
    for (std::size_t i = 0; i < n; ++i)
      ASSERT_EQ(ts[i]->e.state.load(), ts[i]->state) << "timer " << i << where(seed, step);
    check_wakes(step);
    if (::testing::Test::HasFatalFailure()) return;
    ASSERT_EQ(drv->pending(), pending.size()) << where(seed, step);
    if (!pending.empty()) {
      ASSERT_LE(drv->next_deadline(), *pending.begin())
          << "next_deadline() later than a pending timer" << where(seed, step);
    }
  }
  // No waker reference left behind: each probe holds only its own.
  for (int p = 0; p < kProbes; ++p)
    ASSERT_EQ(probes[p].refs(), 1u) << "probe " << p << " leaked wakers" << where(seed, steps);
  drv.reset();
}

TEST(TimeDriverModel, RegisterCancelProcessAndShutdownMatchTheModel) {
  const tlmodel::Cases cases(80, 30, 30);
  Runner runners[2];
  // [0] completed at registration, [1] near-heap, [2] wheel, [3] fired by process()
  long stats[4] = {0, 0, 0, 0};
  for (long k = 0; k < cases.count(); ++k) {
    driver_case(cases.seed(k), 2500, runners, stats);
    if (HasFatalFailure()) return;
  }
  std::printf(
      "%ld cases: %ld due at registration, %ld near-heap and %ld wheel registrations, "
      "%ld fired by process()\n",
      cases.count(), stats[0], stats[1], stats[2], stats[3]);
}

}  // namespace
