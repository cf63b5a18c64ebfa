// Stress: many tasks across workers, each must run exactly once; spawn trees,
// ping-pong pairs, wake-ups from foreign threads, block_on from many threads,
// and runtimes created and destroyed while foreign threads still wake their
// tasks. Sized down under the sanitizers (TSan runs these in CI).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
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

using tltest::scaled;

// --- test helpers ---

// A reusable event: tasks await it, any thread sets it (waking by value).
using tltest::Signal;

using tltest::eventually;

struct Hits {
  std::unique_ptr<std::atomic<std::uint8_t>[]> v;
  long n;
  explicit Hits(long count)
      : v(new std::atomic<std::uint8_t>[static_cast<std::size_t>(count)]), n(count) {
    for (long i = 0; i < n; ++i) v[static_cast<std::size_t>(i)].store(0, std::memory_order_relaxed);
  }
  void hit(long i) { v[static_cast<std::size_t>(i)].fetch_add(1, std::memory_order_relaxed); }
  void expect_each_once() const {
    long bad = 0;
    for (long i = 0; i < n; ++i) {
      const int c = v[static_cast<std::size_t>(i)].load();
      if (c != 1 && bad++ < 10) ADD_FAILURE() << "task " << i << " ran " << c << " times";
    }
    EXPECT_EQ(bad, 0);
  }
};

// ~N tasks over 2 workers from every spawn path: a foreign thread (injector),
// tasks spawning children that land in the LIFO slot / local queue /
// overflow, awaited and detached, plain callables and coroutines.
TEST(RuntimeStress, ManyTasksEachRunExactlyOnce) {
  constexpr long kTasks = scaled(1000000, 200000, 200000);
  constexpr long kParents = 100;
  constexpr long kRemote = kTasks / 4;                        // spawned from outside
  constexpr long kPerParent = (kTasks - kRemote) / kParents;  // spawned from tasks
  constexpr long kTotal = kRemote + kParents * kPerParent;
  Hits hits(kTotal);
  std::atomic<long> done{0};
  auto rt = Runtime::Builder::multi_thread().worker_threads(2).build();
  Handle h = rt.handle();

  std::thread remote([&] {
    for (long i = 0; i < kRemote; ++i) {
      h.spawn([&hits, &done, i] {
         hits.hit(i);
         done.fetch_add(1, std::memory_order_relaxed);
       }).detach();
    }
  });
  std::vector<JoinHandle<long>> parents;
  for (long p = 0; p < kParents; ++p) {
    parents.push_back(rt.spawn([&hits, &done, p]() -> Task<long> {
      const long base = kRemote + p * kPerParent;
      std::vector<JoinHandle<long>> awaited;
      long sum = 0;
      for (long i = 0; i < kPerParent; ++i) {
        const long id = base + i;
        if (i % 2 == 0) {
          tideloop::spawn([&hits, &done, id] {
            hits.hit(id);
            done.fetch_add(1, std::memory_order_relaxed);
          }).detach();
        } else {
          awaited.push_back(tideloop::spawn([&hits, &done, id]() -> Task<long> {
            if (id % 7 == 0) co_await tideloop::yield_now();
            hits.hit(id);
            done.fetch_add(1, std::memory_order_relaxed);
            co_return id;
          }));
        }
        if (awaited.size() == 64) {
          for (auto& a : awaited) sum += co_await a;
          awaited.clear();
        }
      }
      for (auto& a : awaited) sum += co_await a;
      co_return sum;
    }));
  }
  remote.join();
  long sum = 0;
  for (auto& p : parents) sum += p.join();
  ASSERT_TRUE(eventually([&] { return done.load() == kTotal; }, 60s))
      << done.load() << " of " << kTotal;
  long want = 0;
  for (long p = 0; p < kParents; ++p)
    for (long i = 1; i < kPerParent; i += 2) want += kRemote + p * kPerParent + i;
  EXPECT_EQ(sum, want);
  hits.expect_each_once();
  const auto m = rt.metrics();
  EXPECT_GE(m.spawned, static_cast<std::uint64_t>(kTotal + kParents));
  EXPECT_TRUE(eventually([&] { return rt.metrics().live_tasks == 0; }, 60s));
}

Task<long> tree(int depth, int fanout) {
  if (depth == 0) co_return 1;
  std::vector<JoinHandle<long>> kids;
  for (int i = 0; i < fanout; ++i) kids.push_back(tideloop::spawn(tree(depth - 1, fanout)));
  long s = 0;
  for (auto& k : kids) s += co_await k;
  co_return s;
}

TEST(RuntimeStress, SpawnTree) {
  constexpr int kDepth = static_cast<int>(scaled(8, 7, 7));
  auto rt = Runtime::Builder::multi_thread().worker_threads(2).build();
  long leaves = 1;
  for (int i = 0; i < kDepth; ++i) leaves *= 4;
  EXPECT_EQ(rt.block_on(tree(kDepth, 4)), leaves);
}

TEST(RuntimeStress, ManyPingPongPairs) {
  static constexpr int kPairs = static_cast<int>(scaled(100, 50, 50));
  static constexpr int kRounds = static_cast<int>(scaled(2000, 500, 500));
  auto rt = Runtime::Builder::multi_thread().worker_threads(2).build();
  std::vector<std::unique_ptr<Signal>> sigs;
  for (int i = 0; i < 2 * kPairs; ++i) sigs.push_back(std::make_unique<Signal>());
  std::vector<JoinHandle<int>> hs;
  for (int p = 0; p < kPairs; ++p) {
    Signal* ping = sigs[2 * p].get();
    Signal* pong = sigs[2 * p + 1].get();
    hs.push_back(rt.spawn([ping, pong]() -> Task<int> {
      for (int r = 0; r < kRounds; ++r) {
        ping->set();
        co_await pong->wait();
      }
      co_return kRounds;
    }));
    hs.push_back(rt.spawn([ping, pong]() -> Task<int> {
      for (int r = 0; r < kRounds; ++r) {
        co_await ping->wait();
        pong->set();
      }
      co_return kRounds;
    }));
  }
  long total = 0;
  for (auto& h : hs) total += h.join();
  EXPECT_EQ(total, 2L * kPairs * kRounds);
}

// Wake-ups by value from foreign threads, racing with the tasks' own polls.
TEST(RuntimeStress, ForeignThreadWakeUps) {
  static constexpr int kTasks = static_cast<int>(scaled(2000, 1000, 1000));
  static constexpr int kRounds = static_cast<int>(scaled(50, 20, 20));
  auto rt = Runtime::Builder::multi_thread().worker_threads(2).build();
  std::vector<std::unique_ptr<Signal>> sigs;
  for (int i = 0; i < kTasks; ++i) sigs.push_back(std::make_unique<Signal>());
  std::vector<JoinHandle<int>> hs;
  for (int i = 0; i < kTasks; ++i) {
    Signal* s = sigs[static_cast<std::size_t>(i)].get();
    hs.push_back(rt.spawn([s]() -> Task<int> {
      for (int r = 0; r < kRounds; ++r) co_await s->wait();
      co_return 1;
    }));
  }
  std::atomic<bool> stop{false};
  std::vector<std::thread> wakers;
  for (int w = 0; w < 2; ++w) {
    wakers.emplace_back([&, w] {
      while (!stop.load()) {
        for (int i = w; i < kTasks; i += 2) sigs[static_cast<std::size_t>(i)]->set();
        std::this_thread::yield();
      }
    });
  }
  int n = 0;
  for (auto& h : hs) n += h.join();
  stop = true;
  for (auto& t : wakers) t.join();
  EXPECT_EQ(n, kTasks);
}

TEST(RuntimeStress, BlockOnFromManyThreads) {
  static constexpr int kRounds = static_cast<int>(scaled(300, 100, 150));
  auto rt = Runtime::Builder::multi_thread().worker_threads(2).build();
  std::atomic<long> total{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int r = 0; r < kRounds; ++r) {
        total += rt.block_on([]() -> Task<long> {
          auto a = tideloop::spawn([]() -> Task<long> {
            co_await tideloop::yield_now();
            co_return 1;
          });
          auto b = tideloop::spawn([] { return 2L; });
          co_return (co_await a) + (co_await b);
        });
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(total.load(), 4L * kRounds * 3);
}

// A task's last reference is dropped by a foreign thread (a waker it gave
// away) right as the detached task completes on a worker: the output must be
// destroyed exactly once, and never after the block is freed.
TEST(RuntimeStress, DetachedTaskWhoseLastReferenceIsAForeignWaker) {
  constexpr int kIters = static_cast<int>(scaled(20000, 5000, 1000));
  auto rt = Runtime::Builder::multi_thread().worker_threads(2).build();
  struct Grab : tideloop::internal::LeafAwaiter<Grab> {
    tideloop::Waker* out;
    tideloop::internal::TaskHeader** self;
    Grab(tideloop::Waker* o, tideloop::internal::TaskHeader** s) : out(o), self(s) {}
    bool poll_ready(tideloop::internal::TaskHeader* t) {
      *out = t->waker();
      *self = t;
      return true;
    }
    void await_resume() noexcept {}
  };
  struct Mailbox {
    std::atomic<int> stage{0};  // 1: waker published
    std::atomic<bool> detached{false};
    tideloop::Waker waker;
    tideloop::internal::TaskHeader* task = nullptr;
  };
  std::atomic<long> outputs_destroyed{0};
  struct Out {
    std::atomic<long>* d;
    std::string payload;  // heap-allocated: a double destroy is visible
    explicit Out(std::atomic<long>* c) : d(c), payload(64, 'x') {}
    Out(Out&& o) noexcept : d(std::exchange(o.d, nullptr)), payload(std::move(o.payload)) {}
    ~Out() {
      if (d) d->fetch_add(1);
    }
  };
  for (int i = 0; i < kIters; ++i) {
    auto box = std::make_shared<Mailbox>();
    rt.spawn([box, &outputs_destroyed]() -> Task<Out> {
        co_await Grab(&box->waker, &box->task);
        box->stage.store(1, std::memory_order_release);
        // Complete only once detached, so nobody holds join interest.
        while (!box->detached.load(std::memory_order_acquire)) std::this_thread::yield();
        co_return Out(&outputs_destroyed);
      }).detach();
    box->detached.store(true, std::memory_order_release);
    while (box->stage.load(std::memory_order_acquire) != 1) std::this_thread::yield();
    // Drop our reference the moment the task is complete.
    while (!tideloop::internal::is_complete(box->task)) {
    }
    box->waker.reset();
  }
  EXPECT_TRUE(eventually([&] { return outputs_destroyed.load() == kIters; }, 60s))
      << outputs_destroyed.load();
}

// Runtimes come and go while foreign threads are still inside wake-ups of
// their tasks (the scheduler must outlive every wake that can reach it).
TEST(RuntimeStress, RuntimeDestroyedRightAfterForeignWake) {
  constexpr int kIters = static_cast<int>(scaled(2000, 500, 500));
  for (int i = 0; i < kIters; ++i) {
    Signal sig;
    std::thread waker;
    {
      auto rt = (i % 2) ? Runtime::Builder::multi_thread().worker_threads(1).build()
                        : Runtime::Builder::current_thread().build();
      if (i % 2) {
        auto h = rt.spawn([&]() -> Task<int> {
          co_await sig.wait();
          co_return 1;
        });
        waker = std::thread([&] { sig.set(); });
        EXPECT_EQ(h.join(), 1);
      } else {
        waker = std::thread([&] { sig.set(); });
        rt.block_on([&]() -> Task<void> { co_await sig.wait(); });
      }
    }  // runtime destroyed; the waker thread may still be inside set()
    waker.join();
  }
}

}  // namespace
