// The owner set's worker-local lists (runtime/src/scheduler/owned_tasks.hpp):
// tasks spawned on one worker and finished on another are handed back to
// their owner through a lock-free stack. Checks: every such task is unlinked
// and freed (live count returns to zero, ASan sees no leak), a sleeping owner
// is woken to free them, and shutdown with hand-overs pending loses nothing.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "test_support.hpp"
#include "tideloop/runtime.hpp"

namespace {

using namespace std::chrono_literals;
using tideloop::Runtime;
using tideloop::Task;

struct Counted {
  std::atomic<long>* n;
  explicit Counted(std::atomic<long>* c) : n(c) { n->fetch_add(1); }
  Counted(Counted&& o) noexcept : n(o.n) { n->fetch_add(1); }
  Counted(const Counted&) = delete;
  ~Counted() { n->fetch_sub(1); }
};

Task<> burn(Counted c, std::atomic<long>* ran) {
  volatile int x = 0;
  for (int i = 0; i < 200; ++i) x = x + i;
  ran->fetch_add(1);
  co_return;
}

bool wait_until(const std::function<bool()>& f) {
  for (int i = 0; i < 500; ++i) {
    if (f()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return f();
}

TEST(OwnedTasksStress, TasksFinishedElsewhereAreFreed) {
  const long kTasks = tltest::scaled(40000, 10000, 4000);
  std::atomic<long> alive{0}, ran{0};
  {
    auto rt = Runtime::Builder::multi_thread().worker_threads(3).build();
    for (int round = 0; round < 3; ++round) {
      rt.block_on([&]() -> Task<> {
        // One task spawns them all: they are owned by its worker, and the
        // other workers steal and finish most of them.
        co_await tideloop::spawn([&]() -> Task<> {
          for (long i = 0; i < kTasks; ++i) tideloop::spawn(burn(Counted(&alive), &ran)).detach();
          co_return;
        });
      });
      ASSERT_TRUE(wait_until([&] { return ran.load() == (round + 1) * kTasks; }));
      // Frames are freed when the tasks complete; the owner-set entries when
      // their owner drains its hand-over stack (next spawn, tick or park).
      EXPECT_TRUE(wait_until([&] { return alive.load() == 0; }));
      EXPECT_TRUE(wait_until([&] { return rt.metrics().live_tasks == 0; }))
          << rt.metrics().live_tasks << " still counted live";
    }
  }
  EXPECT_EQ(alive.load(), 0);
}

TEST(OwnedTasksStress, ShutdownWithHandOversPending) {
  const long kTasks = tltest::scaled(20000, 5000, 2000);
  for (int round = 0; round < 5; ++round) {
    std::atomic<long> alive{0}, ran{0};
    {
      auto rt = Runtime::Builder::multi_thread().worker_threads(4).build();
      rt.spawn([&]() -> Task<> {
          for (long i = 0; i < kTasks; ++i) tideloop::spawn(burn(Counted(&alive), &ran)).detach();
          co_return;
        }).detach();
      std::this_thread::sleep_for(std::chrono::microseconds(200 * round));
    }  // shutdown: queued tasks are cancelled, finished ones freed
    EXPECT_EQ(alive.load(), 0) << "round " << round;
    EXPECT_LE(ran.load(), kTasks);
  }
}

}  // namespace
