// Builder::idle_linger: the last awake worker spins for new work before it
// sleeps. Checks that work arriving while it lingers runs exactly once (remote
// spawns, wake-ups from foreign threads, local spawns after a linger), that a
// linger ending without work still parks and wakes correctly, and that
// shutdown during a linger neither hangs nor loses a task. Runs under TSan.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "test_support.hpp"
#include "tideloop/runtime.hpp"
#include "tideloop/sync/oneshot.hpp"
#include "tideloop/time.hpp"

namespace {

using namespace std::chrono_literals;
using tideloop::Runtime;
using tideloop::Task;

Runtime lingering(std::size_t workers, std::chrono::microseconds d) {
  return Runtime::Builder::multi_thread().worker_threads(workers).idle_linger(d).build();
}

TEST(LingerStress, RemoteSpawnsDuringAndAfterLingerRunOnce) {
  const int kRounds = static_cast<int>(tltest::scaled(3000, 600, 300));
  for (std::size_t workers : {1, 2}) {
    auto rt = lingering(workers, 200us);
    std::vector<std::atomic<int>> ran(kRounds);
    for (int r = 0; r < kRounds; ++r) {
      // Alternate: right away (a worker is lingering), after the linger ran
      // out (workers asleep), and a small burst.
      if (r % 3 == 1) std::this_thread::sleep_for(300us);
      const int n = r % 3 == 2 ? 8 : 1;
      std::vector<tideloop::JoinHandle<void>> hs;
      for (int k = 0; k < n; ++k)
        hs.push_back(rt.spawn([&ran, r] { ran[r].fetch_add(1, std::memory_order_relaxed); }));
      for (auto& h : hs) h.join();
      ASSERT_EQ(ran[r].load(), n) << "round " << r << ", workers=" << workers;
    }
  }
}

TEST(LingerStress, ForeignWakeupsAndTimersWhileLingering) {
  const int kTasks = static_cast<int>(tltest::scaled(2000, 500, 200));
  auto rt = lingering(2, 100us);
  std::atomic<int> done{0};
  std::vector<tideloop::oneshot::Sender<int>> txs;
  std::vector<tideloop::JoinHandle<void>> hs;
  for (int i = 0; i < kTasks; ++i) {
    auto [tx, rx] = tideloop::oneshot::channel<int>();
    txs.push_back(std::move(tx));
    hs.push_back(rt.spawn([&done, i, rx = std::move(rx)]() mutable -> Task<> {
      int v = co_await rx;
      if (i % 50 == 0) co_await tideloop::sleep(1ms);  // a timer during lingers
      done.fetch_add(v, std::memory_order_relaxed);
    }));
  }
  // Fire them from this (foreign) thread with gaps around the linger length.
  for (int i = 0; i < kTasks; ++i) {
    txs[static_cast<std::size_t>(i)].send(1);
    if (i % 16 == 0) std::this_thread::sleep_for(std::chrono::microseconds(50 * (i % 5)));
  }
  for (auto& h : hs) h.join();
  EXPECT_EQ(done.load(), kTasks);
}

TEST(LingerStress, ShutdownWhileLingeringLosesNothing) {
  const int kRounds = static_cast<int>(tltest::scaled(200, 50, 20));
  for (int r = 0; r < kRounds; ++r) {
    std::atomic<int> dropped{0}, ran{0};
    {
      auto rt = lingering(1 + r % 2, 10ms);
      // Finished work leaves the workers lingering; then a task that never
      // completes, which shutdown must cancel (its destructor runs).
      rt.spawn([&ran] { ran.fetch_add(1); }).join();
      rt.spawn([t = tltest::Tracked(&dropped)]() -> Task<> {
          co_await tideloop::sleep(1h);
        }).detach();
      std::this_thread::sleep_for(std::chrono::microseconds(r % 7 * 100));
    }  // shutdown while a worker may be lingering
    EXPECT_EQ(ran.load(), 1);
    EXPECT_EQ(dropped.load(), 1) << "round " << r;
  }
}

}  // namespace
