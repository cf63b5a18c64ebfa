// Stress: JoinHandle::abort() from other threads while the task is queued,
// running, suspended or completing. The joiner sees the value or
// TaskCancelled, never a crash; the task's state is destroyed exactly once;
// abort is idempotent and may be called concurrently.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <random>
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

using tltest::scaled;

using Tracked = tltest::BasicTracked<long>;

using tltest::Gate;

void spin(unsigned n) {
  for (unsigned i = 0; i < n; ++i) asm volatile("" ::: "memory");
}

struct Outcomes {
  long values = 0, cancelled = 0;
};

// One round: spawn a task of the given shape, abort it from another thread
// after a random delay, join, check.
Outcomes abort_race_rounds(Runtime& rt, long rounds, int shape) {
  Outcomes out;
  std::atomic<long> destroyed{0};
  std::minstd_rand rng(static_cast<unsigned>(shape) * 7919u + 1);
  for (long r = 0; r < rounds; ++r) {
    auto gate = std::make_shared<Gate>();
    JoinHandle<int> h;
    switch (shape) {
      case 0:  // completes at once
        h = rt.spawn([t = Tracked(&destroyed)] { return 1; });
        break;
      case 1:  // yields a few times
        h = rt.spawn([t = Tracked(&destroyed)]() -> Task<int> {
          for (int i = 0; i < 3; ++i) co_await tideloop::yield_now();
          co_return 1;
        });
        break;
      default:  // suspended until another thread opens the gate
        h = rt.spawn([t = Tracked(&destroyed), gate]() -> Task<int> {
          co_await gate->wait();
          co_return 1;
        });
        break;
    }
    const unsigned delay = rng() % 2000;
    const unsigned gate_delay = rng() % 2000;
    std::thread aborter([&h, delay] {
      spin(delay);
      h.abort();
      h.abort();  // idempotent
    });
    if (shape == 2) {
      spin(gate_delay);
      gate->open();
    }
    aborter.join();
    try {
      EXPECT_EQ(h.join(), 1);
      ++out.values;
    } catch (const TaskCancelled&) {
      ++out.cancelled;
    }
  }
  EXPECT_EQ(destroyed.load(), rounds);
  return out;
}

TEST(AbortStress, AbortRacesWithRunningQueuedSuspendedAndCompleting) {
  const long rounds = scaled(3000, 1000, 1000);
  auto rt = Runtime::Builder::multi_thread().worker_threads(2).build();
  for (int shape = 0; shape < 3; ++shape) {
    Outcomes o = abort_race_rounds(rt, rounds, shape);
    EXPECT_EQ(o.values + o.cancelled, rounds);
    std::printf("shape %d: %ld values, %ld cancelled\n", shape, o.values, o.cancelled);
  }
}

TEST(AbortStress, ConcurrentAbortsOfOneTask) {
  const long rounds = scaled(2000, 500, 500);
  auto rt = Runtime::Builder::multi_thread().worker_threads(2).build();
  std::atomic<long> destroyed{0};
  for (long r = 0; r < rounds; ++r) {
    auto h = rt.spawn([t = Tracked(&destroyed)]() -> Task<int> {
      co_await tideloop::yield_now();
      co_return 1;
    });
    std::atomic<bool> go{false};
    std::vector<std::thread> ts;
    for (int i = 0; i < 3; ++i) {
      ts.emplace_back([&] {
        while (!go.load()) {
        }
        h.abort();
      });
    }
    go = true;
    for (auto& t : ts) t.join();
    try {
      (void)h.join();
    } catch (const TaskCancelled&) {
    }
  }
  EXPECT_EQ(destroyed.load(), rounds);
}

// The joiner is itself a task awaiting the victim while another task aborts it.
TEST(AbortStress, AbortWhileAnotherTaskAwaits) {
  const long rounds = scaled(2000, 500, 500);
  auto rt = Runtime::Builder::multi_thread().worker_threads(2).build();
  std::atomic<long> destroyed{0}, cancelled{0}, values{0};
  std::vector<JoinHandle<void>> joiners;
  for (long r = 0; r < rounds; ++r) {
    auto gate = std::make_shared<Gate>();
    auto victim =
        std::make_shared<JoinHandle<int>>(rt.spawn([t = Tracked(&destroyed), gate]() -> Task<int> {
          co_await gate->wait();
          co_return 1;
        }));
    // Abort from a task while the gate may open concurrently.
    rt.spawn([victim, gate, r] {
        if (r % 2) gate->open();
        victim->abort();
      }).join();
    joiners.push_back(rt.spawn([victim, &cancelled, &values]() -> Task<void> {
      try {
        values += co_await *victim;
      } catch (const TaskCancelled&) {
        ++cancelled;
      }
    }));
  }
  for (auto& j : joiners) j.join();
  EXPECT_EQ(cancelled.load() + values.load(), rounds);
  EXPECT_EQ(destroyed.load(), rounds);
}

}  // namespace
