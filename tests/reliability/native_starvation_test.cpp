// Starvation under sustained load: a task that yields (yield_now(), or a
// spent cooperative budget) must run again while other tasks keep every
// worker busy. Found by native_soak: the multi-thread scheduler requeued
// yielded tasks only when a worker ran out of other work, so next to
// channel ping-pong pairs (a worker's LIFO slot is never empty) a task that
// yielded once did not run again until the load stopped. The load here stops
// by itself after 20 s; the yielder must finish long before (it needs
// milliseconds): the test fails if it only finished because the load ended.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <vector>

#include "reliability_util.hpp"
#include "tideloop/runtime.hpp"
#include "tideloop/sync.hpp"

namespace {

using namespace std::chrono_literals;
using tideloop::JoinHandle;
using tideloop::Runtime;
using tideloop::Task;

// Two tasks bouncing a number through two channels until `until`.
Task<> ping_pong(std::chrono::steady_clock::time_point until, std::atomic<bool>* stop) {
  auto [atx, arx] = tideloop::mpsc::channel<int>(1);
  auto [btx, brx] = tideloop::mpsc::channel<int>(1);
  auto pong = tideloop::spawn(
      [](tideloop::mpsc::Receiver<int> rx, tideloop::mpsc::Sender<int> tx) -> Task<> {
        while (auto v = co_await rx.recv()) {
          if (!co_await tx.send(*v + 1)) co_return;
        }
      }(std::move(arx), std::move(btx)));
  while (!stop->load(std::memory_order_relaxed) && std::chrono::steady_clock::now() < until) {
    if (!co_await atx.send(1) || !co_await brx.recv()) break;
  }
  atx = {};
  co_await pong;
}

TEST(Starvation, YieldingTaskRunsWhileWorkersStayBusy) {
  auto rt = Runtime::Builder::multi_thread().worker_threads(2).build();
  std::atomic<bool> stop{false};
  const auto until = std::chrono::steady_clock::now() + 20s;
  std::vector<JoinHandle<void>> load;
  for (int i = 0; i < 4; ++i) load.push_back(rt.spawn(ping_pong(until, &stop)));
  std::this_thread::sleep_for(50ms);  // the load is running on both workers
  std::atomic<int> yields{0};
  const auto t0 = std::chrono::steady_clock::now();
  auto yielder = rt.spawn([&]() -> Task<> {
    for (int i = 0; i < 100; ++i) {
      co_await tideloop::yield_now();
      yields.fetch_add(1);
    }
  });
  // Joined from this thread: returns when the yielder is done.
  yielder.join();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const bool load_still_running = std::chrono::steady_clock::now() < until && !stop.load();
  stop = true;
  for (auto& h : load) h.join();
  std::printf("100 yields under load took %.3f s\n", secs);
  EXPECT_EQ(yields.load(), 100);
  EXPECT_TRUE(load_still_running) << "the yielding task ran only after the load ended";
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
