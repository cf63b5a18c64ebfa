// The current-thread runtime: tasks run only on the thread inside block_on,
// FIFO order, wake-ups and spawns from other threads reach the driver.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
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
using tideloop::Handle;
using tideloop::JoinHandle;
using tideloop::Runtime;
using tideloop::Task;
using tideloop::TaskCancelled;

// --- test helpers ---

using tltest::Gate;

Runtime make_ct() {
  return Runtime::Builder::current_thread().build();
}

TEST(CurrentThread, BlockOnRunsEverythingOnTheCallingThread) {
  auto rt = make_ct();
  const auto me = std::this_thread::get_id();
  auto body = [me]() -> Task<int> {
    EXPECT_EQ(std::this_thread::get_id(), me);
    std::vector<JoinHandle<std::thread::id>> hs;
    for (int i = 0; i < 100; ++i)
      hs.push_back(tideloop::spawn([]() -> Task<std::thread::id> {
        co_await tideloop::yield_now();
        co_return std::this_thread::get_id();
      }));
    int same = 0;
    for (auto& h : hs) same += (co_await h) == me;
    co_return same;
  };
  EXPECT_EQ(rt.block_on(body), 100);
}

TEST(CurrentThread, SpawnedTasksRunOnlyInsideBlockOn) {
  auto rt = make_ct();
  std::atomic<int> ran{0};
  auto h = rt.spawn([&] { return ++ran; });
  std::this_thread::sleep_for(5ms);
  EXPECT_EQ(ran.load(), 0);
  EXPECT_FALSE(h.is_finished());
  // Any block_on drives the queue; awaiting the handle is enough.
  EXPECT_EQ(rt.block_on([&]() -> Task<int> { co_return co_await h; }), 1);
}

TEST(CurrentThread, TasksLeftQueuedSurviveBetweenBlockOnCalls) {
  auto rt = make_ct();
  Gate gate;
  std::atomic<int> stage{0};
  auto h = rt.spawn([&]() -> Task<int> {
    stage = 1;
    co_await gate.wait();
    stage = 2;
    co_return 7;
  });
  rt.block_on([]() -> Task<void> {
    co_await tideloop::yield_now();  // lets the spawned task start
  });
  EXPECT_EQ(stage.load(), 1);
  gate.open();
  EXPECT_EQ(rt.block_on([&]() -> Task<int> { co_return co_await h; }), 7);
  EXPECT_EQ(stage.load(), 2);
}

TEST(CurrentThread, FifoOrderAndYieldNow) {
  auto rt = make_ct();
  std::vector<int> order;
  rt.block_on([&]() -> Task<void> {
    std::vector<JoinHandle<void>> hs;
    for (int i = 0; i < 5; ++i)
      hs.push_back(tideloop::spawn([&order, i]() -> Task<void> {
        order.push_back(i);
        co_await tideloop::yield_now();
        order.push_back(10 + i);
      }));
    for (auto& h : hs) co_await h;
  });
  const std::vector<int> want{0, 1, 2, 3, 4, 10, 11, 12, 13, 14};
  EXPECT_EQ(order, want);
}

TEST(CurrentThread, YieldNowLetsEveryReadyTaskRunFirst) {
  auto rt = make_ct();
  int ran = 0;
  auto h = rt.spawn([&]() -> Task<int> {
    for (int i = 0; i < 10; ++i) tideloop::spawn([&] { ++ran; }).detach();
    co_await tideloop::yield_now();
    co_return ran;
  });
  EXPECT_EQ(rt.block_on([&]() -> Task<int> { co_return co_await h; }), 10);
}

TEST(CurrentThread, RemoteSpawnAndRemoteWakeReachTheDriver) {
  auto rt = make_ct();
  Handle handle = rt.handle();
  Gate gate;
  std::thread remote([&] {
    std::this_thread::sleep_for(10ms);
    gate.open();  // wakes the root from another thread
  });
  rt.block_on([&]() -> Task<void> { co_await gate.wait(); });
  remote.join();

  // A task spawned from another thread while the driver is parked.
  std::atomic<int> ran{0};
  JoinHandle<int> h;
  std::mutex mu;
  Gate spawned;
  std::thread spawner([&] {
    std::this_thread::sleep_for(10ms);
    {
      std::lock_guard<std::mutex> g(mu);
      h = handle.spawn([&] { return ++ran; });
    }
    spawned.open();
  });
  int v = rt.block_on([&]() -> Task<int> {
    co_await spawned.wait();
    JoinHandle<int> mine;
    {
      std::lock_guard<std::mutex> g(mu);
      mine = std::move(h);
    }
    co_return co_await mine;
  });
  spawner.join();
  EXPECT_EQ(v, 1);
}

TEST(CurrentThread, BlockOnFromSeveralThreadsIsSerializedAndCompletes) {
  auto rt = make_ct();
  std::vector<std::thread> threads;
  std::atomic<long> total{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int r = 0; r < 10; ++r) {
        total += rt.block_on([]() -> Task<long> {
          std::vector<JoinHandle<long>> hs;
          for (long i = 0; i < 20; ++i)
            hs.push_back(tideloop::spawn([i]() -> Task<long> {
              co_await tideloop::yield_now();
              co_return i;
            }));
          long s = 0;
          for (auto& h : hs) s += co_await h;
          co_return s;
        });
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(total.load(), 4 * 10 * (19 * 20 / 2));
}

TEST(CurrentThread, ExceptionsPropagate) {
  auto rt = make_ct();
  EXPECT_THROW(rt.block_on([]() -> Task<int> {
    auto h = tideloop::spawn([]() -> int { throw std::range_error("x"); });
    co_return co_await h;
  }),
               std::range_error);
  EXPECT_THROW(rt.block_on([]() -> Task<void> {
    throw std::domain_error("root");
    co_return;
  }),
               std::domain_error);
}

TEST(CurrentThread, HandleCurrentAndSpawnInsideBlockOn) {
  auto rt = make_ct();
  EXPECT_EQ(rt.block_on([]() -> Task<int> {
    co_return co_await Handle::current().spawn([] { return 6; });
  }),
            6);
  EXPECT_THROW(Handle::current(), std::logic_error);
}

TEST(CurrentThread, BusyTaskDoesNotStarveTheRootOrRemoteSpawns) {
  auto rt = make_ct();
  std::atomic<bool> stop{false};
  auto spinner = rt.spawn([&]() -> Task<void> {
    while (!stop.load()) co_await tideloop::yield_now();
  });
  Handle handle = rt.handle();
  std::atomic<int> remote_ran{0};
  std::thread remote([&] {
    for (int i = 0; i < 50; ++i) handle.spawn([&] { remote_ran.fetch_add(1); }).detach();
  });
  rt.block_on([&]() -> Task<void> {
    while (remote_ran.load() < 50) co_await tideloop::yield_now();
    stop = true;
    co_await spinner;
  });
  remote.join();
  EXPECT_EQ(remote_ran.load(), 50);
}

TEST(CurrentThread, AbortAndShutdown) {
  std::atomic<int> ran{0};
  Gate never;
  JoinHandle<int> suspended;
  {
    auto rt = make_ct();
    auto queued = rt.spawn([&] { return ++ran; });
    queued.abort();
    suspended = rt.spawn([&]() -> Task<int> {
      co_await never.wait();
      co_return 1;
    });
    rt.block_on([&]() -> Task<void> {
      try {
        co_await queued;
      } catch (const TaskCancelled&) {
        ran += 100;
      }
    });
    EXPECT_FALSE(suspended.is_finished());
  }
  EXPECT_EQ(ran.load(), 100);
  EXPECT_THROW((void)suspended.join(), TaskCancelled);
}

TEST(CurrentThread, Metrics) {
  auto rt = make_ct();
  rt.block_on([]() -> Task<void> {
    for (int i = 0; i < 10; ++i) co_await tideloop::spawn([] {});
  });
  auto m = rt.metrics();
  EXPECT_EQ(m.workers, 0u);
  EXPECT_EQ(m.spawned, 10u);
  EXPECT_GE(m.polls, 11u);
  EXPECT_EQ(m.live_tasks, 0u);
}

}  // namespace
