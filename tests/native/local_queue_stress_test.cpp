// LocalQueue under concurrency: one owner pushes and pops while thieves steal
// halves from it and from each other, overflow spills into the injector. Every
// item must come out exactly once. Built with a tiny capacity
// (-DTIDELOOP_LOCAL_QUEUE_CAPACITY=4) the steal/overflow races run constantly.
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "scheduler/injector.hpp"
#include "scheduler/local_queue.hpp"
#include "test_support.hpp"

namespace {

using tideloop::internal::Injector;
using tideloop::internal::LocalQueue;
using tideloop::internal::TaskHeader;
namespace st = tideloop::internal::st;

#if defined(TL_TSAN)
constexpr int kItems = 200000;
#elif defined(TL_ASAN)
constexpr int kItems = 200000;
#else
constexpr int kItems = 1000000;
#endif

struct FakeTask final : TaskHeader {
  explicit FakeTask(int i) : TaskHeader(nullptr), id(i) { state.store(st::kRefOne); }
  bool poll_future() override { return true; }
  void cancel_future() override {}
  void drop_output() override {}
  void destroy() override {}
  int id;
};

struct Fixture {
  std::vector<std::unique_ptr<FakeTask>> tasks;
  std::unique_ptr<std::atomic<int>[]> seen;
  std::atomic<int> total{0};
  explicit Fixture(int n) : seen(new std::atomic<int>[static_cast<std::size_t>(n)]) {
    tasks.reserve(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) {
      tasks.push_back(std::make_unique<FakeTask>(i));
      seen[static_cast<std::size_t>(i)].store(0, std::memory_order_relaxed);
    }
  }
  void take(TaskHeader* t) {
    seen[static_cast<std::size_t>(static_cast<FakeTask*>(t)->id)].fetch_add(
        1, std::memory_order_relaxed);
    total.fetch_add(1, std::memory_order_relaxed);
  }
  void check(int n) {
    EXPECT_EQ(total.load(), n);
    int bad = 0;
    for (int i = 0; i < n; ++i) {
      if (seen[static_cast<std::size_t>(i)].load() != 1 && bad++ < 10)
        ADD_FAILURE() << "item " << i << " seen " << seen[static_cast<std::size_t>(i)].load()
                      << " times";
    }
    EXPECT_EQ(bad, 0);
  }
};

void run_steal_stress(int thieves, int pop_every) {
  Fixture f(kItems);
  Injector inj;
  auto owner_q = std::make_unique<LocalQueue>();
  std::vector<std::unique_ptr<LocalQueue>> thief_q;
  for (int i = 0; i < thieves; ++i) thief_q.push_back(std::make_unique<LocalQueue>());
  std::atomic<bool> producing{true};

  auto drain_injector = [&](int max) {
    for (int i = 0; i < max; ++i) {
      TaskHeader* t = inj.pop();
      if (!t) break;
      f.take(t);
    }
  };

  std::vector<std::thread> threads;
  for (int me = 0; me < thieves; ++me) {
    threads.emplace_back([&, me] {
      std::minstd_rand rng(static_cast<unsigned>(me + 1));
      LocalQueue& mine = *thief_q[static_cast<std::size_t>(me)];
      for (;;) {
        const bool done = !producing.load(std::memory_order_acquire);
        // Victim: mostly the owner, sometimes the other thief.
        LocalQueue* victim = owner_q.get();
        if (thieves > 1 && rng() % 4 == 0)
          victim =
              thief_q[static_cast<std::size_t>((me + 1 + rng() % (thieves - 1)) % thieves)].get();
        std::uint32_t moved = 0;
        if (TaskHeader* t = victim->steal_into(mine, &moved)) {
          f.take(t);
          // Run some of what we took, leave the rest for others to steal.
          for (std::uint32_t i = 0; i + 1 < moved && rng() % 2; ++i) {
            if (TaskHeader* x = mine.pop()) f.take(x);
          }
        } else if (done) {
          while (TaskHeader* x = mine.pop()) f.take(x);
          drain_injector(1 << 30);
          if (owner_q->is_empty() && inj.is_empty()) break;
        }
        if (rng() % 8 == 0) drain_injector(2);
      }
      while (TaskHeader* x = mine.pop()) f.take(x);
    });
  }

  // Owner: push everything, popping now and then; overflow goes to inj.
  std::minstd_rand rng(99);
  for (int i = 0; i < kItems; ++i) {
    owner_q->push_back(f.tasks[static_cast<std::size_t>(i)].get(), inj);
    if (pop_every > 0 && rng() % static_cast<unsigned>(pop_every) == 0) {
      if (TaskHeader* t = owner_q->pop()) f.take(t);
    }
  }
  producing.store(false, std::memory_order_release);
  while (TaskHeader* t = owner_q->pop()) f.take(t);
  for (auto& t : threads) t.join();
  // Thieves exit once everything they could see was drained; drain leftovers
  // (a thief may have exited while another still held items).
  for (auto& q : thief_q)
    while (TaskHeader* t = q->pop()) f.take(t);
  drain_injector(1 << 30);
  f.check(kItems);
}

// The injector from several producers (push and push_n batches, as spawns
// and overflows do) and consumers (pop and pop_n, as idle workers do).
TEST(InjectorStress, ProducersAndConsumersEveryItemOnce) {
  Fixture f(kItems);
  Injector inj;
  constexpr int kProducers = 2;
  std::atomic<int> producing{kProducers};
  std::vector<std::thread> threads;
  for (int p = 0; p < kProducers; ++p) {
    threads.emplace_back([&, p] {
      std::minstd_rand rng(static_cast<unsigned>(p + 11));
      std::vector<TaskHeader*> batch;
      for (int i = p; i < kItems;) {
        batch.clear();
        const int n = 1 + static_cast<int>(rng() % 160);
        for (int k = 0; k < n && i < kItems; ++k, i += kProducers)
          batch.push_back(f.tasks[static_cast<std::size_t>(i)].get());
        if (batch.size() == 1) {
          inj.push(batch[0]);
        } else {
          inj.push_n(batch.data(), batch.size());
        }
      }
      producing.fetch_sub(1, std::memory_order_release);
    });
  }
  for (int c = 0; c < 2; ++c) {
    threads.emplace_back([&, c] {
      std::minstd_rand rng(static_cast<unsigned>(c + 21));
      TaskHeader* out[64];
      for (;;) {
        const bool done = producing.load(std::memory_order_acquire) == 0;
        std::size_t got;
        if (rng() % 2) {
          TaskHeader* t = inj.pop();
          got = t ? 1 : 0;
          out[0] = t;
        } else {
          got = inj.pop_n(out, 1 + rng() % 64);
        }
        for (std::size_t i = 0; i < got; ++i) f.take(out[i]);
        if (got == 0 && done && inj.is_empty()) break;
      }
    });
  }
  for (auto& t : threads) t.join();
  f.check(kItems);
}

TEST(LocalQueueStress, OneThiefEveryItemOnce) {
  run_steal_stress(1, 3);
}
TEST(LocalQueueStress, TwoThievesEveryItemOnce) {
  run_steal_stress(2, 2);
}
TEST(LocalQueueStress, OwnerNeverPopsThievesTakeEverything) {
  run_steal_stress(2, 0);
}

}  // namespace
