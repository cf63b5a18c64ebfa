// JoinHandle<T>: join / co_await / detach / abort, output ownership, misuse.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "test_support.hpp"
#include "tideloop/runtime.hpp"

namespace {

using namespace std::chrono_literals;
using tideloop::JoinHandle;
using tideloop::Runtime;
using tideloop::Task;
using tideloop::TaskCancelled;

// --- test helpers ---

// Counts destructions of the live (not moved-from) instance only.
using tltest::Tracked;

using tltest::Gate;

using tltest::eventually;

Runtime make_rt(std::size_t workers = 2) {
  return Runtime::Builder::multi_thread().worker_threads(workers).build();
}

// Occupies the only worker of a 1-worker runtime until released.
struct Blocker {
  std::atomic<bool> started{false}, release{false};
  JoinHandle<void> handle;
  void start(Runtime& rt) {
    handle = rt.spawn([this] {
      started = true;
      while (!release.load()) std::this_thread::sleep_for(100us);
    });
    while (!started.load()) std::this_thread::sleep_for(100us);
  }
};

// --- join / co_await ---

TEST(JoinHandle, JoinReturnsTheValue) {
  auto rt = make_rt();
  auto h = rt.spawn([] { return std::string("hello"); });
  EXPECT_TRUE(h.valid());
  EXPECT_EQ(h.join(), "hello");
  EXPECT_FALSE(h.valid());  // consumed
}

TEST(JoinHandle, JoinTwiceIsAMisuse) {
  auto rt = make_rt();
  auto h = rt.spawn([] { return 1; });
  EXPECT_EQ(h.join(), 1);
  EXPECT_THROW((void)h.join(), std::logic_error);
}

TEST(JoinHandle, CoAwaitReturnsTheValueAndEmptyHandleThrows) {
  auto rt = make_rt();
  auto body = []() -> Task<int> {
    auto h = tideloop::spawn([]() -> Task<int> { co_return 41; });
    int v = co_await h;
    JoinHandle<int> empty;
    try {
      co_await empty;
    } catch (const std::logic_error&) {
      ++v;
    }
    co_return v;
  };
  EXPECT_EQ(rt.block_on(body), 42);
}

TEST(JoinHandle, IsFinishedBecomesTrue) {
  auto rt = make_rt();
  Gate gate;
  auto h = rt.spawn([&]() -> Task<int> {
    co_await gate.wait();
    co_return 3;
  });
  std::this_thread::sleep_for(5ms);
  EXPECT_FALSE(h.is_finished());
  gate.open();
  EXPECT_TRUE(eventually([&] { return h.is_finished(); }));
  EXPECT_EQ(h.join(), 3);
}

TEST(JoinHandle, JoinFromInsideATaskIsALogicError) {
  auto rt = make_rt();
  Gate gate;  // keeps the inner task unfinished
  auto body = [&gate]() -> Task<bool> {
    auto inner = tideloop::spawn([&gate]() -> Task<int> {
      co_await gate.wait();
      co_return 1;
    });
    bool threw = false;
    try {
      (void)inner.join();
    } catch (const std::logic_error&) {
      threw = true;
    }
    gate.open();
    EXPECT_EQ(co_await inner, 1);
    co_return threw;
  };
  EXPECT_TRUE(rt.block_on(body));
}

// Also for a task that already finished: the misuse is reported every time,
// not only when the timing makes it block.
TEST(JoinHandle, JoinOfAFinishedTaskFromInsideATaskIsALogicError) {
  auto rt = make_rt();
  auto body = []() -> Task<bool> {
    auto inner = tideloop::spawn([]() -> Task<int> { co_return 7; });
    while (!inner.is_finished()) co_await tideloop::yield_now();
    bool threw = false;
    try {
      (void)inner.join();
    } catch (const std::logic_error&) {
      threw = true;
    }
    EXPECT_EQ(co_await inner, 7);  // the handle is still usable
    co_return threw;
  };
  EXPECT_TRUE(rt.block_on(body));
}

TEST(JoinHandle, AwaitAcrossRuntimes) {
  auto a = make_rt();
  auto b = make_rt(1);
  auto cur = Runtime::Builder::current_thread().build();
  auto hb = b.spawn([]() -> Task<int> {
    co_await tideloop::yield_now();
    co_return 5;
  });
  auto ha = a.spawn([hb = std::move(hb)]() mutable -> Task<int> { co_return co_await hb + 1; });
  // A current-thread runtime awaiting a task of a multi-thread one.
  EXPECT_EQ(cur.block_on([&]() -> Task<int> { co_return co_await ha + 1; }), 7);
}

// --- detach / drop ---

TEST(JoinHandle, DetachedTaskStillRunsAndItsOutputIsDestroyedOnce) {
  std::atomic<int> destroyed{0};
  std::atomic<bool> ran{false};
  auto rt = make_rt();
  {
    auto h = rt.spawn([&] {
      ran = true;
      return Tracked(&destroyed);
    });
    h.detach();
    EXPECT_FALSE(h.valid());
    h.abort();  // no-op on an empty handle
  }
  EXPECT_TRUE(eventually([&] { return destroyed.load() == 1; }));
  EXPECT_TRUE(ran.load());
  rt.shutdown();
  EXPECT_EQ(destroyed.load(), 1);
}

TEST(JoinHandle, UnjoinedOutputIsDestroyedWhenTheHandleDrops) {
  std::atomic<int> destroyed{0};
  auto rt = make_rt();
  {
    auto h = rt.spawn([&] { return Tracked(&destroyed); });
    ASSERT_TRUE(eventually([&] { return h.is_finished(); }));
    EXPECT_EQ(destroyed.load(), 0);  // the handle still owns the output
  }
  EXPECT_EQ(destroyed.load(), 1);
}

TEST(JoinHandle, JoinedOutputIsMovedOutNotCopied) {
  std::atomic<int> destroyed{0};
  auto rt = make_rt();
  {
    Tracked t = rt.spawn([&] { return Tracked(&destroyed); }).join();
    EXPECT_EQ(destroyed.load(), 0);
  }
  EXPECT_EQ(destroyed.load(), 1);
}

TEST(JoinHandle, MoveAssignmentDetachesTheOldTask) {
  auto rt = make_rt();
  std::atomic<int> ran{0};
  auto h1 = rt.spawn([&] { return ++ran; });
  auto h2 = rt.spawn([&] { return ++ran; });
  h1 = std::move(h2);
  EXPECT_FALSE(h2.valid());  // NOLINT(bugprone-use-after-move)
  (void)h1.join();
  EXPECT_TRUE(eventually([&] { return ran.load() == 2; }));
}

// --- abort ---

TEST(JoinHandle, AbortBeforeFirstPollCancelsWithoutRunning) {
  auto rt = make_rt(1);
  Blocker blocker;
  blocker.start(rt);
  std::atomic<int> destroyed{0};
  std::atomic<bool> ran{false};
  auto h = rt.spawn([&, t = Tracked(&destroyed)] { ran = true; });
  h.abort();
  blocker.release = true;
  EXPECT_THROW(h.join(), TaskCancelled);
  EXPECT_FALSE(ran.load());
  EXPECT_EQ(destroyed.load(), 1);
}

TEST(JoinHandle, AbortOfASuspendedTaskDestroysItsFrameOnce) {
  auto rt = make_rt();
  Gate gate;
  std::atomic<int> destroyed{0};
  std::atomic<bool> waiting{false}, resumed{false};
  auto h = rt.spawn([&]() -> Task<int> {
    Tracked local(&destroyed);
    waiting = true;
    co_await gate.wait();
    resumed = true;
    co_return 1;
  });
  ASSERT_TRUE(eventually([&] { return waiting.load(); }));
  h.abort();
  EXPECT_THROW((void)h.join(), TaskCancelled);
  EXPECT_EQ(destroyed.load(), 1);
  gate.open();  // the gate's stale waker wakes a completed task: harmless
  std::this_thread::sleep_for(2ms);
  EXPECT_FALSE(resumed.load());
}

TEST(JoinHandle, AbortWhileRunningLetsTheCurrentStepFinish) {
  auto rt = make_rt();
  std::atomic<bool> started{false}, go{false};
  auto finishes = rt.spawn([&] {
    started = true;
    while (!go.load()) std::this_thread::sleep_for(100us);
    return 9;
  });
  ASSERT_TRUE(eventually([&] { return started.load(); }));
  finishes.abort();
  go = true;
  EXPECT_EQ(finishes.join(), 9);  // it completed in the step that was running

  started = false;
  go = false;
  std::atomic<bool> after_yield{false};
  auto yields = rt.spawn([&]() -> Task<int> {
    started = true;
    while (!go.load()) std::this_thread::sleep_for(100us);
    co_await tideloop::yield_now();
    after_yield = true;
    co_return 1;
  });
  ASSERT_TRUE(eventually([&] { return started.load(); }));
  yields.abort();
  go = true;
  EXPECT_THROW((void)yields.join(), TaskCancelled);
  EXPECT_FALSE(after_yield.load());
}

TEST(JoinHandle, AbortAfterCompletionKeepsTheValue) {
  auto rt = make_rt();
  auto h = rt.spawn([] { return 5; });
  ASSERT_TRUE(eventually([&] { return h.is_finished(); }));
  h.abort();
  h.abort();
  EXPECT_EQ(h.join(), 5);
}

TEST(JoinHandle, AbortIsIdempotent) {
  auto rt = make_rt();
  Gate gate;
  std::atomic<int> destroyed{0};
  auto h = rt.spawn([&, t = Tracked(&destroyed)]() -> Task<void> { co_await gate.wait(); });
  for (int i = 0; i < 5; ++i) h.abort();
  EXPECT_THROW(h.join(), TaskCancelled);
  EXPECT_EQ(destroyed.load(), 1);
}

TEST(JoinHandle, AbortFromInsideAnotherTaskWakesTheAwaiter) {
  auto rt = make_rt();
  Gate gate;
  auto body = [&]() -> Task<std::string> {
    auto victim = tideloop::spawn([&]() -> Task<int> {
      co_await gate.wait();
      co_return 1;
    });
    co_await tideloop::yield_now();
    victim.abort();
    try {
      co_await victim;
    } catch (const TaskCancelled& e) {
      co_return std::string(e.what());
    }
    co_return "not cancelled";
  };
  EXPECT_EQ(rt.block_on(body), "task was cancelled");
}

TEST(JoinHandle, SelfAbortCancelsAtTheNextPoll) {
  auto rt = make_rt();
  std::atomic<bool> reached_end{false};
  auto shared = std::make_shared<JoinHandle<void>>();
  std::mutex mu;
  std::unique_lock<std::mutex> hold(mu);
  *shared = rt.spawn([&, shared]() -> Task<void> {
    { std::lock_guard<std::mutex> g(mu); }  // wait until the handle is stored
    shared->abort();
    co_await tideloop::yield_now();
    reached_end = true;
  });
  hold.unlock();
  EXPECT_THROW(shared->join(), TaskCancelled);
  EXPECT_FALSE(reached_end.load());
}

// A waker may outlive its task and its runtime: the reference it holds keeps
// the task header's memory valid, and waking a finished task does nothing.
TEST(JoinHandle, WakerOutlivesTaskAndRuntime) {
  auto gate = std::make_unique<Gate>();
  {
    auto rt = make_rt();
    std::atomic<bool> waiting{false};
    auto h = rt.spawn([&]() -> Task<void> {
      waiting = true;
      co_await gate->wait();
    });
    ASSERT_TRUE(eventually([&] { return waiting.load(); }));
    h.detach();
  }  // runtime gone, task cancelled, the gate still holds its waker
  gate->open();
  gate.reset();
}

}  // namespace

namespace {

// Awaiting a finished handle spends budget like any other leaf (as in Tokio):
// a task awaiting many finished handles yields every budget's worth, so other
// tasks on its worker run in between.
TEST(JoinHandle, AwaitingFinishedHandlesRespectsTheBudget) {
  auto rt = make_rt(1);
  constexpr int kN = 1000;
  std::vector<JoinHandle<int>> hs;
  for (int i = 0; i < kN; ++i) hs.push_back(rt.spawn([]() { return 1; }));
  for (auto& h : hs)
    while (!h.is_finished()) std::this_thread::sleep_for(1ms);
  std::atomic<int> progress{0};
  std::atomic<bool> seen_midway{false};
  rt.block_on([&]() -> Task<> {
    auto watcher = tideloop::spawn([&]() -> Task<> {
      while (progress.load() < kN) {
        if (progress.load() > 0) seen_midway.store(true);
        co_await tideloop::yield_now();
      }
    });
    auto awaiter = tideloop::spawn([&]() -> Task<> {
      int sum = 0;
      for (auto& h : hs) {
        sum += co_await h;
        progress.fetch_add(1);
      }
      EXPECT_EQ(sum, kN);
    });
    co_await awaiter;
    co_await watcher;
  });
  EXPECT_TRUE(seen_midway.load());
}

}  // namespace
