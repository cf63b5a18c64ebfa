// Async Mutex: exclusion across co_await, FIFO hand-over, cancellation, on
// the current-thread and the multi-thread runtime.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "test_support.hpp"
#include "tideloop/runtime.hpp"
#include "tideloop/sync/mutex.hpp"
#include "tideloop/sync/oneshot.hpp"

namespace tideloop {
namespace {

using tltest::ProbeTask;

using tltest::make_runtime;

class MutexTest : public ::testing::TestWithParam<bool> {
 protected:
  Runtime rt_ = make_runtime(GetParam());
};

TEST_P(MutexTest, ExclusiveAcrossAwait) {
  const int tasks = 8, iters = 50;
  int total = rt_.block_on([&]() -> Task<int> {
    Mutex<int> m(0);
    std::atomic<int> inside{0};
    std::vector<JoinHandle<void>> hs;
    for (int t = 0; t < tasks; ++t) {
      hs.push_back(spawn([&]() -> Task<void> {
        for (int i = 0; i < iters; ++i) {
          auto g = co_await m.lock();
          EXPECT_EQ(inside.fetch_add(1), 0);
          const int v = *g;
          co_await yield_now();  // held across a suspension
          *g = v + 1;
          inside.fetch_sub(1);
        }
      }));
    }
    for (auto& h : hs) co_await h;
    EXPECT_FALSE(m.is_locked());
    co_return m.get_mut();
  });
  EXPECT_EQ(total, tasks * iters);
}

TEST_P(MutexTest, TryLock) {
  Mutex<int> m(5);
  {
    auto g = m.try_lock();
    ASSERT_TRUE(g.has_value());
    EXPECT_EQ(**g, 5);
    EXPECT_TRUE(m.is_locked());
    EXPECT_FALSE(m.try_lock().has_value());
  }
  EXPECT_FALSE(m.is_locked());
  auto g = m.try_lock();
  ASSERT_TRUE(g.has_value());
  g->unlock();
  EXPECT_FALSE(m.is_locked());
}

TEST_P(MutexTest, BlockingLockFromThreadWithTasks) {
  Mutex<long> m(0);
  const int n = 300;
  std::thread t([&] {
    for (int i = 0; i < n; ++i) {
      auto g = m.blocking_lock();
      ++*g;
    }
  });
  rt_.block_on([&]() -> Task<void> {
    for (int i = 0; i < n; ++i) {
      auto g = co_await m.lock();
      ++*g;
      if (i % 16 == 0) co_await yield_now();
    }
  });
  t.join();
  EXPECT_EQ(m.get_mut(), 2 * n);
}

TEST_P(MutexTest, BlockingLockInsideTaskIsLogicError) {
  rt_.block_on([]() -> Task<void> {
    AsyncMutex m;
    EXPECT_THROW((void)m.blocking_lock(), std::logic_error);
    co_return;
  });
}

TEST_P(MutexTest, AbortWaitingTask) {
  rt_.block_on([]() -> Task<void> {
    AsyncMutex m;
    auto held = co_await m.lock();
    auto [started_tx, started_rx] = oneshot::channel<void>();
    auto h = spawn([&m, started_tx = std::move(started_tx)]() mutable -> Task<void> {
      started_tx.send();
      auto g = co_await m.lock();
    });
    co_await started_rx;
    for (int i = 0; i < 3; ++i) co_await yield_now();
    h.abort();
    EXPECT_THROW(co_await h, TaskCancelled);
    held.unlock();
    EXPECT_FALSE(m.is_locked());  // the cancelled waiter did not keep it
    auto again = m.try_lock();
    EXPECT_TRUE(again.has_value());
  });
}

TEST(MutexProbe, FifoHandOverWithoutBarging) {
  AsyncMutex m;
  ProbeTask p1, p2;
  auto g0 = m.try_lock();
  ASSERT_TRUE(g0.has_value());
  auto a1 = m.lock();
  auto a2 = m.lock();
  EXPECT_FALSE(a1.poll_ready(&p1));
  EXPECT_FALSE(a2.poll_ready(&p2));
  EXPECT_FALSE(a1.poll_ready(&p1));
  EXPECT_EQ(p1.refs(), 2u);
  g0->unlock();  // handed to a1, never unlocked in between
  EXPECT_TRUE(m.is_locked());
  EXPECT_FALSE(m.try_lock().has_value());  // no barging
  EXPECT_EQ(p1.wakes(), 1);
  EXPECT_EQ(p2.wakes(), 0);
  EXPECT_TRUE(a1.poll_ready(&p1));
  {
    auto g1 = a1.await_resume();
    EXPECT_FALSE(a2.poll_ready(&p2));
  }
  EXPECT_EQ(p2.wakes(), 1);
  EXPECT_TRUE(a2.poll_ready(&p2));
  { auto g2 = a2.await_resume(); }
  EXPECT_FALSE(m.is_locked());
  EXPECT_EQ(p1.refs(), 1u);
  EXPECT_EQ(p2.refs(), 1u);
}

TEST(MutexProbe, CancelledWaiterLeavesQueue) {
  AsyncMutex m;
  ProbeTask p1, p2;
  auto g0 = m.try_lock();
  auto a2 = m.lock();
  {
    auto a1 = m.lock();
    EXPECT_FALSE(a1.poll_ready(&p1));
    EXPECT_FALSE(a2.poll_ready(&p2));
    EXPECT_EQ(p1.refs(), 2u);
  }
  EXPECT_EQ(p1.refs(), 1u);
  g0->unlock();
  EXPECT_EQ(p1.wakes(), 0);
  EXPECT_EQ(p2.wakes(), 1);
  EXPECT_TRUE(a2.poll_ready(&p2));
  { auto g = a2.await_resume(); }
  EXPECT_FALSE(m.is_locked());
}

// The lock was handed to a waiter that is cancelled before it resumed: the
// lock moves on (here: is released), it does not leak.
TEST(MutexProbe, CancelledAfterHandOverPassesLockOn) {
  AsyncMutex m;
  ProbeTask p1, p2;
  auto g0 = m.try_lock();
  auto a2 = m.lock();
  {
    auto a1 = m.lock();
    EXPECT_FALSE(a1.poll_ready(&p1));
    EXPECT_FALSE(a2.poll_ready(&p2));
    g0->unlock();  // a1 now owns it
    EXPECT_EQ(p1.wakes(), 1);
  }  // a1 dropped without taking its guard
  EXPECT_EQ(p2.wakes(), 1);
  EXPECT_TRUE(a2.poll_ready(&p2));
  { auto g = a2.await_resume(); }
  EXPECT_FALSE(m.is_locked());
  {
    auto a3 = m.lock();
    EXPECT_TRUE(a3.poll_ready(&p1));  // fast path, then dropped unused
  }
  EXPECT_FALSE(m.is_locked());
}

INSTANTIATE_TEST_SUITE_P(Runtimes, MutexTest, ::testing::Values(false, true), [](const auto& info) {
  return info.param ? "MultiThread" : "CurrentThread";
});

}  // namespace
}  // namespace tideloop
