// Stress: shut runtimes down while tasks are running, queued, suspended and
// spawning, while foreign threads spawn, wake and abort. Shutdown must not
// hang, and every task's state (captures, frame locals) is destroyed exactly
// once, whatever the task was doing.
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
using tideloop::Handle;
using tideloop::JoinHandle;
using tideloop::Runtime;
using tideloop::Task;
using tideloop::TaskCancelled;

using tltest::scaled;

// Counts constructions and destructions of live (not moved-from) instances.
struct Ledger {
  std::atomic<long> created{0}, destroyed{0};
};
struct Tracked {
  Ledger* l;
  explicit Tracked(Ledger* x) : l(x) { l->created.fetch_add(1, std::memory_order_relaxed); }
  Tracked(Tracked&& o) noexcept : l(std::exchange(o.l, nullptr)) {}
  Tracked(const Tracked&) = delete;
  ~Tracked() {
    if (l) l->destroyed.fetch_add(1, std::memory_order_relaxed);
  }
};

using tltest::Gate;

Task<int> child(Ledger* l, Gate* g) {
  Tracked local(l);
  co_await g->wait();
  co_return 1;
}

// Spawns an endless family: each task spawns a child and yields, so at any
// moment some are queued, some running, some in LIFO slots.
Task<void> breeder(Ledger* l, std::atomic<bool>* stop, int depth) {
  Tracked local(l);
  while (!stop->load(std::memory_order_relaxed)) {
    if (depth < 3) tideloop::spawn(breeder(l, stop, depth + 1)).detach();
    co_await tideloop::yield_now();
    if (depth > 0) co_return;
  }
}

TEST(ShutdownStress, MixedTasksInFlight) {
  const long rounds = scaled(200, 60, 60);
  Ledger ledger;
  std::minstd_rand rng(42);
  long joined_values = 0, joined_cancelled = 0;
  for (long r = 0; r < rounds; ++r) {
    std::vector<std::unique_ptr<Gate>> gates;
    for (int i = 0; i < 16; ++i) gates.push_back(std::make_unique<Gate>());
    std::atomic<bool> stop{false};
    std::vector<JoinHandle<int>> handles;
    std::thread foreign;
    {
      auto rt = Runtime::Builder::multi_thread().worker_threads(2).build();
      Handle h = rt.handle();
      for (int i = 0; i < 4; ++i) rt.spawn(breeder(&ledger, &stop, 0)).detach();
      for (int i = 0; i < 16; ++i) {
        Gate* g = gates[static_cast<std::size_t>(i)].get();
        handles.push_back(rt.spawn([t = Tracked(&ledger), l = &ledger, g]() -> Task<int> {
          co_return co_await child(l, g) + 1;
        }));
      }
      // A foreign thread keeps spawning, opening gates and aborting while
      // the runtime shuts down under it.
      std::mutex hm;
      std::vector<JoinHandle<int>> foreign_handles;
      foreign = std::thread([&, seed = rng()] {
        std::minstd_rand frng(seed);
        for (int i = 0; i < 64; ++i) {
          auto fh = h.spawn([t = Tracked(&ledger)]() -> Task<int> {
            co_await tideloop::yield_now();
            co_return 2;
          });
          if (frng() % 3 == 0) fh.abort();
          if (i < 16 && frng() % 2) gates[static_cast<std::size_t>(i)]->open();
          std::lock_guard<std::mutex> g(hm);
          foreign_handles.push_back(std::move(fh));
        }
      });
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
      // Runtime destructor: shutdown with everything in flight.
      {
        std::lock_guard<std::mutex> g(hm);
        for (auto& fh : foreign_handles) handles.push_back(std::move(fh));
        foreign_handles.clear();
      }
      rt.shutdown();
      foreign.join();
      for (auto& fh : foreign_handles) handles.push_back(std::move(fh));
    }
    stop = true;
    for (auto& hd : handles) {
      try {
        joined_values += hd.join() > 0;
      } catch (const TaskCancelled&) {
        ++joined_cancelled;
      }
    }
  }
  EXPECT_EQ(ledger.created.load(), ledger.destroyed.load());
  EXPECT_GT(joined_values + joined_cancelled, 0);
  std::printf("created %ld, joined %ld values, %ld cancelled\n", ledger.created.load(),
              joined_values, joined_cancelled);
}

// Spawns racing shutdown from several foreign threads: each handle reports
// the value or TaskCancelled; nothing leaks or runs twice.
TEST(ShutdownStress, SpawnsRacingShutdown) {
  const long rounds = scaled(200, 60, 60);
  Ledger ledger;
  std::atomic<long> ran{0};
  long values = 0, cancelled = 0;
  for (long r = 0; r < rounds; ++r) {
    auto rt = std::make_unique<Runtime>(Runtime::Builder::multi_thread().worker_threads(2).build());
    Handle h = rt->handle();
    std::atomic<bool> go{false};
    std::vector<std::thread> spawners;
    std::vector<std::vector<JoinHandle<int>>> per(3);
    for (int t = 0; t < 3; ++t) {
      spawners.emplace_back([&, t] {
        while (!go.load()) {
        }
        for (int i = 0; i < 100; ++i) {
          per[static_cast<std::size_t>(t)].push_back(h.spawn([tr = Tracked(&ledger), &ran] {
            ran.fetch_add(1, std::memory_order_relaxed);
            return 1;
          }));
        }
      });
    }
    go = true;
    std::this_thread::sleep_for(std::chrono::microseconds(r % 200));
    rt.reset();  // shutdown + destroy while spawns are in flight
    for (auto& t : spawners) t.join();
    for (auto& v : per) {
      for (auto& hd : v) {
        try {
          values += hd.join();
        } catch (const TaskCancelled&) {
          ++cancelled;
        }
      }
    }
  }
  EXPECT_EQ(values + cancelled, rounds * 300);
  EXPECT_EQ(values, ran.load());
  EXPECT_EQ(ledger.created.load(), ledger.destroyed.load());
}

// Many short-lived runtimes, current-thread and multi-thread, each dropped
// with work pending.
TEST(ShutdownStress, RepeatedCreateAndDrop) {
  const long rounds = scaled(500, 150, 150);
  Ledger ledger;
  Gate never;
  for (long r = 0; r < rounds; ++r) {
    const bool mt = r % 2;
    auto rt = mt ? Runtime::Builder::multi_thread().worker_threads(1 + r % 3).build()
                 : Runtime::Builder::current_thread().build();
    for (int i = 0; i < 20; ++i) {
      rt.spawn([t = Tracked(&ledger), &never, i]() -> Task<void> {
          if (i % 2) co_await never.wait();
          co_await tideloop::yield_now();
        }).detach();
    }
    if (!mt) {
      rt.block_on([]() -> Task<void> {
        co_await tideloop::yield_now();
        co_return;
      });
    }
  }
  EXPECT_EQ(ledger.created.load(), ledger.destroyed.load());
  EXPECT_EQ(ledger.created.load(), rounds * 20);
}

}  // namespace
