// TimerWheel with deadlines at and beyond its span (64^6 ticks): such an
// entry lives in the top level, and when it sits in the top-level slot the
// wheel's time is in, it must not hide nearer entries in other top-level
// slots (it did: next_expiration() reported that slot one full turn ahead,
// and advance() jumped there, firing every nearer top-level entry late).
// Plus a randomized comparison with a reference model that mixes far, next-
// turn, near and past deadlines, cancels, and advances of every size.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <vector>

#include "test_support.hpp"
#include "tideloop/time/timer_wheel.hpp"

namespace {

using tideloop::TimerWheel;
using tideloop::TimerWheelNode;

constexpr std::uint64_t kSpan = TimerWheel::kMaxDuration;   // 2^36
constexpr std::uint64_t kTop = kSpan / TimerWheel::kSlots;  // top-level slot width, 2^30

struct Timer : TimerWheelNode {
  int id = 0;
};

struct Fired {
  int id;
  std::uint64_t when;
};

std::vector<Fired> drain(TimerWheelNode* n) {
  std::vector<Fired> out;
  for (; n != nullptr; n = n->next) out.push_back({static_cast<Timer*>(n)->id, n->when});
  return out;
}

// Drives the wheel the way the time driver does (sleep until
// next_expiration(), then advance to it) and records the tick each entry
// fired at. Every entry must fire exactly once, exactly at its deadline, in
// deadline order, and the number of wake-ups must stay small.
void drive_to_empty(TimerWheel& w, std::vector<Timer>& ts, std::uint64_t max_wakeups) {
  std::vector<int> fired(ts.size(), 0);
  std::uint64_t last = 0;
  std::uint64_t wakeups = 0;
  while (auto e = w.next_expiration()) {
    ASSERT_GT(*e, w.elapsed());
    for (const Timer& t : ts) {
      if (t.linked) ASSERT_LE(*e, t.when) << "next_expiration later than timer " << t.id;
    }
    ASSERT_LT(++wakeups, max_wakeups) << "too many wake-ups";
    for (const Fired& f : drain(w.advance(*e))) {
      EXPECT_EQ(f.when, *e) << "timer " << f.id << " fired off its deadline";
      EXPECT_GE(f.when, last) << "timer " << f.id << " out of deadline order";
      last = f.when;
      ++fired[static_cast<std::size_t>(f.id)];
    }
  }
  EXPECT_TRUE(w.empty());
  for (std::size_t i = 0; i < ts.size(); ++i) EXPECT_EQ(fired[i], 1) << "timer " << i;
}

// The reported bug, minimal: at elapsed 0 the current top-level slot is 0;
// a deadline 3 spans ahead (top digit 0) lands there and used to hide the
// timers in top-level slots 1 and 5.
TEST(TimerWheelFar, FarEntryInCurrentTopSlotDoesNotHideNearerSlots) {
  TimerWheel w;
  Timer far, a, b;
  far.id = 0;
  a.id = 1;
  b.id = 2;
  ASSERT_TRUE(w.insert(&far, 3 * kSpan + 5));
  ASSERT_TRUE(w.insert(&a, 1 * kTop + 7));
  ASSERT_TRUE(w.insert(&b, 5 * kTop + 9));
  auto e = w.next_expiration();
  ASSERT_TRUE(e.has_value());
  EXPECT_LE(*e, 1 * kTop + 7);
  EXPECT_TRUE(drain(w.advance(kTop + 6)).empty());
  auto got = drain(w.advance(kTop + 7));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].id, 1);
  EXPECT_TRUE(drain(w.advance(5 * kTop + 8)).empty());
  got = drain(w.advance(5 * kTop + 9));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].id, 2);
  EXPECT_TRUE(drain(w.advance(3 * kSpan + 4)).empty());
  got = drain(w.advance(3 * kSpan + 5));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].id, 0);
  EXPECT_TRUE(w.empty());
}

// The same through one big advance: everything due comes out, in order.
TEST(TimerWheelFar, OneBigAdvanceFiresEverythingInOrder) {
  TimerWheel w(kTop * 7 + 12345);  // mid top-level slot 7
  std::vector<Timer> ts(5);
  const std::uint64_t base = w.elapsed();
  const std::uint64_t whens[] = {base + 2 * kSpan, base + kTop, base + 3, base + 40 * kTop,
                                 base + kSpan - 1};
  for (std::size_t i = 0; i < ts.size(); ++i) {
    ts[i].id = static_cast<int>(i);
    ASSERT_TRUE(w.insert(&ts[i], whens[i]));
  }
  auto got = drain(w.advance(base + kSpan));
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0].id, 2);
  EXPECT_EQ(got[1].id, 1);
  EXPECT_EQ(got[2].id, 3);
  EXPECT_EQ(got[3].id, 4);
  EXPECT_EQ(w.size(), 1u);
  got = drain(w.advance(base + 2 * kSpan));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].id, 0);
}

// Less than one span ahead, but in the next turn of the top level with the
// same top digit as the current time: also in the current top-level slot.
TEST(TimerWheelFar, NextTurnEntryInCurrentTopSlot) {
  const std::uint64_t start = 5 * kTop + 100;
  TimerWheel w(start);
  std::vector<Timer> ts(4);
  const std::uint64_t whens[] = {kSpan + 5 * kTop + 50,  // span - 50 ahead, top digit 5
                                 6 * kTop + 1, 63 * kTop + 2, kSpan + 4 * kTop};
  for (std::size_t i = 0; i < ts.size(); ++i) {
    ts[i].id = static_cast<int>(i);
    ASSERT_TRUE(w.insert(&ts[i], whens[i]));
  }
  EXPECT_LE(*w.next_expiration(), 6 * kTop + 1);
  drive_to_empty(w, ts, 100);
}

// Deadlines in every level around a mix of far ones (several spans ahead,
// just below and above one span), from a start time in the middle of the
// top level; the far ones fall into the current top-level slot and others.
TEST(TimerWheelFar, DeadlineOrderAcrossLevelsWithFarEntries) {
  const std::uint64_t start = 33 * kTop + 777'777;
  TimerWheel w(start);
  std::vector<std::uint64_t> whens = {start + 1,
                                      start + 64,
                                      start + 5000,
                                      start + 300'000,
                                      start + 20'000'000,
                                      start + kTop,
                                      start + 2 * kTop + 3,
                                      start + 31 * kTop,
                                      start + 40 * kTop,
                                      start + kSpan - kTop,
                                      start + kSpan - 1,
                                      start + kSpan,
                                      start + kSpan + 1,
                                      start + 2 * kSpan,
                                      start + 10 * kSpan + 12'345,
                                      (start & ~(kSpan - 1)) + 3 * kSpan + 33 * kTop + 1,
                                      std::uint64_t{1} << 44};
  std::vector<Timer> ts(whens.size());
  for (std::size_t i = 0; i < ts.size(); ++i) {
    ts[i].id = static_cast<int>(i);
    ASSERT_TRUE(w.insert(&ts[i], whens[i]));
  }
  // Entries spanning 256 turns (2^44 ticks): a far entry costs at most a
  // wake-up or two per turn, the others at most one per level.
  drive_to_empty(w, ts, 2 * 256 + 6 * ts.size() + 10);
}

// A far entry cancelled after it was re-placed (cascaded) is really gone,
// and the nearer entries around it are unaffected.
TEST(TimerWheelFar, CancelAfterCascade) {
  TimerWheel w;
  Timer far, near;
  far.id = 0;
  near.id = 1;
  ASSERT_TRUE(w.insert(&far, 5 * kSpan));
  // Walk through a turn and a half of cascade points.
  for (int i = 0; i < 3; ++i) {
    auto e = w.next_expiration();
    ASSERT_TRUE(e.has_value());
    EXPECT_TRUE(drain(w.advance(*e)).empty());
    EXPECT_TRUE(far.linked);
  }
  ASSERT_TRUE(w.insert(&near, w.elapsed() + kTop + 1));
  w.remove(&far);
  EXPECT_FALSE(far.linked);
  EXPECT_EQ(w.size(), 1u);
  ASSERT_TRUE(w.next_expiration().has_value());
  EXPECT_LE(*w.next_expiration(), near.when);
  EXPECT_GT(*w.next_expiration(), w.elapsed());
  auto got = drain(w.advance(near.when));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].id, 1);
  EXPECT_TRUE(w.empty());
  EXPECT_FALSE(w.next_expiration().has_value());
}

// The time driver's shutdown advances to 2^63 - 1; its deadlines reach
// about 2^43 ticks (int64 nanoseconds in 1 ms ticks). A far entry is
// re-placed once per turn on the way (a cost of turns, not of ticks).
TEST(TimerWheelFar, HugeDeadlinesAndShutdownAdvance) {
  TimerWheel w(1000);
  Timer a, b;
  a.id = 0;
  b.id = 1;
  ASSERT_TRUE(w.insert(&a, std::uint64_t{1} << 44));
  ASSERT_TRUE(w.insert(&b, 2000));
  auto e = w.next_expiration();
  ASSERT_TRUE(e.has_value());
  EXPECT_LE(*e, 2000u);
  auto got = drain(w.advance(~std::uint64_t{0} >> 1));
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].id, 1);
  EXPECT_EQ(got[1].id, 0);
}

// Random inserts (past, near, every level, next turn, far), cancels and
// advances (one tick, to next_expiration(), to the earliest deadline, random
// sizes up to several spans) against a multimap. Checks, after every step:
// exactly the due entries fire, once, in deadline order; nothing is lost;
// next_expiration() is in (elapsed, earliest pending deadline].
TEST(TimerWheelFar, MatchesReferenceModelWithFarDeadlines) {
  const long kSteps = tltest::scaled(300'000, 60'000, 30'000);
  for (std::uint64_t seed : {1u, 2u, 3u}) {
    SCOPED_TRACE(seed);
    std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull);
    // Out of 32 operations: inserts, then 4 cancels, the rest advances; the
    // seeds go from a sparse wheel to a fairly full one.
    const int inserts = 12 + 5 * static_cast<int>(seed);
    const std::uint64_t start = rng() % (std::uint64_t{1} << 40);
    TimerWheel w(start);
    std::vector<Timer> pool(512);
    std::multimap<std::uint64_t, int> model;  // when -> id
    std::vector<std::multimap<std::uint64_t, int>::iterator> where(pool.size());
    std::vector<int> live_ids, free_ids;
    std::vector<std::size_t> pos(pool.size());  // index into live_ids
    for (std::size_t i = 0; i < pool.size(); ++i) {
      pool[i].id = static_cast<int>(i);
      free_ids.push_back(static_cast<int>(i));
    }
    auto delay = [&]() -> std::uint64_t {
      switch (rng() % 12) {
        case 0:
          return 0;  // the current tick: rejected
        case 1:
          return 1 + rng() % 64;
        case 2:
          return 1 + rng() % 4096;
        case 3:
          return 1 + rng() % (std::uint64_t{1} << 24);
        case 4:
          return 1 + rng() % kTop;
        case 5:
        case 6:
          return 1 + rng() % kSpan;  // anywhere in the span
        case 7:
          return kSpan - 1 - rng() % (2 * kTop);  // just below one span
        case 8:
          return kSpan + rng() % (2 * kTop);  // just beyond one span
        case 9:
          return kSpan * (1 + rng() % 8) + rng() % kSpan;  // far
        case 10:
          return (kSpan << (rng() % 8)) - rng() % 3;  // far, round numbers
        default:
          return 1 + rng() % 200;
      }
    };
    for (long step = 0; step < kSteps; ++step) {
      const int op = static_cast<int>(rng() % 32);
      const std::uint64_t now = w.elapsed();
      if (op < inserts && !free_ids.empty()) {
        const int id = free_ids.back();
        std::uint64_t when;
        if (rng() % 16 == 0) {
          when = now - rng() % std::min<std::uint64_t>(now + 1, 1000);  // in the past
        } else {
          when = now + delay();
        }
        const bool ok = w.insert(&pool[id], when);
        ASSERT_EQ(ok, when > now) << "insert at " << when << ", elapsed " << now;
        if (!ok) continue;
        free_ids.pop_back();
        where[id] = model.emplace(when, id);
        pos[id] = live_ids.size();
        live_ids.push_back(id);
      } else if (op < inserts + 4 && !live_ids.empty()) {
        const int id = live_ids[rng() % live_ids.size()];
        ASSERT_TRUE(pool[id].linked);
        w.remove(&pool[id]);
        ASSERT_FALSE(pool[id].linked);
        model.erase(where[id]);
        const int moved = live_ids.back();
        live_ids[pos[id]] = moved;
        pos[moved] = pos[id];
        live_ids.pop_back();
        free_ids.push_back(id);
      } else {
        std::uint64_t to = now;
        switch (rng() % 16) {
          case 0:
          case 1:
          case 2:
            to = now + 1;
            break;
          case 3:
          case 4:
          case 5:
            if (auto e = w.next_expiration()) to = *e;
            break;
          case 6:
          case 7:
            if (!model.empty()) to = model.begin()->first;
            break;
          case 8:
          case 9:
          case 10:
          case 11:
            to = now + rng() % (std::uint64_t{1} << (rng() % 26));
            break;
          case 12:
            if (rng() % 4 == 0) {
              to = now + rng() % (3 * kSpan);  // up to several turns
            } else {
              to = now + rng() % (kSpan >> (rng() % 12));
            }
            break;
          default:
            to = now + rng() % 100'000;
            break;
        }
        const std::vector<Fired> got = drain(w.advance(to));
        std::vector<Fired> want;
        for (auto it = model.begin(); it != model.end() && it->first <= to;) {
          want.push_back({it->second, it->first});
          const int id = it->second;
          it = model.erase(it);
          const int moved = live_ids.back();
          live_ids[pos[id]] = moved;
          pos[moved] = pos[id];
          live_ids.pop_back();
          free_ids.push_back(id);
        }
        ASSERT_EQ(got.size(), want.size()) << "advance " << now << " -> " << to;
        // Deadline order; ties in any order.
        std::vector<int> got_ids, want_ids;
        for (std::size_t i = 0; i < got.size(); ++i) {
          if (i > 0) ASSERT_LE(got[i - 1].when, got[i].when) << "fired out of deadline order";
          ASSERT_EQ(got[i].when, want[i].when) << "wrong entry fired";
          ASSERT_FALSE(pool[got[i].id].linked);
          got_ids.push_back(got[i].id);
          want_ids.push_back(want[i].id);
        }
        std::sort(got_ids.begin(), got_ids.end());
        std::sort(want_ids.begin(), want_ids.end());
        ASSERT_EQ(got_ids, want_ids);
        ASSERT_EQ(w.elapsed(), std::max(now, to));
      }
      ASSERT_EQ(w.size(), model.size());
      const std::optional<std::uint64_t> e = w.next_expiration();
      ASSERT_EQ(e.has_value(), !model.empty());
      if (e) {
        ASSERT_GT(*e, w.elapsed());
        ASSERT_LE(*e, model.begin()->first)
            << "next_expiration later than the earliest deadline (elapsed " << w.elapsed() << ")";
      }
    }
    // Nothing lost: everything left fires by the end of time.
    const std::vector<Fired> rest = drain(w.advance(~std::uint64_t{0} >> 1));
    ASSERT_EQ(rest.size(), model.size());
    EXPECT_TRUE(w.empty());
  }
}

}  // namespace
