// Notify: Tokio's semantics (permit for notify_one, broadcast without permit
// for notify_waiters), on the current-thread and the multi-thread runtime.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "test_support.hpp"
#include "tideloop/runtime.hpp"
#include "tideloop/sync/notify.hpp"
#include "tideloop/sync/oneshot.hpp"

namespace tideloop {
namespace {

using tltest::ProbeTask;

using tltest::make_runtime;

class NotifyTest : public ::testing::TestWithParam<bool> {
 protected:
  Runtime rt_ = make_runtime(GetParam());
};

TEST_P(NotifyTest, NotifyOneBeforeWaitStoresPermit) {
  rt_.block_on([]() -> Task<void> {
    ProbeTask probe;  // outlives f, whose waker refers to it
    Notify n;
    n.notify_one();
    n.notify_one();         // still one permit
    co_await n.notified();  // consumes it at once
    auto f = n.notified();
    EXPECT_FALSE(f.poll_ready(&probe));  // no second permit
  });
}

TEST_P(NotifyTest, NotifyOneWakesWaiter) {
  rt_.block_on([]() -> Task<void> {
    Notify n;
    std::atomic<bool> woke{false};
    auto h = spawn([&]() -> Task<void> {
      co_await n.notified();
      woke = true;
    });
    for (int i = 0; i < 3; ++i) co_await yield_now();
    n.notify_one();
    co_await h;
    EXPECT_TRUE(woke.load());
  });
}

TEST_P(NotifyTest, NotifyWaitersWakesAllAndStoresNoPermit) {
  rt_.block_on([]() -> Task<void> {
    ProbeTask probe;
    Notify n;
    std::atomic<int> started{0}, woke{0};
    std::vector<JoinHandle<void>> hs;
    for (int i = 0; i < 4; ++i) {
      hs.push_back(spawn([&]() -> Task<void> {
        auto f = n.notified();
        started.fetch_add(1);
        co_await f;
        woke.fetch_add(1);
      }));
    }
    while (started.load() < 4) co_await yield_now();
    n.notify_waiters();
    for (auto& h : hs) co_await h;
    EXPECT_EQ(woke.load(), 4);
    auto f = n.notified();
    EXPECT_FALSE(f.poll_ready(&probe));  // no permit left behind
  });
}

// A Notified counts for notify_waiters() from its creation, before any poll.
TEST(NotifyProbe, BroadcastReachesCreatedButUnpolledFuture) {
  Notify n;
  ProbeTask probe;
  auto f = n.notified();
  n.notify_waiters();
  EXPECT_TRUE(f.poll_ready(&probe));
  auto g = n.notified();  // created after the broadcast: waits
  EXPECT_FALSE(g.poll_ready(&probe));
}

TEST(NotifyProbe, NotifyOneIsFifo) {
  Notify n;
  ProbeTask p1, p2, p3;
  auto f1 = n.notified();
  auto f2 = n.notified();
  auto f3 = n.notified();
  EXPECT_FALSE(f1.poll_ready(&p1));
  EXPECT_FALSE(f2.poll_ready(&p2));
  EXPECT_FALSE(f3.poll_ready(&p3));
  n.notify_one();
  EXPECT_EQ(p1.wakes(), 1);
  EXPECT_EQ(p2.wakes(), 0);
  EXPECT_TRUE(f1.poll_ready(&p1));
  EXPECT_FALSE(f2.poll_ready(&p2));
  n.notify_one();
  EXPECT_EQ(p2.wakes(), 1);
  EXPECT_TRUE(f2.poll_ready(&p2));
  n.notify_one();
  EXPECT_TRUE(f3.poll_ready(&p3));
}

TEST(NotifyProbe, CancelledWaiterLeavesNoWaker) {
  Notify n;
  ProbeTask p;
  {
    auto f = n.notified();
    EXPECT_FALSE(f.poll_ready(&p));
    EXPECT_FALSE(f.poll_ready(&p));
    EXPECT_EQ(p.refs(), 2u);
  }
  EXPECT_EQ(p.refs(), 1u);
  n.notify_one();  // nobody waits: becomes the permit
  EXPECT_EQ(p.wakes(), 0);
  auto g = n.notified();
  EXPECT_TRUE(g.poll_ready(&p));
}

// notify_one() picked a waiter that is cancelled before it ran: the
// notification moves on to the next waiter instead of being lost.
TEST(NotifyProbe, CancelledNotifiedWaiterForwardsNotification) {
  Notify n;
  ProbeTask p1, p2;
  auto f2 = n.notified();
  {
    auto f1 = n.notified();
    EXPECT_FALSE(f1.poll_ready(&p1));
    EXPECT_FALSE(f2.poll_ready(&p2));
    n.notify_one();
    EXPECT_EQ(p1.wakes(), 1);
  }  // f1 dropped without observing it
  EXPECT_EQ(p2.wakes(), 1);
  EXPECT_TRUE(f2.poll_ready(&p2));
  // And with nobody left, it becomes the permit.
  {
    auto f3 = n.notified();
    EXPECT_FALSE(f3.poll_ready(&p1));
    n.notify_one();
  }
  auto f4 = n.notified();
  EXPECT_TRUE(f4.poll_ready(&p2));
}

TEST_P(NotifyTest, AbortWaitingTask) {
  rt_.block_on([]() -> Task<void> {
    Notify n;
    auto [started_tx, started_rx] = oneshot::channel<void>();
    auto h = spawn([&n, started_tx = std::move(started_tx)]() mutable -> Task<void> {
      started_tx.send();
      co_await n.notified();
    });
    co_await started_rx;
    for (int i = 0; i < 3; ++i) co_await yield_now();
    h.abort();
    EXPECT_THROW(co_await h, TaskCancelled);
    n.notify_one();         // nobody waits any more: stored as the permit
    co_await n.notified();  // so this completes at once
  });
}

TEST_P(NotifyTest, NotifyFromPlainThread) {
  rt_.block_on([]() -> Task<void> {
    Notify n;
    auto f = n.notified();
    std::thread t([&] { n.notify_waiters(); });
    co_await f;
    t.join();
  });
}

INSTANTIATE_TEST_SUITE_P(Runtimes, NotifyTest, ::testing::Values(false, true),
                         [](const auto& info) {
                           return info.param ? "MultiThread" : "CurrentThread";
                         });

}  // namespace
}  // namespace tideloop
