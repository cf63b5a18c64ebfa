// Shutdown with tasks in flight: it never hangs, every task that did not run
// to completion is cancelled exactly once (its frame's and captures'
// destructors run once), joiners see TaskCancelled, and spawns after shutdown
// report TaskCancelled.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "test_support.hpp"
#include "tideloop/runtime.hpp"

namespace {

using namespace std::chrono_literals;
using tideloop::Handle;
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

Task<int> wait_forever(Gate* gate, Tracked t) {
  (void)t;
  co_await gate->wait();
  co_return 1;
}

// --- tests ---

TEST(Shutdown, SuspendedTasksAreCancelledOnceAndJoinersSeeTaskCancelled) {
  Gate never;
  std::atomic<int> destroyed{0};
  std::atomic<int> suspended{0};
  constexpr int kTasks = 200;
  std::vector<JoinHandle<int>> hs;
  auto rt = make_rt();
  for (int i = 0; i < kTasks; ++i) {
    hs.push_back(rt.spawn([&, t = Tracked(&destroyed)]() -> Task<int> {
      Tracked local(&destroyed);
      suspended.fetch_add(1);
      co_return co_await wait_forever(&never, Tracked(&destroyed));
    }));
  }
  ASSERT_TRUE(eventually([&] { return suspended.load() == kTasks; }));
  EXPECT_EQ(destroyed.load(), 0);
  rt.shutdown();
  // capture + frame local + child frame parameter, once each
  EXPECT_EQ(destroyed.load(), 3 * kTasks);
  for (auto& h : hs) EXPECT_THROW((void)h.join(), TaskCancelled);
  EXPECT_EQ(destroyed.load(), 3 * kTasks);
}

TEST(Shutdown, QueuedTasksThatNeverRanAreCancelledOnce) {
  std::atomic<int> destroyed{0}, ran{0};
  std::atomic<bool> started{false}, release{false};
  constexpr int kTasks = 500;
  auto rt = make_rt(1);
  // Occupy the only worker so everything else stays queued.
  auto blocker = rt.spawn([&] {
    started = true;
    while (!release.load()) std::this_thread::sleep_for(100us);
  });
  ASSERT_TRUE(eventually([&] { return started.load(); }));
  std::vector<JoinHandle<void>> hs;
  for (int i = 0; i < kTasks; ++i) {
    if (i % 2) {
      hs.push_back(rt.spawn([&, t = Tracked(&destroyed)] { ran.fetch_add(1); }));
    } else {
      hs.push_back(rt.spawn([&, t = Tracked(&destroyed)]() -> Task<void> {
        ran.fetch_add(1);
        co_return;
      }));
    }
  }
  std::thread stopper([&] { rt.shutdown(); });
  // Give shutdown time to close the queues; it then waits for the blocker.
  // (On a loaded machine it may not have started yet, and the queued tasks
  // then run normally: either way each runs or is cancelled exactly once.)
  std::this_thread::sleep_for(100ms);
  release = true;
  stopper.join();
  EXPECT_EQ(destroyed.load(), kTasks);
  int cancelled = 0;
  for (auto& h : hs) {
    try {
      h.join();
    } catch (const TaskCancelled&) {
      ++cancelled;
    }
  }
  EXPECT_EQ(cancelled + ran.load(), kTasks);
  if (ran.load() != 0) std::printf("note: %d queued tasks ran before shutdown began\n", ran.load());
  blocker.join();  // it was running and finished its step
}

TEST(Shutdown, JoinersBlockedInJoinGetTaskCancelled) {
  Gate never;
  std::atomic<int> destroyed{0};
  auto rt = make_rt();
  constexpr int kJoiners = 4;
  std::atomic<int> cancelled{0};
  std::vector<std::thread> joiners;
  for (int i = 0; i < kJoiners; ++i) {
    auto h = rt.spawn(wait_forever(&never, Tracked(&destroyed)));
    joiners.emplace_back([&cancelled, h = std::move(h)]() mutable {
      try {
        (void)h.join();
      } catch (const TaskCancelled&) {
        cancelled.fetch_add(1);
      }
    });
  }
  std::this_thread::sleep_for(20ms);  // let them block
  rt.shutdown();
  for (auto& t : joiners) t.join();
  EXPECT_EQ(cancelled.load(), kJoiners);
  EXPECT_EQ(destroyed.load(), kJoiners);
}

TEST(Shutdown, TaskAwaitingACancelledTaskIsItselfCancelledOrSeesTaskCancelled) {
  Gate never;
  std::atomic<int> destroyed{0};
  auto rt = make_rt();
  auto inner = rt.spawn(wait_forever(&never, Tracked(&destroyed)));
  std::atomic<bool> outer_waiting{false};
  auto outer = rt.spawn([&, inner = std::move(inner)]() mutable -> Task<int> {
    Tracked local(&destroyed);
    outer_waiting = true;
    co_return co_await inner;
  });
  ASSERT_TRUE(eventually([&] { return outer_waiting.load(); }));
  rt.shutdown();
  EXPECT_THROW((void)outer.join(), TaskCancelled);
  EXPECT_EQ(destroyed.load(), 2);
}

TEST(Shutdown, SpawnAfterShutdownReportsTaskCancelledAndDropsTheTask) {
  std::atomic<int> destroyed{0};
  std::atomic<bool> ran{false};
  auto rt = make_rt();
  Handle handle = rt.handle();
  rt.shutdown();
  auto h1 = rt.spawn([&, t = Tracked(&destroyed)] { ran = true; });
  EXPECT_THROW(h1.join(), TaskCancelled);
  auto h2 = handle.spawn(wait_forever(nullptr, Tracked(&destroyed)));
  EXPECT_TRUE(h2.is_finished());
  EXPECT_THROW((void)h2.join(), TaskCancelled);
  EXPECT_FALSE(ran.load());
  EXPECT_EQ(destroyed.load(), 2);
}

TEST(Shutdown, HandleOutlivesRuntime) {
  std::atomic<int> destroyed{0};
  Handle handle;
  {
    auto rt = make_rt();
    handle = rt.handle();
  }
  auto h = handle.spawn([t = Tracked(&destroyed)] { return 1; });
  EXPECT_THROW((void)h.join(), TaskCancelled);
  EXPECT_EQ(destroyed.load(), 1);
}

TEST(Shutdown, SpawnInsideTaskAfterShutdownIsCancelled) {
  // A block_on root keeps running after shutdown; its spawns are refused.
  auto rt = make_rt();
  std::atomic<int> destroyed{0};
  std::thread t;
  Gate root_gate;
  std::atomic<bool> got_cancelled{false};
  t = std::thread([&] {
    rt.block_on([&]() -> Task<void> {
      co_await root_gate.wait();
      auto h = tideloop::spawn([tr = Tracked(&destroyed)] { return 1; });
      try {
        co_await h;
      } catch (const TaskCancelled&) {
        got_cancelled = true;
      }
    });
  });
  std::this_thread::sleep_for(5ms);
  rt.shutdown();
  root_gate.open();
  t.join();
  EXPECT_TRUE(got_cancelled.load());
  EXPECT_EQ(destroyed.load(), 1);
}

TEST(Shutdown, DestructorsThatSpawnAbortOrDropHandlesDuringShutdown) {
  // Task frames destroyed by shutdown run arbitrary destructors: dropping
  // other tasks' JoinHandles, aborting them, spawning new ones.
  Gate never;
  std::atomic<int> destroyed{0};
  auto rt = make_rt();
  struct OnDestroy {
    std::function<void()> f;
    ~OnDestroy() {
      if (f) f();
    }
  };
  std::atomic<int> holders_waiting{0};
  std::vector<JoinHandle<int>> victims;
  for (int i = 0; i < 50; ++i)
    victims.push_back(rt.spawn(wait_forever(&never, Tracked(&destroyed))));
  for (int i = 0; i < 50; ++i) {
    auto victim = std::make_shared<JoinHandle<int>>(std::move(victims[i]));
    rt.spawn([&, victim, i]() -> Task<void> {
        OnDestroy od{[&, victim, i] {
          if (i % 3 == 0) victim->abort();
          if (i % 3 == 1) *victim = JoinHandle<int>();  // drop it
          if (i % 3 == 2) {
            try {
              (void)Handle::current().spawn([t = Tracked(&destroyed)] { return 0; });
            } catch (const std::logic_error&) {
              // no runtime on the shutdown thread: fine too
              Tracked consume(&destroyed);
            }
          }
        }};
        holders_waiting.fetch_add(1);
        co_await never.wait();
      }).detach();
  }
  ASSERT_TRUE(eventually([&] { return holders_waiting.load() == 50; }));
  rt.shutdown();
  // 50 victims + 16 (i % 3 == 2) extra spawn captures or stand-ins
  EXPECT_EQ(destroyed.load(), 50 + 16);
}

TEST(Shutdown, TaskHoldingTheLastHandleToItsRuntime) {
  // A task frame owns a Handle; destroying the frame at shutdown drops it.
  Gate never;
  auto rt = make_rt();
  rt.spawn([h = rt.handle(), &never]() -> Task<void> { co_await never.wait(); }).detach();
  std::this_thread::sleep_for(2ms);
  rt.shutdown();
  SUCCEED();
}

TEST(Shutdown, RuntimeMoveAssignmentShutsDownTheOldOne) {
  Gate never;
  std::atomic<int> destroyed{0};
  auto rt = make_rt();
  auto h = rt.spawn(wait_forever(&never, Tracked(&destroyed)));
  rt = make_rt(1);
  EXPECT_THROW((void)h.join(), TaskCancelled);
  EXPECT_EQ(destroyed.load(), 1);
  EXPECT_EQ(rt.spawn([] { return 2; }).join(), 2);
}

TEST(Shutdown, ShutdownWhileTasksAreBusyDoesNotHang) {
  std::atomic<bool> stop{false};
  std::atomic<long> work{0};
  auto rt = make_rt();
  // Self-rescheduling tasks that keep every worker busy.
  for (int i = 0; i < 8; ++i) {
    rt.spawn([&]() -> Task<void> {
        for (;;) {
          work.fetch_add(1, std::memory_order_relaxed);
          co_await tideloop::yield_now();
        }
      }).detach();
  }
  ASSERT_TRUE(eventually([&] { return work.load() > 1000; }));
  const auto t0 = std::chrono::steady_clock::now();
  rt.shutdown();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
}

TEST(Shutdown, CurrentThreadRuntimeCancelsUnrunTasks) {
  std::atomic<int> destroyed{0};
  std::atomic<bool> ran{false};
  std::vector<JoinHandle<void>> hs;
  {
    auto rt = Runtime::Builder::current_thread().build();
    for (int i = 0; i < 100; ++i)
      hs.push_back(rt.spawn([&, t = Tracked(&destroyed)] { ran = true; }));
  }
  EXPECT_FALSE(ran.load());
  EXPECT_EQ(destroyed.load(), 100);
  for (auto& h : hs) EXPECT_THROW(h.join(), TaskCancelled);
}

}  // namespace
