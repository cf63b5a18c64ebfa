// mpsc channels (bounded and unbounded): one behaviour per test, each run on
// the current-thread and the multi-thread (2 workers) runtime.
// Channels are unpacked into variables, not structured bindings: lambdas capture
// them, which clang 14 (the asan tree's compiler) does not allow for bindings.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "test_support.hpp"
#include "tideloop/runtime.hpp"
#include "tideloop/sync/mpsc.hpp"
#include "tideloop/sync/oneshot.hpp"

namespace tideloop {
namespace {

using namespace std::chrono_literals;

using tltest::Counted;

// A stand-in task for polling awaiters by hand: its reference count shows
// whether a waker is still registered anywhere.
using tltest::ProbeTask;

using tltest::make_runtime;

class MpscTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { Counted::live = 0; }
  void TearDown() override { EXPECT_EQ(Counted::live.load(), 0); }
  Runtime rt_ = make_runtime(GetParam());
};

TEST_P(MpscTest, BoundedInOrder) {
  auto got = rt_.block_on([]() -> Task<std::vector<int>> {
    auto [tx_, rx_] = mpsc::channel<int>(4);
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    auto h = spawn([tx = std::move(tx)]() mutable -> Task<void> {
      for (int i = 0; i < 100; ++i) EXPECT_TRUE(co_await tx.send(i));
    });
    std::vector<int> got;
    while (auto v = co_await rx.recv()) got.push_back(*v);
    co_await h;
    co_return got;
  });
  ASSERT_EQ(got.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(got[i], i);
}

TEST_P(MpscTest, UnboundedInOrder) {
  auto got = rt_.block_on([]() -> Task<std::vector<int>> {
    auto [tx_, rx_] = mpsc::unbounded_channel<int>();
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    auto h = spawn([tx = std::move(tx)]() mutable {
      for (int i = 0; i < 1000; ++i) EXPECT_TRUE(tx.send(i));
    });
    std::vector<int> got;
    while (auto v = co_await rx.recv()) got.push_back(*v);
    co_await h;
    co_return got;
  });
  ASSERT_EQ(got.size(), 1000u);
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(got[i], i);
}

TEST_P(MpscTest, ManySendersCopies) {
  const int senders = 8, each = 200;
  long sum = rt_.block_on([&]() -> Task<long> {
    auto [tx_, rx_] = mpsc::channel<int>(3);
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    std::vector<JoinHandle<void>> hs;
    for (int s = 0; s < senders; ++s) {
      hs.push_back(spawn([tx, s, each]() mutable -> Task<void> {
        for (int i = 0; i < each; ++i) EXPECT_TRUE(co_await tx.send(s * each + i));
      }));
    }
    { auto gone = std::move(tx); }  // only the copies remain
    long sum = 0;
    std::vector<int> last(senders, -1);
    while (auto v = co_await rx.recv()) {
      sum += *v;
      const int s = *v / each;
      EXPECT_GT(*v, last[s]);  // per-sender order
      last[s] = *v;
    }
    for (auto& h : hs) co_await h;
    co_return sum;
  });
  const long n = senders * each;
  EXPECT_EQ(sum, n * (n - 1) / 2);
}

TEST_P(MpscTest, TrySendFullAndClosed) {
  auto [tx_, rx_] = mpsc::channel<Counted>(2);
  auto tx = std::move(tx_);
  auto rx = std::move(rx_);
  Counted a(1), b(2), c(3);
  EXPECT_TRUE(tx.try_send(std::move(a)).ok());
  EXPECT_TRUE(tx.try_send(b).ok());  // copies
  EXPECT_EQ(tx.capacity(), 0u);
  EXPECT_EQ(tx.max_capacity(), 2u);
  absl::Status full = tx.try_send(std::move(c));
  EXPECT_TRUE(absl::IsResourceExhausted(full));
  EXPECT_EQ(c.v, 3);  // not moved from
  EXPECT_EQ(rx.len(), 2u);
  rx.close();
  EXPECT_TRUE(tx.is_closed());
  EXPECT_TRUE(absl::IsFailedPrecondition(tx.try_send(std::move(c))));
  // Buffered messages survive close().
  EXPECT_EQ(rx.try_recv()->v, 1);
  EXPECT_EQ(rx.try_recv()->v, 2);
  EXPECT_TRUE(absl::IsFailedPrecondition(rx.try_recv().status()));
}

TEST_P(MpscTest, TryRecvStates) {
  auto [tx_, rx_] = mpsc::unbounded_channel<int>();
  auto tx = std::move(tx_);
  auto rx = std::move(rx_);
  EXPECT_TRUE(absl::IsUnavailable(rx.try_recv().status()));
  EXPECT_TRUE(tx.send(4));
  EXPECT_EQ(*rx.try_recv(), 4);
  EXPECT_FALSE(rx.is_closed());
  { auto gone = std::move(tx); }
  EXPECT_TRUE(rx.is_closed());
  EXPECT_TRUE(absl::IsFailedPrecondition(rx.try_recv().status()));
}

TEST_P(MpscTest, ZeroCapacityRejected) {
  EXPECT_THROW(mpsc::channel<int>(0), std::invalid_argument);
}

TEST_P(MpscTest, ReceiverDroppedSendFailsAndDestroysValue) {
  rt_.block_on([]() -> Task<void> {
    auto [tx_, rx_] = mpsc::channel<Counted>(4);
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    EXPECT_TRUE(co_await tx.send(Counted(1)));  // buffered, destroyed with rx
    { auto gone = std::move(rx); }
    EXPECT_EQ(Counted::live.load(), 0);
    EXPECT_FALSE(co_await tx.send(Counted(2)));
    EXPECT_EQ(Counted::live.load(), 0);
    auto [utx_, urx_] = mpsc::unbounded_channel<Counted>();
    auto utx = std::move(utx_);
    auto urx = std::move(urx_);
    { auto gone = std::move(urx); }
    EXPECT_FALSE(utx.send(Counted(3)));
    EXPECT_EQ(Counted::live.load(), 0);
  });
}

TEST_P(MpscTest, ReceiverDroppedWakesWaitingSenders) {
  rt_.block_on([]() -> Task<void> {
    auto [tx_, rx_] = mpsc::channel<Counted>(1);
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    EXPECT_TRUE(tx.try_send(Counted(0)).ok());
    std::vector<JoinHandle<bool>> hs;
    for (int i = 0; i < 3; ++i) {
      hs.push_back(
          spawn([tx, i]() mutable -> Task<bool> { co_return co_await tx.send(Counted(i)); }));
    }
    for (int i = 0; i < 5; ++i) co_await yield_now();
    { auto gone = std::move(rx); }
    for (auto& h : hs) EXPECT_FALSE(co_await h);
    EXPECT_EQ(Counted::live.load(), 0);
  });
}

TEST_P(MpscTest, LastSenderDroppedEndsStreamAfterDrain) {
  rt_.block_on([]() -> Task<void> {
    auto [tx_, rx_] = mpsc::channel<int>(8);
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    auto tx2 = tx;
    EXPECT_TRUE(tx.same_channel(tx2));
    EXPECT_TRUE(tx.try_send(1).ok());
    EXPECT_TRUE(tx2.try_send(2).ok());
    { auto gone = std::move(tx); }
    EXPECT_FALSE(rx.is_closed());
    { auto gone = std::move(tx2); }
    EXPECT_TRUE(rx.is_closed());
    EXPECT_EQ(co_await rx.recv(), std::optional<int>(1));
    EXPECT_EQ(co_await rx.recv(), std::optional<int>(2));
    EXPECT_EQ(co_await rx.recv(), std::nullopt);
  });
}

TEST_P(MpscTest, SenderDroppedWakesWaitingReceiver) {
  rt_.block_on([]() -> Task<void> {
    auto [tx_, rx_] = mpsc::channel<int>(1);
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    auto h = spawn([tx = std::move(tx)]() mutable -> Task<void> {
      for (int i = 0; i < 3; ++i) co_await yield_now();
      auto gone = std::move(tx);
    });
    EXPECT_EQ(co_await rx.recv(), std::nullopt);
    co_await h;
  });
}

TEST_P(MpscTest, BlockingSendAndRecvFromThreads) {
  auto [tx_, rx_] = mpsc::channel<int>(2);
  auto tx = std::move(tx_);
  auto rx = std::move(rx_);
  auto [btx_, brx_] = mpsc::channel<int>(2);
  auto btx = std::move(btx_);
  auto brx = std::move(brx_);
  const int n = 200;
  std::thread producer([tx = std::move(tx)]() mutable {
    for (int i = 0; i < n; ++i) ASSERT_TRUE(tx.blocking_send(i));
  });
  std::thread consumer([brx = std::move(brx)]() mutable {
    for (int i = 0; i < n; ++i) ASSERT_EQ(brx.blocking_recv(), std::optional<int>(i * 2));
    EXPECT_EQ(brx.blocking_recv(), std::nullopt);
  });
  rt_.block_on([&]() -> Task<void> {
    // Relay, doubling: thread -> task -> thread.
    auto out = std::move(btx);
    while (auto v = co_await rx.recv()) EXPECT_TRUE(co_await out.send(*v * 2));
  });
  producer.join();
  consumer.join();
}

TEST_P(MpscTest, BlockingCallsInsideTaskAreLogicErrors) {
  rt_.block_on([]() -> Task<void> {
    auto [tx_, rx_] = mpsc::channel<int>(1);
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    EXPECT_THROW(rx.blocking_recv(), std::logic_error);
    EXPECT_THROW(tx.blocking_send(1), std::logic_error);
    co_return;
  });
}

TEST_P(MpscTest, AbortWaitingReceiver) {
  rt_.block_on([]() -> Task<void> {
    auto [tx_, rx_] = mpsc::channel<Counted>(2);
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    auto [started_tx_, started_rx_] = oneshot::channel<void>();
    auto started_tx = std::move(started_tx_);
    auto started_rx = std::move(started_rx_);
    auto h = spawn([rx = std::move(rx), started_tx = std::move(started_tx)]() mutable -> Task<int> {
      started_tx.send();
      auto v = co_await rx.recv();
      co_return v ? v->v : -1;
    });
    co_await started_rx;
    for (int i = 0; i < 3; ++i) co_await yield_now();
    h.abort();
    EXPECT_THROW(co_await h, TaskCancelled);
    EXPECT_FALSE(co_await tx.send(Counted(1)));  // receiver went with the frame
  });
}

TEST_P(MpscTest, AbortWaitingReceiverChannelOutlivesIt) {
  rt_.block_on([]() -> Task<void> {
    auto [tx_, rx_] = mpsc::channel<Counted>(2);
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    auto [started_tx_, started_rx_] = oneshot::channel<void>();
    auto started_tx = std::move(started_tx_);
    auto started_rx = std::move(started_rx_);
    auto h = spawn([&rx, started_tx = std::move(started_tx)]() mutable -> Task<int> {
      started_tx.send();
      auto v = co_await rx.recv();
      co_return v ? v->v : -1;
    });
    co_await started_rx;
    for (int i = 0; i < 3; ++i) co_await yield_now();
    h.abort();
    EXPECT_THROW(co_await h, TaskCancelled);
    EXPECT_TRUE(co_await tx.send(Counted(7)));  // nothing was lost
    auto v = co_await rx.recv();
    EXPECT_EQ(v->v, 7);
  });
}

TEST_P(MpscTest, AbortWaitingSender) {
  rt_.block_on([]() -> Task<void> {
    auto [tx_, rx_] = mpsc::channel<Counted>(1);
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    EXPECT_TRUE(tx.try_send(Counted(0)).ok());
    auto [started_tx_, started_rx_] = oneshot::channel<void>();
    auto started_tx = std::move(started_tx_);
    auto started_rx = std::move(started_rx_);
    auto h = spawn([tx, started_tx = std::move(started_tx)]() mutable -> Task<bool> {
      started_tx.send();
      co_return co_await tx.send(Counted(1));
    });
    co_await started_rx;
    for (int i = 0; i < 3; ++i) co_await yield_now();
    h.abort();
    bool cancelled = false;
    try {
      (void)co_await h;
    } catch (const TaskCancelled&) {
      cancelled = true;
    }
    if (cancelled) {
      // Its value died with it; the slot it waited for goes to nobody.
      EXPECT_EQ(rx.len(), 1u);
      EXPECT_EQ((co_await rx.recv())->v, 0);
      EXPECT_TRUE(absl::IsUnavailable(rx.try_recv().status()));
    }
    EXPECT_EQ(Counted::live.load(), 0);
  });
}

// --- hand-driven awaiters: FIFO order and waker bookkeeping -----------------

TEST(MpscProbe, WaitingSendersServedFifoWithoutBarging) {
  ProbeTask p1, p2, p3;
  auto [tx_, rx_] = mpsc::channel<int>(1);
  auto tx = std::move(tx_);
  auto rx = std::move(rx_);
  ASSERT_TRUE(tx.try_send(0).ok());
  auto a1 = tx.send(1);
  auto a2 = tx.send(2);
  auto a3 = tx.send(3);
  EXPECT_FALSE(a1.poll_ready(&p1));
  EXPECT_FALSE(a2.poll_ready(&p2));
  EXPECT_FALSE(a3.poll_ready(&p3));
  EXPECT_FALSE(a1.poll_ready(&p1));  // spurious re-poll: still waiting, no new waker
  EXPECT_EQ(p1.refs(), 2u);
  EXPECT_TRUE(absl::IsResourceExhausted(tx.try_send(99)));  // no barging
  EXPECT_EQ(*rx.try_recv(), 0);
  EXPECT_EQ(p1.wakes(), 1);
  EXPECT_EQ(p2.wakes(), 0);
  EXPECT_TRUE(a1.poll_ready(&p1));
  EXPECT_TRUE(a1.await_resume());
  EXPECT_TRUE(absl::IsResourceExhausted(tx.try_send(99)));
  EXPECT_EQ(*rx.try_recv(), 1);
  EXPECT_EQ(p2.wakes(), 1);
  EXPECT_EQ(*rx.try_recv(), 2);
  EXPECT_EQ(p3.wakes(), 1);
  EXPECT_EQ(*rx.try_recv(), 3);
  EXPECT_TRUE(tx.try_send(4).ok());
  EXPECT_EQ(p1.refs(), 1u);
  EXPECT_EQ(p2.refs(), 1u);
  EXPECT_EQ(p3.refs(), 1u);
}

TEST(MpscProbe, CancelledSenderLeavesNoWaker) {
  Counted::live = 0;
  ProbeTask p1, p2;
  {
    auto [tx_, rx_] = mpsc::channel<Counted>(1);
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    ASSERT_TRUE(tx.try_send(Counted(0)).ok());
    auto a2 = tx.send(Counted(2));
    {
      auto a1 = tx.send(Counted(1));
      EXPECT_FALSE(a1.poll_ready(&p1));
      EXPECT_FALSE(a2.poll_ready(&p2));
      EXPECT_EQ(p1.refs(), 2u);
    }  // a1 cancelled while queued
    EXPECT_EQ(p1.refs(), 1u);
    EXPECT_EQ(rx.try_recv()->v, 0);
    EXPECT_EQ(p1.wakes(), 0);
    EXPECT_EQ(p2.wakes(), 1);  // the next in line got the slot
    EXPECT_TRUE(a2.poll_ready(&p2));
    EXPECT_EQ(rx.try_recv()->v, 2);
  }
  EXPECT_EQ(Counted::live.load(), 0);
}

TEST(MpscProbe, CancelledReceiverLeavesNoWaker) {
  ProbeTask p;
  auto [tx_, rx_] = mpsc::unbounded_channel<int>();
  auto tx = std::move(tx_);
  auto rx = std::move(rx_);
  {
    auto a = rx.recv();
    EXPECT_FALSE(a.poll_ready(&p));
    EXPECT_FALSE(a.poll_ready(&p));
    EXPECT_EQ(p.refs(), 2u);
  }
  EXPECT_EQ(p.refs(), 1u);
  EXPECT_TRUE(tx.send(1));
  EXPECT_EQ(p.wakes(), 0);
  auto a = rx.recv();
  EXPECT_TRUE(a.poll_ready(&p));
  EXPECT_EQ(a.await_resume(), std::optional<int>(1));
}

INSTANTIATE_TEST_SUITE_P(Runtimes, MpscTest, ::testing::Values(false, true), [](const auto& info) {
  return info.param ? "MultiThread" : "CurrentThread";
});

}  // namespace
}  // namespace tideloop
