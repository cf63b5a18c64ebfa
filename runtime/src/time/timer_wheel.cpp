// TimerWheel: see tideloop/time/timer_wheel.hpp for the algorithm.
#include "tideloop/time/timer_wheel.hpp"

#include <cassert>

namespace tideloop {

namespace {
constexpr std::uint64_t kSlotMask = TimerWheel::kSlots - 1;

constexpr std::uint64_t slot_range(int level) {
  return std::uint64_t{1} << (level * TimerWheel::kSlotBits);
}
constexpr std::uint64_t level_range(int level) {
  return std::uint64_t{1} << ((level + 1) * TimerWheel::kSlotBits);
}
inline std::uint64_t rotr(std::uint64_t x, unsigned r) {
  r &= 63;
  return r == 0 ? x : (x >> r) | (x << (64 - r));
}
}  // namespace

std::optional<TimerWheel::Expiration> TimerWheel::next_expiration_detail() const noexcept {
  if (size_ == 0) return std::nullopt;
  // Lower levels always expire first: an entry sits in level L only if its
  // deadline is beyond the current level-(L-1) block.
  for (int level = 0; level < kLevels; ++level) {
    const std::uint64_t occ = levels_[level].occupied;
    if (occ == 0) continue;
    // Scan the slots in time order starting just after the current one; the
    // current slot comes last, a full turn ahead. Below the top level it is
    // never occupied (an entry there would already have been handed out or
    // cascaded). In the top level it holds only entries of a later turn (see
    // "Far deadlines" in the header); scanning it first (as this code once
    // did) reported it a turn ahead and hid every nearer top-level slot,
    // whose entries then fired up to a turn late.
    const unsigned after_now =
        static_cast<unsigned>((elapsed_ / slot_range(level)) + 1) & kSlotMask;
    const int zeros = __builtin_ctzll(rotr(occ, after_now));
    const int slot = static_cast<int>((static_cast<unsigned>(zeros) + after_now) & kSlotMask);
    const std::uint64_t level_start = elapsed_ & ~(level_range(level) - 1);
    std::uint64_t deadline = level_start + static_cast<std::uint64_t>(slot) * slot_range(level);
    // A slot at or behind the current time is in the next turn (top level
    // only).
    if (deadline <= elapsed_) {
      assert(level == kLevels - 1);
      deadline += level_range(level);
    }
    return Expiration{level, slot, deadline};
  }
  return std::nullopt;
}

std::optional<std::uint64_t> TimerWheel::next_expiration() const noexcept {
  auto e = next_expiration_detail();
  if (!e) return std::nullopt;
  return e->deadline;
}

TimerWheelNode* TimerWheel::advance(std::uint64_t now) noexcept {
  TimerWheelNode* head = nullptr;
  TimerWheelNode** tail = &head;
  for (;;) {
    auto exp = next_expiration_detail();
    if (!exp || exp->deadline > now) break;
    Level& lv = levels_[exp->level];
    TimerWheelNode* list = lv.slots[exp->slot].head;
    lv.slots[exp->slot].head = nullptr;
    lv.occupied &= ~(std::uint64_t{1} << exp->slot);
    elapsed_ = exp->deadline;
    while (list != nullptr) {
      TimerWheelNode* n = list;
      list = n->next;
      if (n->when <= elapsed_) {
        n->prev = nullptr;
        n->next = nullptr;
        n->linked = false;
        --size_;
        *tail = n;
        tail = &n->next;
      } else {
        link(n);  // cascade: re-placed relative to the new elapsed_
      }
    }
  }
  if (now > elapsed_) elapsed_ = now;
  return head;
}

}  // namespace tideloop
