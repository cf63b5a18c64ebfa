// TimerWheel as a plain data structure: placement, cascading, removal,
// clamping beyond the span, and a randomized comparison with a sorted
// reference model.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "tideloop/time/timer_wheel.hpp"

namespace {

using tideloop::TimerWheel;
using tideloop::TimerWheelNode;

struct Timer : TimerWheelNode {
  int id = 0;
};

std::vector<int> drain(TimerWheelNode* n) {
  std::vector<int> ids;
  for (; n != nullptr; n = n->next) ids.push_back(static_cast<Timer*>(n)->id);
  return ids;
}

TEST(TimerWheel, EmptyHasNoExpiration) {
  TimerWheel w;
  EXPECT_TRUE(w.empty());
  EXPECT_FALSE(w.next_expiration().has_value());
  EXPECT_EQ(w.advance(1000), nullptr);
  EXPECT_EQ(w.elapsed(), 1000u);
}

TEST(TimerWheel, RejectsPastDeadlines) {
  TimerWheel w(10);
  Timer t;
  EXPECT_FALSE(w.insert(&t, 10));
  EXPECT_FALSE(w.insert(&t, 3));
  EXPECT_TRUE(w.empty());
}

TEST(TimerWheel, FiresAtTheTickNotBefore) {
  TimerWheel w;
  Timer a;
  a.id = 1;
  ASSERT_TRUE(w.insert(&a, 5));
  EXPECT_EQ(w.next_expiration(), 5u);
  EXPECT_EQ(w.advance(4), nullptr);
  EXPECT_EQ(drain(w.advance(5)), std::vector<int>{1});
  EXPECT_TRUE(w.empty());
}

TEST(TimerWheel, CascadesFromHigherLevels) {
  // Deadlines in every level; each must come out exactly at its tick.
  const std::uint64_t whens[] = {1,
                                 63,
                                 64,
                                 65,
                                 4095,
                                 4096,
                                 262'143,
                                 262'144,
                                 16'777'216,
                                 1'073'741'824,
                                 (std::uint64_t{1} << 35) + 17};
  TimerWheel w;
  std::vector<Timer> ts(std::size(whens));
  for (std::size_t i = 0; i < ts.size(); ++i) {
    ts[i].id = static_cast<int>(i);
    ASSERT_TRUE(w.insert(&ts[i], whens[i]));
  }
  for (std::size_t i = 0; i < ts.size(); ++i) {
    // Nothing fires one tick early...
    std::vector<int> early = drain(w.advance(whens[i] - 1));
    EXPECT_TRUE(early.empty()) << "timer " << i << " fired early";
    // ...and exactly this one fires at its tick.
    EXPECT_EQ(drain(w.advance(whens[i])), std::vector<int>{static_cast<int>(i)});
  }
  EXPECT_TRUE(w.empty());
}

TEST(TimerWheel, NextExpirationIsALowerBound) {
  TimerWheel w(100);
  Timer t;
  ASSERT_TRUE(w.insert(&t, 100 + 5000));
  auto e = w.next_expiration();
  ASSERT_TRUE(e.has_value());
  EXPECT_LE(*e, 5100u);
  EXPECT_GT(*e, 100u);
}

TEST(TimerWheel, RemoveIsImmediate) {
  TimerWheel w;
  Timer a, b, c;
  a.id = 1;
  b.id = 2;
  c.id = 3;
  w.insert(&a, 10);
  w.insert(&b, 10);
  w.insert(&c, 10);
  w.remove(&b);
  EXPECT_EQ(w.size(), 2u);
  auto got = drain(w.advance(10));
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<int>{1, 3}));
}

TEST(TimerWheel, ClampsBeyondTheSpan) {
  TimerWheel w;
  Timer far;
  far.id = 7;
  const std::uint64_t when = TimerWheel::kMaxDuration * 3 + 12345;
  ASSERT_TRUE(w.insert(&far, when));
  EXPECT_TRUE(drain(w.advance(when - 1)).empty());
  EXPECT_EQ(drain(w.advance(when)), std::vector<int>{7});
}

TEST(TimerWheel, FastForwardOnlyWhenEmpty) {
  TimerWheel w;
  w.fast_forward(50);
  EXPECT_EQ(w.elapsed(), 50u);
  Timer t;
  w.insert(&t, 60);
  w.fast_forward(100);
  EXPECT_EQ(w.elapsed(), 50u);
}

// Random inserts, removals and advances against a multimap of deadlines.
TEST(TimerWheel, MatchesReferenceModel) {
  std::mt19937_64 rng(12345);
  TimerWheel w;
  std::vector<Timer> pool(4000);
  for (std::size_t i = 0; i < pool.size(); ++i) pool[i].id = static_cast<int>(i);
  std::map<int, std::uint64_t> live;  // id -> when
  std::vector<int> free_ids;
  for (std::size_t i = 0; i < pool.size(); ++i) free_ids.push_back(static_cast<int>(i));
  std::uint64_t now = 0;
  const std::uint64_t spans[] = {64, 4096, 300'000, 20'000'000};
  for (int step = 0; step < 60'000; ++step) {
    const int op = static_cast<int>(rng() % 10);
    if (op < 5 && !free_ids.empty()) {
      const int id = free_ids.back();
      free_ids.pop_back();
      const std::uint64_t when = now + 1 + rng() % spans[rng() % 4];
      ASSERT_TRUE(w.insert(&pool[id], when));
      live[id] = when;
    } else if (op < 7 && !live.empty()) {
      auto it = live.begin();
      std::advance(it, static_cast<long>(rng() % live.size()));
      w.remove(&pool[it->first]);
      free_ids.push_back(it->first);
      live.erase(it);
    } else {
      const std::uint64_t to = now + rng() % 5000;
      std::set<int> got;
      for (int id : drain(w.advance(to))) got.insert(id);
      std::set<int> want;
      for (auto& [id, when] : live)
        if (when <= to) want.insert(id);
      ASSERT_EQ(got, want) << "advance to " << to;
      for (int id : got) {
        live.erase(id);
        free_ids.push_back(id);
      }
      now = to;
      if (auto e = w.next_expiration()) {
        std::uint64_t min_when = ~std::uint64_t{0};
        for (auto& [id, when] : live) min_when = std::min(min_when, when);
        EXPECT_LE(*e, min_when);
        EXPECT_GT(*e, now);
      }
    }
    ASSERT_EQ(w.size(), live.size());
  }
}

}  // namespace
