// TimerQueue: the loop's pending call_later/call_at timers, on the runtime's hierarchical
// tideloop::TimerWheel (runtime/include/tideloop/time/timer_wheel.hpp), with asyncio's semantics.
//
// asyncio's contract, kept exactly:
//  * TimerHandle.when() is the float the user asked for (the wheel only sees a rounded tick);
//  * timers fire in `when` order and, for equal `when`, in scheduling order (a sequence number);
//  * a timer is due when `when < end_time`, end_time = loop.time() + clock resolution
//    (BaseEventLoop._run_once breaks on `handle._when >= end_time`; a NaN deadline is due);
//  * the wait ends at the earliest deadline, not at a rounded tick (see "Waiting").
//
// Mapping. A tick is 2^-18 s (3.8 us): tick(t) = floor(t * 2^18), exact in binary floating
// point. Level L of the wheel has slots of 64^L ticks: 3.8 us, 244 us, 15.6 ms, 1 s, 64 s,
// 68 min; it spans 2^36 ticks = 72.8 h. (Ticks of 2^-10 .. 2^-20 s were measured on bench/python
// workloads: within noise of each other except 2^-16 s, 8-12% slower on a burst of 50k timers
// from sorting larger per-tick groups; 2^-20 s would put the far threshold at 18 h instead of
// 3 days. Numbers in docs/python-api.md.)
//
// Three homes, O(1) in the common case:
//  * the wheel: insert and cancel are O(1) (cancel unlinks at once: no lazy clean-up);
//  * `due_`, a small binary heap ordered by (when, seq): timers whose tick the wheel already
//    handed out but whose float `when` is not reached yet (at most one tick's worth), deadlines
//    at or behind the wheel's tick when scheduled (past, NaN, the current tick), and those
//    scheduled while a look-ahead is in effect (see "Waiting");
//  * `far_`, a heap: deadlines 63/64 of the wheel's span (71.7 h) or more ahead (see "Far
//    deadlines").
// Cancel in a heap pops the top at once and marks any other entry, which is dropped when it
// reaches the top or when more than half of that heap is marked (asyncio's heuristic).
//
// Expiry. collect_due(end_time) first takes due entries from `due_` (all of them precede the
// wheel, whose ticks are later); if `due_` still holds a not-yet-due entry, nothing in the wheel
// is due either. Otherwise the wheel hands out due ticks one slot at a time (advance() to its
// next expiration: each list is walked while it is still in cache); one slot yields the entries
// of exactly one tick, sorted by (when, seq) (a handful), then appended in order: due ones to the
// ready queue, the rest (the current tick only) to `due_`. A tick that has nothing to hand out
// costs a few compares: `min_tick_` bounds every wheel entry from below, and the wheel's time may
// lag the clock by up to kMaxLagTicks (about 1 ms) instead of being advanced on every tick.
//
// Waiting. next_wait(now) is the exact earliest deadline when it is known: the top of `due_`.
// Otherwise the wheel only knows the start of the earliest slot, which for level L >= 1 can be up
// to 64^L ticks early. When that slot starts within kLookaheadTicks (31 ms), the queue settles it
// now (advance() to the slot start: entries of that tick go to `due_`, the others cascade down)
// until an exact deadline is known, so a wait shorter than the horizon ends exactly at the
// deadline with one wake-up. A farther slot is waited for (an early wake-up: one extra wait per
// level, negligible against a wait that long), then settled. While a look-ahead is in effect
// (the wheel's tick is ahead of the clock), new timers earlier than the settled tick go to
// `due_`: they are the next to fire anyway, and the horizon bounds how many there can be (at
// worst, `due_` then behaves like the binary heap this queue replaced).
//
// Far deadlines. One that is 2^36 - 2^30 ticks or more ahead of the wheel's time waits in
// `far_` and moves into the wheel once it is closer (or, when the clock jumped past it, straight
// into the batch being handed out). This began as a workaround: TimerWheel used to let a clamped
// beyond-span entry in the current top-level slot hide every nearer top-level slot (with 2^-20 s
// ticks a 1 h timer next to a 19 h one fired 19 h late). The wheel is fixed now
// (runtime/src/time/timer_wheel.cpp, tests/native/timer_wheel_far_test.cpp; the Python timer
// tests also pass with every deadline in the wheel), and the heap stays because it is cheaper
// for such timers: in the wheel a far entry is re-placed once per span (~72 h) and an advance
// across N spans visits it N times. tests/python/test_timer_order.py moves the clock by up to
// 40 days.
//
// Every wheel-resident entry is also listed in `registry_` so that the loop can traverse (GC) and
// clear them: the wheel itself offers no iteration. The list is maintained lazily, because
// touching it on every expiry cost 10% of a 100k-timer burst (each swap-remove dirtied another,
// cold timer): an entry that leaves the wheel keeps its slot (stale, skipped by for_each); the
// loop calls forget() when a timer handle is deallocated, which clears the slot; the list is
// compacted when more than half of it is stale (amortized O(1), at insert). Invariant: a non-null
// slot points to a live handle. Only a thread holding the GIL touches a TimerQueue.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "tideloop/time/timer_wheel.hpp"
#include "timer_heap.hpp"

#ifndef TIDELOOP_BRIDGE_TICK_SHIFT
#define TIDELOOP_BRIDGE_TICK_SHIFT 18
#endif

namespace tideloop::bridge {

// Embedded in each TimerHandle. All fields belong to the queue while the entry is scheduled;
// `index` until the handle is deallocated (see forget()).
struct TimerEntry {
  static constexpr std::uint32_t kNoIndex = ~std::uint32_t{0};
  // where/cancelled/index first: embedded right after the Handle fields, they share a cache line
  // with what the GC traversal and dealloc read anyway.
  std::uint8_t where = 0;         // TimerQueue::kNone / kWheel / kDue / kFar
  bool cancelled = false;         // cancelled while in due_ or far_ (dropped lazily)
  std::uint32_t index = 0;        // slot in registry_, or kNoIndex
  tideloop::TimerWheelNode node;  // entry_of(): node -> entry
  double when = 0;                // the exact deadline, loop.time() seconds
  std::uint64_t seq = 0;          // scheduling order, tie-breaker for equal `when`
};

class TimerQueue {
 public:
  enum : std::uint8_t { kNone = 0, kWheel = 1, kDue = 2, kFar = 3 };

  // tick = 2^-kTickShift s (see "Mapping"; -DTIDELOOP_BRIDGE_TICK_SHIFT=n to measure others).
  static constexpr int kTickShift = TIDELOOP_BRIDGE_TICK_SHIFT;
  static constexpr double kTicksPerSecond = static_cast<double>(std::uint64_t{1} << kTickShift);
  // Settle the earliest wheel slot ahead of time when it starts within 2^-5 s = 31 ms (see
  // "Waiting").
  static constexpr std::uint64_t kLookaheadTicks = std::uint64_t{1} << (kTickShift - 5);
  // collect_due lets the wheel's time lag the clock by at most this much while nothing is due
  // (2^-10 s, about 1 ms): new timers are placed relative to it.
  static constexpr std::uint64_t kMaxLagTicks = std::uint64_t{1} << (kTickShift - 10);
  static constexpr std::uint64_t kNoTick = ~std::uint64_t{0};
  // Deadlines this far ahead of the wheel's time wait in far_ (see "Far deadlines").
  static constexpr std::uint64_t kFarTicks =
      tideloop::TimerWheel::kMaxDuration - (tideloop::TimerWheel::kMaxDuration >> 6);

  explicit TimerQueue(double now) : wheel_(to_tick(now)) {}
  TimerQueue(const TimerQueue&) = delete;
  TimerQueue& operator=(const TimerQueue&) = delete;

  // Timers the queue holds, including cancelled ones not yet dropped from due_ and far_.
  std::size_t size() const { return wheel_.size() + due_.size() + far_.size(); }
  bool empty() const { return wheel_.empty() && due_.empty() && far_.empty(); }
  std::size_t cancelled_pending() const { return due_cancelled_ + far_cancelled_; }

  static std::uint64_t to_tick(double t) {
    double x = t * kTicksPerSecond;                 // a power of two: exact
    if (!(x > 0)) return 0;                         // past, zero or NaN
    constexpr double kMax = 4611686018427387904.0;  // 2^62
    if (x >= kMax) return std::uint64_t{1} << 62;
    return static_cast<std::uint64_t>(x);
  }

  // Schedules `e` (not scheduled yet) at `when`.
  void insert(TimerEntry* e, double when) {
    e->when = when;
    e->seq = next_seq_++;
    e->cancelled = false;
    const std::uint64_t tick = to_tick(when);
    if (tick > wheel_.elapsed() && tick - wheel_.elapsed() >= kFarTicks) {
      insert_far(e);
    } else if (wheel_.insert(&e->node, tick)) {
      e->where = kWheel;
      register_entry(e);
      if (tick < min_tick_) min_tick_ = tick;
    } else {
      push_due(e);
    }
  }

  // The handle owning `e` is being deallocated: drop its registry slot, if any. O(1).
  void forget(TimerEntry* e) {
    if (e->index != TimerEntry::kNoIndex) {
      if (e->index < registry_.size() && registry_[e->index] == e) registry_[e->index] = nullptr;
      e->index = TimerEntry::kNoIndex;
    }
  }

  // Cancels a scheduled entry. Returns true when the entry left the queue (the caller drops the
  // queue's reference now), false when it stays marked in due_/far_ until handed to drop().
  // O(1) in the wheel and at the top of due_/far_.
  bool cancel(TimerEntry* e) {
    if (e->where == kWheel) {
      wheel_.remove(&e->node);
      e->where = kNone;  // its registry slot goes stale
      return true;
    }
    if (e->where == kDue) return cancel_in_heap(due_, due_cancelled_, e);
    if (e->where == kFar) return cancel_in_heap(far_, far_cancelled_, e);
    return false;
  }

  // Hands every due entry to on_due(e), in (when, seq) order; e has left the queue. Cancelled
  // entries met on the way go to drop(e) (after the queue is consistent: drop may run Python
  // code that schedules). `end_time` is loop.time() + clock resolution.
  template <class OnDue, class Drop>
  void collect_due(double end_time, OnDue&& on_due, Drop&& drop) {
    // The common tick hands nothing out: a few compares here, the rest out of line (the loop's
    // tick stays small in the instruction cache).
    if (due_.empty() && !mostly_cancelled(far_, far_cancelled_)) {
      const std::uint64_t end_tick = to_tick(end_time);
      const std::uint64_t elapsed = wheel_.elapsed();
      if (end_tick <= elapsed) return;
      if (end_tick < min_tick_ && end_tick - elapsed < kMaxLagTicks) return;
    }
    collect_due_slow(end_time, on_due, drop);
  }

  // Seconds to wait from `now` until the earliest deadline (0: one is due; < 0: no timer).
  // Drops cancelled entries from the top of due_ and may settle the earliest wheel slot (see
  // "Waiting"); never hands out an entry. Called only before the loop blocks.
  template <class Drop>
  [[gnu::noinline]] double next_wait(double now, Drop&& drop) {
    drop_cancelled_top(due_, due_cancelled_, drop);
    if (!due_.empty()) return wait_until(due_.top().item->when, now);
    double far_wait = -1;
    drop_cancelled_top(far_, far_cancelled_, drop);
    if (!far_.empty()) far_wait = wait_until(far_.top().item->when, now);
    if (wheel_.empty()) return far_wait;
    double w = wheel_wait(now);
    return far_wait >= 0 && far_wait < w ? far_wait : w;
  }

  // Visits every held entry (cancelled ones in due_ and far_ included). f must not modify the
  // queue.
  template <class F>
  void for_each(F&& f) const {
    for (TimerEntry* e : registry_) {
      if (e != nullptr && e->where == kWheel) f(e);
    }
    for (std::size_t i = 0; i < due_.size(); ++i) f(due_.at(i).item);
    for (std::size_t i = 0; i < far_.size(); ++i) f(far_.at(i).item);
  }

  // Empties the queue, handing every entry to drop(e) once the queue is consistent.
  template <class Drop>
  void clear(Drop&& drop) {
    std::vector<TimerEntry*> all;
    all.reserve(size());
    for (TimerEntry* e : registry_) {
      if (e == nullptr) continue;
      e->index = TimerEntry::kNoIndex;
      if (e->where == kWheel) {
        wheel_.remove(&e->node);
        all.push_back(e);
      }
    }
    registry_.clear();
    min_tick_ = kNoTick;
    due_.clear([&](TimerEntry* e) { all.push_back(e); });
    far_.clear([&](TimerEntry* e) { all.push_back(e); });
    due_cancelled_ = far_cancelled_ = 0;
    for (TimerEntry* e : all) {
      e->where = kNone;
      drop(e);
    }
  }

 private:
  template <class OnDue, class Drop>
  [[gnu::noinline]] void collect_due_slow(double end_time, OnDue& on_due, Drop& drop) {
    compact_if_mostly_cancelled(drop);
    while (!due_.empty()) {
      TimerEntry* e = due_.top().item;
      if (e->cancelled) {
        due_.pop();
        --due_cancelled_;
        e->where = kNone;
        drop(e);
        continue;
      }
      if (e->when >= end_time) return;  // the rest of due_ and all of the wheel are later
      due_.pop();
      e->where = kNone;
      on_due(e);
    }
    const std::uint64_t end_tick = to_tick(end_time);
    if (end_tick <= wheel_.elapsed()) return;
    if (end_tick < min_tick_ && end_tick - wheel_.elapsed() < kMaxLagTicks) return;
    if (!far_.empty() && end_tick - wheel_.elapsed() >= kFarTicks) {
      // The clock moved by most of a wheel turn at once (the loop did not run for hours, or
      // the test clock jumped): far_ entries may be due too. All of it in one sorted batch.
      take_batch(wheel_.advance(end_tick));
      migrate_far(drop);
      deliver(end_time, on_due);
      min_tick_ = wheel_.next_expiration().value_or(kNoTick);
      return;
    }
    if (wheel_.empty()) {
      wheel_.fast_forward(end_tick);
    } else {
      // One slot at a time, so each handed-out list is walked while it is still in cache.
      for (;;) {
        const std::optional<std::uint64_t> next = wheel_.next_expiration();
        if (!next || *next > end_tick) {
          min_tick_ = next.value_or(kNoTick);
          break;
        }
        take_batch(wheel_.advance(*next));  // one tick's entries, or none (a cascade)
        deliver(end_time, on_due);
      }
      wheel_.advance(end_tick);  // moves the wheel's time; hands nothing out
    }
    if (!far_.empty()) {
      migrate_far(drop);  // into the wheel: none can be due here (they were kFarTicks away)
      if (!batch_.empty()) deliver(end_time, on_due);
    }
  }

  // The wait until the wheel's earliest entry; settles near slots (see "Waiting").
  double wheel_wait(double now) {
    const std::uint64_t now_tick = to_tick(now);
    for (;;) {
      const std::uint64_t slot = *wheel_.next_expiration();
      if (slot <= now_tick) return 0;  // collect_due will take it (or cascade it) right away
      if (slot - now_tick > kLookaheadTicks) {
        return static_cast<double>(slot) / kTicksPerSecond - now;  // early: settle it then
      }
      take_batch(wheel_.advance(slot));
      min_tick_ = wheel_.next_expiration().value_or(kNoTick);
      if (!batch_.empty()) {
        for (const BatchItem& b : batch_) push_due(b.e);
        batch_.clear();
        return wait_until(due_.top().item->when, now);
      }
      // The slot only cascaded (its entries moved to lower levels): look again.
    }
  }

  // due_ and far_ are heaps: the top leaves at once, any other entry is marked and dropped when
  // it reaches the top or by compaction.
  static bool cancel_in_heap(TimerHeap<TimerEntry>& heap, std::size_t& cancelled, TimerEntry* e) {
    if (e->cancelled) return false;
    if (heap.top().item == e) {
      heap.pop();
      e->where = kNone;
      return true;
    }
    e->cancelled = true;
    ++cancelled;
    return false;
  }

  [[gnu::noinline]] void insert_far(TimerEntry* e) {
    e->where = kFar;
    far_.push_with_seq(e->when, e->seq, e);
  }

  static bool mostly_cancelled(const TimerHeap<TimerEntry>& heap, std::size_t cancelled) {
    return cancelled >= 64 && cancelled * 2 > heap.size();
  }

  static TimerEntry* entry_of(tideloop::TimerWheelNode* n) {
    return reinterpret_cast<TimerEntry*>(reinterpret_cast<char*>(n) - offsetof(TimerEntry, node));
  }

  static double wait_until(double when, double now) {
    double dt = when - now;
    return dt > 0 ? dt : 0;  // NaN deadline: 0
  }

  static double sort_key(double when) {
    return std::isnan(when) ? -std::numeric_limits<double>::infinity() : when;
  }

  void push_due(TimerEntry* e) {
    e->where = kDue;
    due_.push_with_seq(sort_key(e->when), e->seq, e);
  }

  void register_entry(TimerEntry* e) {
    if (registry_.size() >= 2 * wheel_.size() + 64) compact_registry();
    e->index = static_cast<std::uint32_t>(registry_.size());
    registry_.push_back(e);
  }

  // Drops stale and cleared slots (more than half of them: amortized O(1) per insert).
  [[gnu::noinline]] void compact_registry() {
    std::size_t out = 0;
    for (TimerEntry* e : registry_) {
      if (e == nullptr) continue;
      if (e->where == kWheel) {
        e->index = static_cast<std::uint32_t>(out);
        registry_[out++] = e;
      } else {
        e->index = TimerEntry::kNoIndex;
      }
    }
    registry_.resize(out);
  }

  // Moves an advance() list into batch_ (appending), sorted by (when, seq). advance() to the
  // next expiration hands out the entries of exactly one tick, so batch_ is one small group;
  // the slow path of collect_due (one big advance) hands out whole ticks in increasing order,
  // all entries of a tick together, so sorting runs of equal ticks is enough there too. The
  // sort keys are copied out while each node is in cache (when and seq share its cache line).
  void take_batch(tideloop::TimerWheelNode* list) {
    const std::size_t first = batch_.size();
    for (tideloop::TimerWheelNode* n = list; n != nullptr;) {
      tideloop::TimerWheelNode* next = n->next;
      TimerEntry* e = entry_of(n);
      batch_.push_back(BatchItem{e->when, e->seq, n->when, e});  // registry slot goes stale
      n = next;
    }
    std::size_t i = first;
    const std::size_t n = batch_.size();
    while (i < n) {
      std::size_t j = i + 1;
      const std::uint64_t tick = batch_[i].tick;
      while (j < n && batch_[j].tick == tick) ++j;
      if (j - i > 1)
        sort_group(batch_.begin() + static_cast<std::ptrdiff_t>(i),
                   batch_.begin() + static_cast<std::ptrdiff_t>(j));
      i = j;
    }
  }

  struct BatchItem {
    double when;
    std::uint64_t seq;
    std::uint64_t tick;
    TimerEntry* e;
  };

  static bool batch_less(const BatchItem& a, const BatchItem& b) {
    return a.when < b.when || (a.when == b.when && a.seq < b.seq);
  }

  // A slot's list is newest first, so a group scheduled in deadline order comes out reversed:
  // that case (and the sorted one) costs a pass, anything else a sort.
  template <class It>
  static void sort_group(It first, It last) {
    if (std::is_sorted(first, last, batch_less)) return;
    std::reverse(first, last);
    if (std::is_sorted(first, last, batch_less)) return;
    std::sort(first, last, batch_less);
  }

  // Hands batch_ (sorted) over: due entries to on_due, the others (of the last tick only) to
  // due_, which is empty here, in order (no sifting).
  template <class OnDue>
  void deliver(double end_time, OnDue& on_due) {
    for (const BatchItem& b : batch_) {
      if (!(b.when >= end_time)) {
        b.e->where = kNone;
        on_due(b.e);
      } else {
        push_due(b.e);
      }
    }
    batch_.clear();
  }

  template <class Drop>
  static void drop_cancelled_top(TimerHeap<TimerEntry>& heap, std::size_t& cancelled, Drop& drop) {
    while (!heap.empty() && heap.top().item->cancelled) {
      TimerEntry* e = heap.pop();
      --cancelled;
      e->where = kNone;
      drop(e);
    }
  }

  // asyncio's heuristic for a lazily cancelled heap: rebuild it when more than half is cancelled.
  template <class Drop>
  static void compact_heap(TimerHeap<TimerEntry>& heap, std::size_t& cancelled, Drop& drop) {
    if (!mostly_cancelled(heap, cancelled)) return;
    std::vector<TimerEntry*> dropped;
    heap.compact([&](TimerEntry* e) {
      if (!e->cancelled) return false;
      dropped.push_back(e);
      return true;
    });
    cancelled = 0;
    for (TimerEntry* e : dropped) {
      e->where = kNone;
      drop(e);
    }
  }

  template <class Drop>
  void compact_if_mostly_cancelled(Drop& drop) {
    compact_heap(due_, due_cancelled_, drop);
    compact_heap(far_, far_cancelled_, drop);
  }

  // Moves far_ entries that came within kFarTicks of the wheel's time into the wheel. Only
  // collect_due moves the wheel's time far enough for one to be at or behind it (the loop did
  // not run for hours, or the test clock jumped): those join batch_, which is then re-sorted.
  template <class Drop>
  void migrate_far(Drop& drop) {
    bool appended = false;
    for (;;) {
      drop_cancelled_top(far_, far_cancelled_, drop);
      if (far_.empty()) break;
      TimerEntry* e = far_.top().item;
      const std::uint64_t tick = to_tick(e->when);
      if (tick > wheel_.elapsed() && tick - wheel_.elapsed() >= kFarTicks) break;
      far_.pop();
      if (wheel_.insert(&e->node, tick)) {
        e->where = kWheel;
        register_entry(e);
        if (tick < min_tick_) min_tick_ = tick;
      } else {
        e->where = kNone;
        batch_.push_back(BatchItem{e->when, e->seq, tick, e});
        appended = true;
      }
    }
    if (appended) std::sort(batch_.begin(), batch_.end(), batch_less);
  }

  // Hot and small first (empty() reads due_, far_ and the wheel's size on one cache line); the
  // wheel's 3 KiB of slots last.
  TimerHeap<TimerEntry> due_;
  TimerHeap<TimerEntry> far_;  // deadlines >= kFarTicks ahead of the wheel (hours away)
  tideloop::TimerWheel wheel_;
  // A lower bound of every wheel entry's tick: while the clock is before it, collect_due has
  // nothing to ask the wheel (whose next_expiration() scans up to 6 levels).
  std::uint64_t min_tick_ = kNoTick;
  std::vector<TimerEntry*> registry_;  // wheel entries, lazily maintained (see the header)
  std::vector<BatchItem> batch_;       // scratch of collect_due/next_wait, reused
  std::uint64_t next_seq_ = 0;
  std::size_t due_cancelled_ = 0;
  std::size_t far_cancelled_ = 0;
};

}  // namespace tideloop::bridge
