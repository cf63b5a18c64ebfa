// TimerWheel: a hierarchical timing wheel, the data structure behind every
// tideloop timer (and reusable by anything else that needs many timers with
// O(1) insert and cancel, e.g. the Python loop's call_later).
//
// Why hand-written: no library we can use offers one. Asio's timer queue is a
// binary heap (O(log n) insert and cancel, and it owns the callbacks), Abseil
// and oneTBB have no timers at all, and Tokio's wheel is Rust. The algorithm
// here is Tokio's (tokio/src/runtime/time/wheel/): 6 levels of 64 slots, level
// i slot width 64^i ticks, so the wheel spans 64^6 ticks (about 2.2 years at
// 1 ms per tick; 72.8 h at the Python bridge's 2^-18 s).
//
//  - insert: the level is the highest 6-bit digit in which the deadline and
//    the current time differ; the slot is that digit of the deadline. O(1).
//  - remove: unlink from the slot's intrusive list. O(1).
//  - next_expiration: per level a 64-bit occupancy mask; the first level with
//    an occupied slot holds the earliest entries. O(levels).
//  - advance: take the earliest slot, fire what is due, re-place (cascade)
//    the rest one or more levels down. Each entry cascades at most 5 times
//    (plus once per turn of the top level while it is beyond the span).
//
// Far deadlines. The top level is a ring: its slots behind the current one
// belong to the next turn, and so does the current slot itself (an entry of
// this turn in the current top-level slot would be in a lower level). An
// entry a span or more ahead is placed as if its deadline were
// elapsed + span - 1, i.e. in the top-level slot a turn ahead (usually the
// current slot, next turn); when that slot comes up, it cascades and is
// placed again relative to the new time, until it is within the span and
// lands in its real slot. So every entry's slot starts in (elapsed,
// elapsed + span] and at or before its deadline: next_expiration() scans
// the top level from the slot after the current one round to the current
// one, and reports a far entry's slot start, an early bound (a wake-up that
// only cascades, about once per span) but never a late one, and it never
// hides a nearer slot. Entries come out of advance() exactly at their
// deadline tick, in deadline order, however far they were inserted.
//
// The wheel knows nothing about clocks or threads: ticks are plain integers
// chosen by the caller, and the caller provides any locking. Not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

namespace tideloop {

// An intrusive wheel entry: embed (or derive from) it in the timer object.
// All fields belong to the wheel while the node is inserted.
struct TimerWheelNode {
  TimerWheelNode* prev = nullptr;
  TimerWheelNode* next = nullptr;
  std::uint64_t when = 0;  // deadline tick
  std::uint8_t level = 0;
  std::uint8_t slot = 0;
  bool linked = false;
};

class TimerWheel {
 public:
  static constexpr int kLevels = 6;
  static constexpr int kSlotBits = 6;
  static constexpr int kSlots = 1 << kSlotBits;  // 64
  // Span of the wheel in ticks (64^6); deadlines further out are re-placed
  // once per turn until they are within it (see "Far deadlines").
  static constexpr std::uint64_t kMaxDuration = std::uint64_t{1} << (kLevels * kSlotBits);

  explicit TimerWheel(std::uint64_t elapsed = 0) noexcept : elapsed_(elapsed) {}
  TimerWheel(const TimerWheel&) = delete;
  TimerWheel& operator=(const TimerWheel&) = delete;

  // The tick up to which every due entry has been handed out by advance().
  std::uint64_t elapsed() const noexcept { return elapsed_; }
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }

  // Inserts `n` to expire at tick `when`. Returns false (and does not insert)
  // when `when <= elapsed()`: the deadline has already passed. O(1).
  bool insert(TimerWheelNode* n, std::uint64_t when) noexcept {
    if (when <= elapsed_) return false;
    n->when = when;
    link(n);
    n->linked = true;
    ++size_;
    return true;
  }

  // Unlinks an inserted node. O(1).
  void remove(TimerWheelNode* n) noexcept {
    Level& lv = levels_[n->level];
    Slot& s = lv.slots[n->slot];
    if (n->prev) {
      n->prev->next = n->next;
    } else {
      s.head = n->next;
    }
    if (n->next) n->next->prev = n->prev;
    if (s.head == nullptr) lv.occupied &= ~(std::uint64_t{1} << n->slot);
    n->prev = n->next = nullptr;
    n->linked = false;
    --size_;
  }

  // The earliest tick at which advance() can hand out an entry (or has to
  // cascade one), nullopt when empty. In [elapsed() + 1, earliest deadline]
  // for a non-empty wheel. O(levels).
  std::optional<std::uint64_t> next_expiration() const noexcept;

  // Moves time forward to `now` and returns every entry whose deadline is
  // <= now as a singly linked list through `next` in deadline order (ties in
  // no particular order), already unlinked from the wheel. Does nothing when
  // now <= elapsed(). Costs O(slots visited): about one per far entry per
  // turn of the top level crossed, so advancing by many spans at once with
  // far entries pending is proportionally slower.
  TimerWheelNode* advance(std::uint64_t now) noexcept;

  // Moves elapsed() forward to `now` without looking at entries. Only valid
  // while the wheel is empty (a wheel that sat idle catches up in O(1)).
  void fast_forward(std::uint64_t now) noexcept {
    if (size_ == 0 && now > elapsed_) elapsed_ = now;
  }

 private:
  struct Slot {
    TimerWheelNode* head = nullptr;
  };
  struct Level {
    std::uint64_t occupied = 0;  // bit s set: slots[s] non-empty
    Slot slots[kSlots];
  };
  struct Expiration {
    int level;
    int slot;
    std::uint64_t deadline;
  };

  // The highest 6-bit digit in which `when` differs from `elapsed`; the low
  // digit is masked in so that a same-block deadline lands in level 0.
  static int level_for(std::uint64_t elapsed, std::uint64_t when) noexcept {
    std::uint64_t masked = (elapsed ^ when) | (kSlots - 1);
    if (masked >= kMaxDuration) masked = kMaxDuration - 1;
    const int significant = 63 - __builtin_clzll(masked);
    return significant / kSlotBits;
  }
  // Requires n->when > elapsed_. A deadline a span or more ahead is placed by
  // the clamped key (see "Far deadlines"); n->when keeps the real one.
  void link(TimerWheelNode* n) noexcept {
    std::uint64_t key = n->when;
    if (key - elapsed_ >= kMaxDuration) key = elapsed_ + (kMaxDuration - 1);
    const int level = level_for(elapsed_, key);
    const int slot = static_cast<int>((key >> (level * kSlotBits)) & (kSlots - 1));
    n->level = static_cast<std::uint8_t>(level);
    n->slot = static_cast<std::uint8_t>(slot);
    Slot& s = levels_[level].slots[slot];
    n->prev = nullptr;
    n->next = s.head;
    if (s.head) s.head->prev = n;
    s.head = n;
    levels_[level].occupied |= std::uint64_t{1} << slot;
  }
  std::optional<Expiration> next_expiration_detail() const noexcept;

  std::uint64_t elapsed_;
  std::size_t size_ = 0;
  Level levels_[kLevels];
};

}  // namespace tideloop
