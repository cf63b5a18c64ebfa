// spawn_blocking: values and exceptions through the JoinHandle, runs off
// the workers, threads on demand, runtime context inside, cancellation of
// queued jobs, shutdown waiting for running ones.
#include <gtest/gtest.h>
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tideloop/runtime.hpp"
#include "tideloop/spawn_blocking.hpp"
#include "tideloop/time.hpp"

namespace {

using namespace std::chrono_literals;
using tideloop::JoinHandle;
using tideloop::Runtime;
using tideloop::Task;

std::string thread_name() {
  char buf[32] = {};
  pthread_getname_np(pthread_self(), buf, sizeof buf);
  return buf;
}

Runtime make_rt(bool multi) {
  return multi ? Runtime::Builder::multi_thread().worker_threads(2).build()
               : Runtime::Builder::current_thread().build();
}

class Blocking : public ::testing::TestWithParam<bool> {};
INSTANTIATE_TEST_SUITE_P(Runtime, Blocking, ::testing::Values(true, false), [](const auto& info) {
  return info.param ? "MultiThread" : "CurrentThread";
});

TEST_P(Blocking, ReturnsValueOnAPoolThread) {
  auto rt = make_rt(GetParam());
  auto caller = std::this_thread::get_id();
  rt.block_on([&]() -> Task<> {
    auto h = tideloop::spawn_blocking([caller] {
      EXPECT_NE(std::this_thread::get_id(), caller);
      return thread_name();
    });
    const std::string name = co_await h;
    EXPECT_NE(name.find("blk"), std::string::npos) << name;
  });
}

TEST_P(Blocking, ExceptionsPropagate) {
  auto rt = make_rt(GetParam());
  EXPECT_THROW(rt.block_on([]() -> Task<> {
    auto h = tideloop::spawn_blocking([]() -> int { throw std::runtime_error("boom"); });
    (void)co_await h;
  }),
               std::runtime_error);
}

TEST_P(Blocking, ManyBlockingJobsRunInParallel) {
  auto rt = make_rt(GetParam());
  const auto t0 = tideloop::Clock::now();
  rt.block_on([]() -> Task<> {
    std::vector<JoinHandle<int>> hs;
    for (int i = 0; i < 32; ++i)
      hs.push_back(tideloop::spawn_blocking([i] {
        std::this_thread::sleep_for(100ms);
        return i;
      }));
    int sum = 0;
    for (auto& h : hs) sum += co_await h;
    EXPECT_EQ(sum, 31 * 32 / 2);
  });
  // Threads on demand: 32 sleeping jobs overlap instead of queueing.
  EXPECT_LT(tideloop::Clock::now() - t0, 1500ms);
}

TEST_P(Blocking, WorkersKeepRunningWhileJobsBlock) {
  auto rt = make_rt(GetParam());
  rt.block_on([]() -> Task<> {
    auto h = tideloop::spawn_blocking([] { std::this_thread::sleep_for(200ms); });
    // Timers still fire on the runtime meanwhile.
    const auto t0 = tideloop::Clock::now();
    co_await tideloop::sleep(10ms);
    EXPECT_LT(tideloop::Clock::now() - t0, 150ms);
    co_await h;
  });
}

TEST_P(Blocking, RuntimeContextInsideTheJob) {
  auto rt = make_rt(GetParam());
  rt.block_on([]() -> Task<> {
    auto h = tideloop::spawn_blocking([] {
      // spawn() from the pool thread targets the runtime.
      return tideloop::spawn([]() -> Task<int> { co_return 5; }());
    });
    auto inner = co_await h;
    EXPECT_EQ(co_await inner, 5);
  });
}

TEST_P(Blocking, JoinFromOutsideTheRuntime) {
  auto rt = make_rt(GetParam());
  auto h = rt.block_on(
      []() -> Task<JoinHandle<int>> { co_return tideloop::spawn_blocking([] { return 9; }); });
  EXPECT_EQ(h.join(), 9);
}

TEST(BlockingShutdown, QueuedJobsAreCancelledRunningOnesFinish) {
  std::atomic<bool> finished{false};
  std::atomic<int> ran_queued{0};
  JoinHandle<void> running;
  std::vector<JoinHandle<void>> queued;
  {
    auto rt = Runtime::Builder::multi_thread().worker_threads(1).max_blocking_threads(1).build();
    rt.block_on([&]() -> Task<> {
      running = tideloop::spawn_blocking([&] {
        std::this_thread::sleep_for(100ms);
        finished = true;
      });
      for (int i = 0; i < 5; ++i) queued.push_back(tideloop::spawn_blocking([&] { ran_queued++; }));
      co_await tideloop::sleep(10ms);
    });
  }  // shutdown waits for the running job, drops the queued ones
  EXPECT_TRUE(finished.load());
  EXPECT_NO_THROW(running.join());
  EXPECT_EQ(ran_queued.load(), 0);
  for (auto& h : queued) EXPECT_THROW(h.join(), tideloop::TaskCancelled);
}

TEST(BlockingShutdown, AbortBeforeItRuns) {
  auto rt = Runtime::Builder::multi_thread().worker_threads(1).max_blocking_threads(1).build();
  rt.block_on([]() -> Task<> {
    auto first = tideloop::spawn_blocking([] { std::this_thread::sleep_for(50ms); });
    std::atomic<bool> ran{false};
    auto second = tideloop::spawn_blocking([&] { ran = true; });
    second.abort();
    EXPECT_THROW(co_await second, tideloop::TaskCancelled);
    co_await first;
    EXPECT_FALSE(ran.load());
  });
}

TEST(BlockingMisuse, OutsideARuntimeThrows) {
  EXPECT_THROW((void)tideloop::spawn_blocking([] {}), std::logic_error);
}

}  // namespace
