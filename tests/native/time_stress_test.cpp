// Timer stress (run under ThreadSanitizer too): many timers on many workers,
// cancelled from other threads while they fire. Invariants checked:
//  - every sleep that completes does so at or after its deadline, once;
//  - every task ends exactly once: completed or cancelled;
//  - a timeout race picks exactly one winner, consistent with the clock;
//  - shutdown with thousands of pending timers neither hangs nor leaks.
// Sized to finish in a few seconds under TSan on 2 cores.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <random>
#include <thread>
#include <vector>

#include "tideloop/runtime.hpp"
#include "tideloop/time.hpp"

namespace {

using namespace std::chrono_literals;
using tideloop::Clock;
using tideloop::JoinHandle;
using tideloop::Runtime;
using tideloop::Task;

#if defined(__SANITIZE_THREAD__)
constexpr int kScale = 8;
#else
constexpr int kScale = 16;
#endif

struct Counters {
  std::atomic<int> fired{0};
  std::atomic<int> early{0};
  std::atomic<int> finished{0};
};

Task<> sleeper(Counters* c, unsigned seed, int rounds) {
  std::minstd_rand rng(seed);
  for (int i = 0; i < rounds; ++i) {
    // Mix of sub-millisecond (near heap) and wheel deadlines, some zero.
    const auto d = std::chrono::microseconds(rng() % 4 == 0 ? rng() % 900 : rng() % 4000);
    const auto deadline = Clock::now() + d;
    co_await tideloop::sleep_until(deadline);
    if (Clock::now() < deadline) c->early.fetch_add(1);
    c->fired.fetch_add(1);
  }
  c->finished.fetch_add(1);
}

TEST(TimeStress, ManyTimersFireOnceAndNeverEarly) {
  auto rt = Runtime::Builder::multi_thread().worker_threads(4).build();
  Counters c;
  const int tasks = 500 * kScale, rounds = 8;
  rt.block_on([&]() -> Task<> {
    std::vector<JoinHandle<void>> hs;
    for (int i = 0; i < tasks; ++i) hs.push_back(tideloop::spawn(sleeper(&c, 1000u + i, rounds)));
    for (auto& h : hs) co_await h;
  });
  EXPECT_EQ(c.fired.load(), tasks * rounds);
  EXPECT_EQ(c.finished.load(), tasks);
  EXPECT_EQ(c.early.load(), 0);
}

TEST(TimeStress, CancelFromOtherThreadsWhileFiring) {
  auto rt = Runtime::Builder::multi_thread().worker_threads(3).build();
  Counters c;
  const int tasks = 1000 * kScale;
  std::vector<JoinHandle<void>> hs;
  hs.reserve(tasks);
  std::mt19937 rng(7);
  for (int i = 0; i < tasks; ++i) hs.push_back(rt.spawn(sleeper(&c, 5000u + i, 3)));
  // Two outside threads abort tasks at random moments, racing the driver
  // that fires their timers on a worker.
  std::atomic<int> next{0};
  auto aborter = [&](unsigned seed) {
    std::minstd_rand r(seed);
    for (;;) {
      const int i = next.fetch_add(2);
      if (i >= tasks) break;
      if (r() % 3 == 0) std::this_thread::sleep_for(std::chrono::microseconds(r() % 300));
      hs[static_cast<std::size_t>(i)].abort();
    }
  };
  std::thread a1(aborter, 1), a2(aborter, 2);
  a1.join();
  a2.join();
  int completed = 0, cancelled = 0;
  for (auto& h : hs) {
    try {
      h.join();
      ++completed;
    } catch (const tideloop::TaskCancelled&) {
      ++cancelled;
    }
  }
  EXPECT_EQ(completed + cancelled, tasks);
  EXPECT_EQ(completed, c.finished.load());
  EXPECT_EQ(c.early.load(), 0);
}

TEST(TimeStress, TimeoutRacesPickOneWinner) {
  auto rt = Runtime::Builder::multi_thread().worker_threads(4).build();
  std::atomic<int> inner_won{0}, timer_won{0}, inconsistent{0};
  const int tasks = 400 * kScale;
  rt.block_on([&]() -> Task<> {
    std::vector<JoinHandle<void>> hs;
    for (int i = 0; i < tasks; ++i) {
      hs.push_back(tideloop::spawn([&, i]() -> Task<> {
        // Both deadlines land in the same tick or the near heap: the two
        // timers fire in the same driver turn, one of them is cancelled by
        // the Timeout completing while the driver may still be firing it.
        const auto t0 = Clock::now();
        const auto d_inner = std::chrono::microseconds(500 + (i % 7) * 100);
        const auto d_outer = std::chrono::microseconds(500 + (i % 5) * 120);
        try {
          co_await tideloop::timeout(d_outer, tideloop::sleep(d_inner));
          if (Clock::now() - t0 < d_inner) inconsistent.fetch_add(1);
          inner_won.fetch_add(1);
        } catch (const tideloop::TimedOut&) {
          if (Clock::now() - t0 < d_outer) inconsistent.fetch_add(1);
          timer_won.fetch_add(1);
        }
      }));
    }
    for (auto& h : hs) co_await h;
  });
  EXPECT_EQ(inner_won.load() + timer_won.load(), tasks);
  EXPECT_EQ(inconsistent.load(), 0);
}

TEST(TimeStress, ChurnRegisterAndCancel) {
  // Register-and-drop from every worker while long timers sit in the wheel.
  auto rt = Runtime::Builder::multi_thread().worker_threads(4).build();
  std::atomic<int> pending_seen{0};
  rt.block_on([&]() -> Task<> {
    std::vector<JoinHandle<void>> hs;
    for (int w = 0; w < 8; ++w) {
      hs.push_back(tideloop::spawn([&, w]() -> Task<> {
        for (int i = 0; i < 2000 * kScale; ++i) {
          auto s = tideloop::sleep(std::chrono::milliseconds(1 + (i + w) % 3000));
          if (!s.poll_ready(tideloop::internal::tl_current_task)) pending_seen.fetch_add(1);
          if (i % 256 == 0) co_await tideloop::yield_now();
        }
      }));
    }
    for (auto& h : hs) co_await h;
  });
  EXPECT_EQ(pending_seen.load(), 8 * 2000 * kScale);
}

TEST(TimeStress, ShutdownWithThousandsOfPendingTimers) {
  for (int round = 0; round < 3; ++round) {
    const auto t0 = Clock::now();
    {
      auto rt = round == 2 ? Runtime::Builder::current_thread().build()
                           : Runtime::Builder::multi_thread().worker_threads(2 + round).build();
      std::vector<JoinHandle<void>> hs;
      for (int i = 0; i < 2000 * kScale; ++i)
        hs.push_back(rt.spawn([i]() -> Task<> {
          co_await tideloop::sleep(std::chrono::microseconds(i % 3 == 0 ? 100 : 1000 * i));
          co_await tideloop::sleep(1h);
        }));
      rt.block_on([]() -> Task<> { co_await tideloop::sleep(3ms); });
    }  // destructor: shutdown cancels everything
    EXPECT_LT(Clock::now() - t0, 10s);
  }
}

}  // namespace
