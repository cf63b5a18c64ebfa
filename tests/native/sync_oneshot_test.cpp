// oneshot channel: one behaviour per test, each run on the current-thread and
// the multi-thread (2 workers) runtime.
// Channels are unpacked into variables, not structured bindings: lambdas capture
// them, which clang 14 (the asan tree's compiler) does not allow for bindings.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "test_support.hpp"
#include "tideloop/runtime.hpp"
#include "tideloop/sync/oneshot.hpp"

namespace tideloop {
namespace {

using namespace std::chrono_literals;

// Counts live instances so tests can prove every value is destroyed once.
using tltest::Counted;

// A stand-in task for polling awaiters by hand: its reference count shows
// whether a waker is still registered anywhere.
using tltest::ProbeTask;

using tltest::make_runtime;

class OneshotTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { Counted::live = 0; }
  void TearDown() override { EXPECT_EQ(Counted::live.load(), 0); }
  Runtime rt_ = make_runtime(GetParam());
};

TEST_P(OneshotTest, SendBeforeRecv) {
  int v = rt_.block_on([]() -> Task<int> {
    auto [tx_, rx_] = oneshot::channel<int>();
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    EXPECT_TRUE(tx.send(7));
    EXPECT_FALSE(tx.valid());
    co_return co_await rx;
  });
  EXPECT_EQ(v, 7);
}

TEST_P(OneshotTest, RecvBeforeSend) {
  std::string v = rt_.block_on([]() -> Task<std::string> {
    auto [tx_, rx_] = oneshot::channel<std::string>();
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    auto h = spawn([tx = std::move(tx)]() mutable -> Task<void> {
      for (int i = 0; i < 3; ++i) co_await yield_now();
      EXPECT_TRUE(tx.send(std::string(100, 'x')));
    });
    std::string s = co_await rx;
    co_await h;
    co_return s;
  });
  EXPECT_EQ(v, std::string(100, 'x'));
}

TEST_P(OneshotTest, VoidChannel) {
  rt_.block_on([]() -> Task<void> {
    auto [tx_, rx_] = oneshot::channel<void>();
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    auto h = spawn([tx = std::move(tx)]() mutable { EXPECT_TRUE(tx.send()); });
    co_await rx;
    co_await h;
  });
}

TEST_P(OneshotTest, SenderDroppedThrowsRecvError) {
  bool threw = rt_.block_on([]() -> Task<bool> {
    auto [tx_, rx_] = oneshot::channel<Counted>();
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    auto h = spawn([tx = std::move(tx)]() mutable -> Task<void> {
      co_await yield_now();
      oneshot::Sender<Counted> gone = std::move(tx);
    });
    bool threw = false;
    try {
      (void)co_await rx;
    } catch (const oneshot::RecvError&) {
      threw = true;
    }
    co_await h;
    co_return threw;
  });
  EXPECT_TRUE(threw);
}

TEST_P(OneshotTest, SenderDroppedBeforeAwait) {
  rt_.block_on([]() -> Task<void> {
    auto [tx_, rx_] = oneshot::channel<int>();
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    { auto gone = std::move(tx); }
    EXPECT_THROW((void)co_await rx, oneshot::RecvError);
  });
}

TEST_P(OneshotTest, ReceiverDroppedSendReturnsFalseAndDestroysValue) {
  rt_.block_on([]() -> Task<void> {
    auto [tx_, rx_] = oneshot::channel<Counted>();
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    EXPECT_FALSE(tx.is_closed());
    { auto gone = std::move(rx); }
    EXPECT_TRUE(tx.is_closed());
    EXPECT_FALSE(tx.send(Counted(5)));
    EXPECT_EQ(Counted::live.load(), 0);
    co_return;
  });
}

TEST_P(OneshotTest, UnreadValueDestroyedWithReceiver) {
  {
    auto [tx_, rx_] = oneshot::channel<Counted>();
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    EXPECT_TRUE(tx.send(Counted(1)));
    EXPECT_EQ(Counted::live.load(), 1);
  }
  EXPECT_EQ(Counted::live.load(), 0);
  {
    // Receiver dropped first, then the sender: the value never existed.
    auto [tx_, rx_] = oneshot::channel<Counted>();
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    { auto gone = std::move(rx); }
  }
}

TEST_P(OneshotTest, TryRecv) {
  auto [tx_, rx_] = oneshot::channel<int>();
  auto tx = std::move(tx_);
  auto rx = std::move(rx_);
  EXPECT_TRUE(absl::IsUnavailable(rx.try_recv().status()));
  EXPECT_TRUE(rx.is_empty());
  EXPECT_TRUE(tx.send(3));
  EXPECT_FALSE(rx.is_empty());
  auto r = rx.try_recv();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 3);
  EXPECT_TRUE(rx.is_terminated());
  EXPECT_TRUE(absl::IsFailedPrecondition(rx.try_recv().status()));

  auto [tx2_, rx2_] = oneshot::channel<int>();

  auto tx2 = std::move(tx2_);

  auto rx2 = std::move(rx2_);
  { auto gone = std::move(tx2); }
  EXPECT_TRUE(absl::IsFailedPrecondition(rx2.try_recv().status()));
}

TEST_P(OneshotTest, CloseKeepsValueSentBefore) {
  auto [tx_, rx_] = oneshot::channel<Counted>();
  auto tx = std::move(tx_);
  auto rx = std::move(rx_);
  EXPECT_TRUE(tx.send(Counted(9)));
  rx.close();
  auto r = rx.try_recv();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->v, 9);

  auto [tx2_, rx2_] = oneshot::channel<Counted>();

  auto tx2 = std::move(tx2_);

  auto rx2 = std::move(rx2_);
  rx2.close();
  EXPECT_TRUE(tx2.is_closed());
  EXPECT_FALSE(tx2.send(Counted(1)));
  EXPECT_EQ(Counted::live.load(), 1);  // only r's value
  EXPECT_TRUE(absl::IsFailedPrecondition(rx2.try_recv().status()));
}

TEST_P(OneshotTest, SenderClosedCompletesWhenReceiverDropped) {
  rt_.block_on([]() -> Task<void> {
    auto [tx_, rx_] = oneshot::channel<int>();
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    auto h = spawn([rx = std::move(rx)]() mutable -> Task<void> {
      co_await yield_now();
      oneshot::Receiver<int> gone = std::move(rx);
    });
    co_await tx.closed();
    EXPECT_TRUE(tx.is_closed());
    EXPECT_FALSE(tx.send(1));
    co_await h;
  });
}

// A current-thread runtime runs its tasks only inside block_on, so every
// test drives the runtime through block_on while other threads block.
TEST_P(OneshotTest, BlockingRecvFromThread) {
  auto [tx_, rx_] = oneshot::channel<Counted>();
  auto tx = std::move(tx_);
  auto rx = std::move(rx_);
  std::thread t([rx = std::move(rx)]() mutable {
    Counted c = rx.blocking_recv();
    EXPECT_EQ(c.v, 11);
  });
  rt_.block_on([&tx]() -> Task<void> {
    co_await yield_now();
    EXPECT_TRUE(tx.send(Counted(11)));
  });
  t.join();
}

TEST_P(OneshotTest, BlockingRecvSenderDropped) {
  auto [tx_, rx_] = oneshot::channel<int>();
  auto tx = std::move(tx_);
  auto rx = std::move(rx_);
  std::thread t([tx = std::move(tx)]() mutable {
    std::this_thread::sleep_for(5ms);
    auto gone = std::move(tx);
  });
  EXPECT_THROW(rx.blocking_recv(), oneshot::RecvError);
  t.join();
}

TEST_P(OneshotTest, BlockingRecvInsideTaskIsLogicError) {
  rt_.block_on([]() -> Task<void> {
    auto [tx_, rx_] = oneshot::channel<int>();
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    EXPECT_THROW(rx.blocking_recv(), std::logic_error);
    co_return;
  });
}

TEST_P(OneshotTest, SendFromThreadToTask) {
  auto [tx_, rx_] = oneshot::channel<int>();
  auto tx = std::move(tx_);
  auto rx = std::move(rx_);
  std::thread t([tx = std::move(tx)]() mutable {
    std::this_thread::sleep_for(2ms);
    EXPECT_TRUE(tx.send(99));
  });
  int v = rt_.block_on([&rx]() -> Task<int> {
    auto h = spawn([rx = std::move(rx)]() mutable -> Task<int> { co_return co_await rx; });
    co_return co_await h;
  });
  EXPECT_EQ(v, 99);
  t.join();
}

// Abort a task parked on `co_await rx` (the Receiver lives in its frame): the
// frame is destroyed, the receiver with it, and a later send fails and drops
// the value.
TEST_P(OneshotTest, AbortWaitingReceiver) {
  rt_.block_on([]() -> Task<void> {
    auto [tx_, rx_] = oneshot::channel<Counted>();
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    auto [started_tx_, started_rx_] = oneshot::channel<void>();
    auto started_tx = std::move(started_tx_);
    auto started_rx = std::move(started_rx_);
    auto h = spawn([rx = std::move(rx), started_tx = std::move(started_tx)]() mutable -> Task<int> {
      started_tx.send();
      Counted c = co_await rx;
      co_return c.v;
    });
    co_await started_rx;
    for (int i = 0; i < 3; ++i) co_await yield_now();
    h.abort();
    EXPECT_THROW(co_await h, TaskCancelled);
    EXPECT_FALSE(tx.send(Counted(1)));
    EXPECT_EQ(Counted::live.load(), 0);
  });
}

// The Receiver outlives the aborted waiter: the waiter's waker is withdrawn,
// the receiver stays usable.
TEST_P(OneshotTest, AbortWaiterReceiverOutlivesIt) {
  rt_.block_on([]() -> Task<void> {
    auto [tx_, rx_] = oneshot::channel<Counted>();
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    auto [started_tx_, started_rx_] = oneshot::channel<void>();
    auto started_tx = std::move(started_tx_);
    auto started_rx = std::move(started_rx_);
    auto h = spawn([&rx, started_tx = std::move(started_tx)]() mutable -> Task<int> {
      started_tx.send();
      Counted c = co_await rx;
      co_return c.v;
    });
    co_await started_rx;
    for (int i = 0; i < 3; ++i) co_await yield_now();
    h.abort();
    EXPECT_THROW(co_await h, TaskCancelled);
    EXPECT_TRUE(tx.send(Counted(4)));
    Counted c = co_await rx;
    EXPECT_EQ(c.v, 4);
  });
}

// Shutting the runtime down cancels a task parked on a receiver; the sender
// then sees the channel closed.
TEST_P(OneshotTest, ShutdownCancelsWaiter) {
  auto [tx_, rx_] = oneshot::channel<Counted>();
  auto tx = std::move(tx_);
  auto rx = std::move(rx_);
  auto h = rt_.spawn([rx = std::move(rx)]() mutable -> Task<int> {
    Counted c = co_await rx;
    co_return c.v;
  });
  rt_.block_on([]() -> Task<void> {
    for (int i = 0; i < 3; ++i) co_await yield_now();
  });
  rt_.shutdown();
  EXPECT_THROW(h.join(), TaskCancelled);
  EXPECT_TRUE(tx.is_closed());
  EXPECT_FALSE(tx.send(Counted(2)));
}

// Polls the awaiter by hand with a probe task: registering takes one waker
// reference, re-polling does not take another, destroying the pending
// awaiter gives it back.
TEST(OneshotProbe, AwaiterDeregistersOnDestroy) {
  ProbeTask task;
  auto [tx_, rx_] = oneshot::channel<int>();
  auto tx = std::move(tx_);
  auto rx = std::move(rx_);
  {
    oneshot::Receiver<int>::Awaiter a = rx.operator co_await();
    EXPECT_FALSE(a.poll_ready(&task));
    EXPECT_EQ(task.refs(), 2u);
    EXPECT_FALSE(a.poll_ready(&task));
    EXPECT_EQ(task.refs(), 2u);
  }
  EXPECT_EQ(task.refs(), 1u);
  EXPECT_TRUE(tx.send(1));
  EXPECT_EQ(task.wakes(), 0);
  EXPECT_EQ(*rx.try_recv(), 1);
}

TEST(OneshotProbe, SendWakesRegisteredTaskOnce) {
  ProbeTask task;
  auto [tx_, rx_] = oneshot::channel<int>();
  auto tx = std::move(tx_);
  auto rx = std::move(rx_);
  oneshot::Receiver<int>::Awaiter a = rx.operator co_await();
  EXPECT_FALSE(a.poll_ready(&task));
  EXPECT_TRUE(tx.send(5));
  EXPECT_EQ(task.wakes(), 1);
  EXPECT_TRUE(a.poll_ready(&task));
  EXPECT_EQ(a.await_resume(), 5);
  EXPECT_EQ(task.refs(), 1u);  // the block (and the waker in it) is gone
}

TEST(OneshotProbe, SwitchingWakerReplacesTheOldOne) {
  ProbeTask t1, t2;
  auto [tx_, rx_] = oneshot::channel<int>();
  auto tx = std::move(tx_);
  auto rx = std::move(rx_);
  {
    auto a = rx.operator co_await();
    EXPECT_FALSE(a.poll_ready(&t1));
    EXPECT_FALSE(a.poll_ready(&t2));
    EXPECT_EQ(t1.refs(), 1u);
    EXPECT_EQ(t2.refs(), 2u);
    EXPECT_TRUE(tx.send(1));
    EXPECT_EQ(t1.wakes(), 0);
    EXPECT_EQ(t2.wakes(), 1);
  }
  EXPECT_EQ(t2.refs(), 2u);  // published at completion: dropped with the block
  { auto gone = std::move(rx); }
  EXPECT_EQ(t2.refs(), 1u);
}

TEST(OneshotProbe, ClosedAwaiterDeregisters) {
  ProbeTask task;
  auto [tx_, rx_] = oneshot::channel<int>();
  auto tx = std::move(tx_);
  auto rx = std::move(rx_);
  {
    auto a = tx.closed();
    EXPECT_FALSE(a.poll_ready(&task));
    EXPECT_EQ(task.refs(), 2u);
  }
  EXPECT_EQ(task.refs(), 1u);
  auto a = tx.closed();
  EXPECT_FALSE(a.poll_ready(&task));
  rx.close();
  EXPECT_EQ(task.wakes(), 1);
  EXPECT_TRUE(a.poll_ready(&task));
}

INSTANTIATE_TEST_SUITE_P(Runtimes, OneshotTest, ::testing::Values(false, true),
                         [](const auto& info) {
                           return info.param ? "MultiThread" : "CurrentThread";
                         });

}  // namespace
}  // namespace tideloop
