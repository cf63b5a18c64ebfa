// The multi-thread scheduler: spawning from inside and outside, Handle,
// yield_now ordering, LIFO-slot and injector fairness, stealing, block_on from
// several threads, Builder hooks, metrics.
#include <gtest/gtest.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
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

// --- test helpers ---

// A reusable one-shot event: tasks await it, any thread sets it.
using tltest::Signal;

using tltest::eventually;

std::string this_thread_name() {
  char buf[32] = {};
  pthread_getname_np(pthread_self(), buf, sizeof buf);
  return buf;
}

Runtime make_rt(std::size_t workers = 2) {
  return Runtime::Builder::multi_thread().worker_threads(workers).build();
}

// --- spawning ---

TEST(MultiThread, SpawnFromOutsideAndFromTasks) {
  auto rt = make_rt();
  std::vector<JoinHandle<int>> hs;
  for (int i = 0; i < 100; ++i) hs.push_back(rt.spawn([i] { return i; }));
  long sum = 0;
  for (auto& h : hs) sum += h.join();
  EXPECT_EQ(sum, 99 * 100 / 2);

  auto parent = []() -> Task<long> {
    std::vector<JoinHandle<long>> children;
    for (long i = 0; i < 1000; ++i) {
      children.push_back(tideloop::spawn([i]() -> Task<long> {
        co_await tideloop::yield_now();
        co_return i;
      }));
    }
    long s = 0;
    for (auto& c : children) s += co_await c;
    co_return s;
  };
  EXPECT_EQ(rt.spawn(parent).join(), 999L * 1000 / 2);
}

TEST(MultiThread, HandleSpawnsFromForeignThreads) {
  auto rt = make_rt();
  Handle h = rt.handle();
  EXPECT_TRUE(h.valid());
  std::atomic<int> ran{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, h] {
      std::vector<JoinHandle<void>> js;
      for (int i = 0; i < 250; ++i) js.push_back(h.spawn([&] { ran.fetch_add(1); }));
      for (auto& j : js) j.join();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ran.load(), 1000);
}

TEST(MultiThread, HandleCurrentInsideTasksAndBlockOn) {
  auto rt = make_rt();
  auto in_task = rt.spawn([]() -> Task<int> {
    Handle h = Handle::current();
    EXPECT_TRUE(h.valid());
    co_return co_await h.spawn([] { return 3; });
  });
  EXPECT_EQ(in_task.join(), 3);
  EXPECT_EQ(rt.block_on([]() -> Task<int> {
    co_return co_await Handle::current().spawn([] { return 4; });
  }),
            4);
}

TEST(MultiThread, OutsideARuntimeHandleCurrentAndSpawnThrow) {
  EXPECT_THROW(Handle::current(), std::logic_error);
  EXPECT_THROW((void)tideloop::spawn([] {}), std::logic_error);
  EXPECT_THROW((void)tideloop::spawn([]() -> Task<void> { co_return; }()), std::logic_error);
  // Also on a thread that merely outlived a runtime.
  { auto rt = make_rt(1); }
  EXPECT_THROW(Handle::current(), std::logic_error);
}

// Counts destructions of the live (not moved-from) instance only.
using tltest::Tracked;

Task<int> holds(Tracked t) {
  (void)t;
  co_return 1;
}

TEST(MultiThread, BlockOnFromInsideATaskThrowsAndDropsTheTask) {
  auto rt = make_rt();
  std::atomic<int> destroyed{0};
  auto h = rt.spawn([&]() -> Task<bool> {
    try {
      rt.block_on(holds(Tracked(&destroyed)));
    } catch (const std::logic_error&) {
      co_return true;
    }
    co_return false;
  });
  EXPECT_TRUE(h.join());
  // The rejected task's frame (and its parameter) must not leak.
  EXPECT_EQ(destroyed.load(), 1);
}

TEST(MultiThread, BlockOnFromSeveralThreadsConcurrently) {
  auto rt = make_rt();
  constexpr int kThreads = 4;
  std::vector<long> results(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        results[t] = rt.block_on([t]() -> Task<long> {
          std::vector<JoinHandle<long>> hs;
          for (long i = 0; i < 50; ++i)
            hs.push_back(tideloop::spawn([i, t]() -> Task<long> {
              co_await tideloop::yield_now();
              co_return i*(t + 1);
            }));
          long s = 0;
          for (auto& h : hs) s += co_await h;
          co_return s;
        });
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(results[t], 49L * 50 / 2 * (t + 1));
}

// --- yield_now ---

TEST(MultiThread, YieldNowLetsEveryReadyTaskRunFirst) {
  for (bool lifo : {true, false}) {
    auto b = Runtime::Builder::multi_thread().worker_threads(1);
    if (!lifo) b.disable_lifo_slot();
    auto rt = b.build();
    std::atomic<int> ran{0};
    auto h = rt.spawn([&ran]() -> Task<int> {
      for (int i = 0; i < 10; ++i) tideloop::spawn([&ran] { ran.fetch_add(1); }).detach();
      co_await tideloop::yield_now();
      co_return ran.load();
    });
    EXPECT_EQ(h.join(), 10) << "lifo=" << lifo;
  }
}

TEST(MultiThread, YieldNowOrdering) {
  for (bool lifo : {true, false}) {
    auto b = Runtime::Builder::multi_thread().worker_threads(1);
    if (!lifo) b.disable_lifo_slot();
    auto rt = b.build();
    std::mutex mu;
    std::vector<std::string> log;
    auto note = [&](std::string s) {
      std::lock_guard<std::mutex> g(mu);
      log.push_back(std::move(s));
    };
    auto h = rt.spawn([&]() -> Task<void> {
      note("a1");
      auto other = tideloop::spawn([&]() -> Task<void> {
        note("b1");
        co_await tideloop::yield_now();
        note("b2");
      });
      co_await tideloop::yield_now();
      note("a2");
      co_await tideloop::yield_now();
      note("a3");
      co_await other;
    });
    h.join();
    const std::vector<std::string> want{"a1", "b1", "a2", "b2", "a3"};
    EXPECT_EQ(log, want) << "lifo=" << lifo;
  }
}

TEST(MultiThread, YieldingTaskAloneMakesProgress) {
  auto rt = make_rt();
  auto h = rt.spawn([]() -> Task<int> {
    for (int i = 0; i < 10000; ++i) co_await tideloop::yield_now();
    co_return 1;
  });
  EXPECT_EQ(h.join(), 1);
}

// --- fairness ---

// Two tasks waking each other through the LIFO slot must not starve a third
// task sitting in the same worker's run queue.
TEST(MultiThread, LifoPingPongDoesNotStarveAQueuedTask) {
  auto rt = make_rt(1);
  Signal to_a, to_b;
  std::atomic<bool> stop{false};
  std::atomic<long> rounds{0};
  std::atomic<bool> third_ran{false};
  auto a = rt.spawn([&]() -> Task<void> {
    while (!stop.load()) {
      if (rounds.fetch_add(1) == 1000) {
        // Spawned from the worker: lands in the LIFO slot and is pushed to
        // the run queue by the next wake-up of the pair.
        tideloop::spawn([&] {
          third_ran = true;
          stop = true;
        }).detach();
      }
      to_b.set();
      co_await to_a.wait();
    }
    to_b.set();
  });
  auto b = rt.spawn([&]() -> Task<void> {
    while (!stop.load()) {
      to_a.set();
      co_await to_b.wait();
    }
    to_a.set();
  });
  EXPECT_TRUE(eventually([&] { return third_ran.load(); }, 20s))
      << "starved after " << rounds.load() << " rounds";
  stop = true;
  a.join();
  b.join();
  EXPECT_GT(rt.metrics().lifo_polls, 0u);
}

// Every worker runs a self-respawning chain (each link spawns the next and
// returns); tasks spawned from outside must still run. Tokio 1.24 hangs here
// (its "busy2" case): LIFO-slot polls did not count toward the injector check.
void chains_do_not_starve_remote_spawns(std::size_t workers, std::uint32_t interval, bool lifo) {
  // Declared before the runtime: the chains use them until it shuts down.
  std::atomic<bool> stop{false};
  std::atomic<long> links{0};
  std::atomic<int> remote_done{0};
  auto b = Runtime::Builder::multi_thread().worker_threads(workers);
  if (interval) b.global_queue_interval(interval);
  if (!lifo) b.disable_lifo_slot();
  auto rt = b.build();
  struct Chain {
    static void link(std::atomic<bool>* stop, std::atomic<long>* links) {
      links->fetch_add(1, std::memory_order_relaxed);
      if (!stop->load(std::memory_order_relaxed))
        tideloop::spawn([stop, links] { link(stop, links); }).detach();
    }
  };
  // Start one chain per worker, from inside the runtime.
  rt.block_on([&]() -> Task<void> {
    for (std::size_t i = 0; i < workers; ++i)
      tideloop::spawn([&] { Chain::link(&stop, &links); }).detach();
    co_return;
  });
  ASSERT_TRUE(eventually([&] { return links.load() > 10000; }));
  std::vector<JoinHandle<void>> hs;
  for (int i = 0; i < 100; ++i) hs.push_back(rt.spawn([&] { remote_done.fetch_add(1); }));
  const bool ok = eventually([&] { return remote_done.load() == 100; }, 20s);
  stop = true;
  EXPECT_TRUE(ok) << "workers=" << workers << " interval=" << interval << " lifo=" << lifo << ": "
                  << remote_done.load() << "/100 remote tasks ran while the chains made "
                  << links.load() << " links";
  for (auto& h : hs) h.detach();
  rt.shutdown();
}

TEST(MultiThread, SelfRespawningChainsDoNotStarveRemoteSpawns) {
  chains_do_not_starve_remote_spawns(2, 0, true);
  chains_do_not_starve_remote_spawns(1, 0, true);
  chains_do_not_starve_remote_spawns(2, 0, false);
}

// The injector check must not depend on the interval being coprime with the
// number of ticks one LIFO chain consumes.
TEST(MultiThread, SelfRespawningChainsDoNotStarveRemoteSpawnsWithAnyInterval) {
  for (std::uint32_t interval : {1u, 2u, 3u, 4u, 8u, 16u}) {
    chains_do_not_starve_remote_spawns(1, interval, true);
  }
}

// Two tasks that can only finish together: one sits in the spawning worker's
// LIFO slot, the other in its queue, so the other worker (asleep when the
// round starts) must be woken and steal. Each round starts with both workers
// parked: a worker that is awake but not searching parks without looking at
// other queues (as in Tokio), so a single task queued behind a blocking one
// can be stranded in that window. A round that hits it gives up after 2 s
// instead of deadlocking; nearly all must succeed.
TEST(MultiThread, IdleWorkerIsWokenAndSteals) {
  auto rt = make_rt(2);
  constexpr int kRounds = 20;
  int ok = 0;
  ASSERT_TRUE(eventually([&] { return rt.metrics().parks >= 2; }));
  for (int round = 0; round < kRounds; ++round) {
    std::this_thread::sleep_for(3ms);  // both workers go back to sleep
    std::atomic<bool> a_in{false}, b_in{false};
    auto rendezvous = [](std::atomic<bool>* me, std::atomic<bool>* other) {
      *me = true;
      const auto deadline = std::chrono::steady_clock::now() + 2s;
      while (!other->load()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::yield();
      }
      return true;
    };
    auto h = rt.spawn([&]() -> Task<bool> {
      auto x = tideloop::spawn([&] { return rendezvous(&a_in, &b_in); });
      auto y = tideloop::spawn([&] { return rendezvous(&b_in, &a_in); });
      const bool bx = co_await x;
      const bool by = co_await y;
      co_return bx&& by;
    });
    ok += h.join();
  }
  EXPECT_GE(ok, kRounds - 2) << "rounds where the queued task was not stolen: " << kRounds - ok;
  EXPECT_GT(rt.metrics().steals, 0u);
}

TEST(MultiThread, WorkSpreadsAcrossWorkers) {
  auto rt = make_rt(2);
  std::mutex mu;
  std::set<std::thread::id> seen;
  auto parent = [&]() -> Task<void> {
    std::vector<JoinHandle<void>> hs;
    for (int i = 0; i < 200; ++i) {
      hs.push_back(tideloop::spawn([&] {
        std::this_thread::sleep_for(500us);
        std::lock_guard<std::mutex> g(mu);
        seen.insert(std::this_thread::get_id());
      }));
    }
    for (auto& h : hs) co_await h;
  };
  rt.spawn(parent).join();
  EXPECT_EQ(seen.size(), 2u);
}

// A burst of spawns from one task overflows its worker's local queue into the
// injector (256 slots by default, 4 in the small-queue build); none is lost.
TEST(MultiThread, LocalQueueOverflowSpillsToTheInjectorAndLosesNothing) {
  for (std::size_t workers : {1u, 2u}) {
    auto rt = make_rt(workers);
    constexpr int kChildren = 2000;
    std::atomic<int> ran{0};
    auto parent = rt.spawn([&ran]() -> Task<int> {
      std::vector<JoinHandle<void>> hs;
      for (int i = 0; i < kChildren; ++i)
        hs.push_back(tideloop::spawn([&ran] { ran.fetch_add(1); }));
      for (auto& h : hs) co_await h;
      co_return ran.load();
    });
    EXPECT_EQ(parent.join(), kChildren) << "workers=" << workers;
    if (workers == 1) EXPECT_GT(rt.metrics().overflows, 0u);
  }
}

// --- Builder ---

TEST(MultiThread, ThreadHooksRunOncePerWorkerWithThreadNames) {
  std::atomic<int> started{0}, stopped{0};
  std::mutex mu;
  std::set<std::string> names;
  {
    auto rt = Runtime::Builder::multi_thread()
                  .worker_threads(3)
                  .thread_name("tl-test")
                  .on_thread_start([&] {
                    started.fetch_add(1);
                    std::lock_guard<std::mutex> g(mu);
                    names.insert(this_thread_name());
                  })
                  .on_thread_stop([&] { stopped.fetch_add(1); })
                  .build();
    auto h = rt.spawn([] { return this_thread_name(); });
    EXPECT_EQ(h.join().rfind("tl-test-", 0), 0u);
    EXPECT_TRUE(eventually([&] { return started.load() == 3; }));
    EXPECT_EQ(stopped.load(), 0);
    rt.shutdown();
    EXPECT_EQ(stopped.load(), 3);
    rt.shutdown();  // idempotent
  }
  EXPECT_EQ(started.load(), 3);
  EXPECT_EQ(stopped.load(), 3);
  EXPECT_EQ(names, (std::set<std::string>{"tl-test-0", "tl-test-1", "tl-test-2"}));
}

TEST(MultiThread, DefaultAndLongThreadNames) {
  {
    auto rt = make_rt(1);
    EXPECT_EQ(rt.spawn([] { return this_thread_name(); }).join(), "tl-worker-0");
  }
  {
    auto rt = Runtime::Builder::multi_thread()
                  .worker_threads(1)
                  .thread_name("a-very-long-thread-name")
                  .build();
    const std::string name = rt.spawn([] { return this_thread_name(); }).join();
    EXPECT_LE(name.size(), 15u);  // the kernel limit; truncated, not rejected
    EXPECT_EQ(name.rfind("a-very-long", 0), 0u);
  }
}

TEST(MultiThread, DefaultWorkerCountIsOnePerCore) {
  auto rt = Runtime::Builder::multi_thread().build();
  EXPECT_EQ(rt.metrics().workers, std::max(1u, std::thread::hardware_concurrency()));
}

// --- metrics ---

TEST(MultiThread, MetricsAreConsistent) {
  auto rt = make_rt(2);
  constexpr int kTasks = 2000;
  auto parent = []() -> Task<void> {
    std::vector<JoinHandle<int>> hs;
    for (int i = 0; i < kTasks; ++i) hs.push_back(tideloop::spawn([i] { return i; }));
    for (auto& h : hs) co_await h;
  };
  rt.spawn(parent).join();
  auto m = rt.metrics();
  EXPECT_EQ(m.workers, 2u);
  EXPECT_GE(m.spawned, static_cast<std::uint64_t>(kTasks + 1));
  EXPECT_TRUE(eventually([&] { return rt.metrics().polls >= kTasks + 1; }));
  EXPECT_TRUE(eventually([&] { return rt.metrics().live_tasks == 0; }));
  // Idle workers park.
  EXPECT_TRUE(eventually([&] { return rt.metrics().parks > 0; }));
  m = rt.metrics();
  EXPECT_LE(m.steals, m.stolen_tasks);
  EXPECT_LE(m.lifo_polls, m.polls);

  // live_tasks counts suspended tasks.
  Signal sig;
  auto waiting = rt.spawn([&]() -> Task<void> { co_await sig.wait(); });
  EXPECT_TRUE(eventually([&] { return rt.metrics().live_tasks == 1; }));
  sig.set();
  waiting.join();
  EXPECT_TRUE(eventually([&] { return rt.metrics().live_tasks == 0; }));
}

TEST(MultiThread, RemoteWakeUpsReachParkedWorkers) {
  // Wake tasks from a foreign thread while the workers are asleep.
  auto rt = make_rt(2);
  constexpr int kTasks = 64;
  std::vector<Signal> sigs(kTasks);
  std::vector<JoinHandle<int>> hs;
  std::atomic<int> waiting{0};
  for (int i = 0; i < kTasks; ++i) {
    hs.push_back(rt.spawn([&, i]() -> Task<int> {
      waiting.fetch_add(1);
      co_await sigs[i].wait();
      co_return i;
    }));
  }
  ASSERT_TRUE(eventually([&] { return waiting.load() == kTasks; }));
  std::this_thread::sleep_for(5ms);  // let the workers park
  std::thread waker([&] {
    for (int i = 0; i < kTasks; ++i) {
      sigs[i].set();
      if (i % 8 == 0) std::this_thread::sleep_for(1ms);
    }
  });
  long sum = 0;
  for (auto& h : hs) sum += h.join();
  waker.join();
  EXPECT_EQ(sum, (kTasks - 1) * kTasks / 2);
}

}  // namespace
