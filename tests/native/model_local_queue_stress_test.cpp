// LocalQueue under real concurrency, from a seed: an owner thread pushes
// (overflowing into the injector), pops and pushes in bursts while 1-3
// stealer threads steal halves from it and from each other, pop their own
// queues and the injector. The seed picks each round's shape (stealers,
// mix of operations, burst sizes); the interleaving is the machine's. Seeds:
// see model_support.hpp (TIDELOOP_SEED, TIDELOOP_MODEL_ITERS = rounds).
//
// Invariants (local_queue_stress_test checks the first on fixed shapes):
//  - every task is obtained exactly once, and at quiescence every queue and
//    the injector are empty and say so (len() == 0);
//  - the owner's pops come out in push order (its queue is FIFO, steals and
//    overflows take from the old end), and it never sees len() > capacity;
//  - a steal moves between 1 and capacity/2 tasks; a stealer that steals
//    into its own empty queue then pops what it got in push order, all
//    older than the task the steal returned;
//  - the injector received between one and capacity/2 + 1 tasks per
//    overflow the owner reported.
// Runs under ThreadSanitizer in CI (the name contains "stress").
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "model_support.hpp"
#include "scheduler/injector.hpp"
#include "scheduler/local_queue.hpp"

namespace {

using tideloop::internal::Injector;
using tideloop::internal::kLocalQueueCapacity;
using tideloop::internal::LocalQueue;
using tideloop::internal::TaskHeader;
namespace st = tideloop::internal::st;

constexpr std::uint32_t kCap = kLocalQueueCapacity;

struct FakeTask final : TaskHeader {
  FakeTask() : TaskHeader(nullptr) { state.store(st::kRefOne); }
  bool poll_future() override { return true; }
  void cancel_future() override {}
  void drop_output() override {}
  void destroy() override {}
  int id = 0;
};

int id_of(TaskHeader* t) {
  return static_cast<FakeTask*>(t)->id;
}

void spin(unsigned n) {
  for (unsigned i = 0; i < n; ++i) asm volatile("" ::: "memory");
}

struct Totals {
  long items = 0, steals = 0, stolen = 0, overflows = 0, from_injector = 0;
};

// One round; returns with a (non-fatal) failure recorded on a broken
// invariant. Failures from the worker threads are collected in `bad` and
// reported by the test thread (gtest assertions are only safe there for
// fatal ones).
void stress_round(std::uint64_t seed, int items, Totals* tot) {
  std::mt19937_64 setup(seed);
  const int stealers = 1 + static_cast<int>(setup() % 3);
  const unsigned pop_every = static_cast<unsigned>(setup() % 5);  // 0: the owner never pops
  const unsigned burst_every = 1 + static_cast<unsigned>(setup() % 64);
  const unsigned steal_peer = static_cast<unsigned>(setup() % 4);  // out of 8: steal a peer
  // A pause after each push in some rounds, so that stealers keep up and
  // steals (not overflows) move most tasks.
  const unsigned pace = setup() % 2 ? 0 : 1 + static_cast<unsigned>(setup() % 400);

  std::vector<std::unique_ptr<FakeTask>> tasks(static_cast<std::size_t>(items));
  std::unique_ptr<std::atomic<int>[]> seen(new std::atomic<int>[static_cast<std::size_t>(items)]);
  for (int i = 0; i < items; ++i) {
    tasks[static_cast<std::size_t>(i)] = std::make_unique<FakeTask>();
    tasks[static_cast<std::size_t>(i)]->id = i;
    seen[static_cast<std::size_t>(i)].store(0, std::memory_order_relaxed);
  }
  Injector inj;
  auto owner_q = std::make_unique<LocalQueue>();
  std::vector<std::unique_ptr<LocalQueue>> mine;
  for (int i = 0; i < stealers; ++i) mine.push_back(std::make_unique<LocalQueue>());
  std::atomic<bool> producing{true};
  std::atomic<long> steals{0}, stolen{0}, from_injector{0};
  // First broken invariant seen by a thread (0: none), with the task ids.
  std::atomic<int> bad{0};
  std::atomic<long> bad_a{0}, bad_b{0};
  auto fail = [&](int what, long a, long b) {
    int none = 0;
    if (bad.compare_exchange_strong(none, what)) {
      bad_a.store(a);
      bad_b.store(b);
    }
  };
  auto take = [&](TaskHeader* t) {
    seen[static_cast<std::size_t>(id_of(t))].fetch_add(1, std::memory_order_relaxed);
  };
  auto drain_injector = [&](int max) {
    for (int i = 0; i < max; ++i) {
      TaskHeader* t = inj.pop();
      if (!t) break;
      from_injector.fetch_add(1, std::memory_order_relaxed);
      take(t);
    }
  };

  std::vector<std::thread> threads;
  for (int me = 0; me < stealers; ++me) {
    threads.emplace_back([&, me] {
      std::mt19937_64 rng(seed * 31 + static_cast<std::uint64_t>(me) + 1);
      LocalQueue& q = *mine[static_cast<std::size_t>(me)];
      for (;;) {
        const bool done = !producing.load(std::memory_order_acquire);
        LocalQueue* victim = owner_q.get();
        if (stealers > 1 && rng() % 8 < steal_peer)
          victim = mine[(static_cast<std::size_t>(me) + 1 + rng() % (stealers - 1)) %
                        static_cast<std::size_t>(stealers)]
                       .get();
        const bool was_empty = q.len() == 0;  // only we add to q
        std::uint32_t moved = 0;
        if (TaskHeader* t = victim->steal_into(q, &moved)) {
          steals.fetch_add(1, std::memory_order_relaxed);
          stolen.fetch_add(moved, std::memory_order_relaxed);
          if (moved < 1 || moved > (kCap + 1) / 2) fail(1, moved, 0);
          const int top = id_of(t);
          take(t);
          if (was_empty && victim == owner_q.get()) {
            // What we took from the owner: push order, older than `top`.
            int last = -1;
            while (TaskHeader* x = q.pop()) {
              const int id = id_of(x);
              if (id <= last || id >= top) fail(2, id, top);
              last = id;
              take(x);
            }
          } else {
            // Run some, leave the rest for the others to steal.
            for (std::uint32_t i = 0; i + 1 < moved && rng() % 2; ++i)
              if (TaskHeader* x = q.pop()) take(x);
          }
        } else if (TaskHeader* x = q.pop()) {
          take(x);  // run our own work before stealing more
        } else if (done) {
          drain_injector(1 << 30);
          if (owner_q->is_empty() && inj.is_empty()) break;
        }
        if (rng() % 8 == 0) drain_injector(1 + static_cast<int>(rng() % 4));
      }
      while (TaskHeader* x = q.pop()) take(x);
    });
  }

  // The owner.
  std::mt19937_64 rng(seed ^ 0x5bd1e995);
  long overflows = 0;
  int last_popped = -1;
  auto owner_pop = [&] {
    if (TaskHeader* t = owner_q->pop()) {
      const int id = id_of(t);
      if (id <= last_popped) fail(3, id, last_popped);
      last_popped = id;
      take(t);
    }
  };
  for (int i = 0; i < items;) {
    // A burst now and then: many pushes without a pop (overflow, wrap).
    const int run = rng() % burst_every == 0 ? 1 + static_cast<int>(rng() % (2 * kCap)) : 1;
    for (int k = 0; k < run && i < items; ++k, ++i) {
      if (owner_q->push_back(tasks[static_cast<std::size_t>(i)].get(), inj)) ++overflows;
      if (owner_q->len() > kCap) fail(4, owner_q->len(), 0);
      if (pace != 0) spin(static_cast<unsigned>(rng() % pace));
    }
    if (pop_every > 0 && rng() % pop_every == 0) owner_pop();
  }
  producing.store(false, std::memory_order_release);
  while (owner_q->len() > 0) owner_pop();
  for (auto& t : threads) t.join();
  // A stealer exits once it saw nothing left to take; another may still have
  // held tasks then. Drain the leftovers.
  for (auto& q : mine)
    while (TaskHeader* t = q->pop()) take(t);
  drain_injector(1 << 30);

  const std::string at = "\n  round seed " + std::to_string(seed) + " (" +
                         std::to_string(stealers) +
                         " stealers); replay the shape: " + tlmodel::model_replay(seed);
  switch (bad.load()) {
    case 0:
      break;
    case 1:
      ADD_FAILURE() << "a steal moved " << bad_a.load() << " tasks" << at;
      break;
    case 2:
      ADD_FAILURE() << "stolen task " << bad_a.load() << " out of order (steal returned "
                    << bad_b.load() << ")" << at;
      break;
    case 3:
      ADD_FAILURE() << "owner popped " << bad_a.load() << " after " << bad_b.load() << at;
      break;
    default:
      ADD_FAILURE() << "owner saw len() " << bad_a.load() << " > capacity " << kCap << at;
      break;
  }
  int wrong = 0;
  for (int i = 0; i < items; ++i) {
    const int n = seen[static_cast<std::size_t>(i)].load();
    if (n != 1 && wrong++ < 10)
      ADD_FAILURE() << "task " << i << " obtained " << n << " times" << at;
  }
  EXPECT_EQ(wrong, 0) << at;
  EXPECT_EQ(owner_q->len(), 0u) << at;
  for (auto& q : mine) EXPECT_EQ(q->len(), 0u) << at;
  EXPECT_EQ(inj.len(), 0u) << at;
  EXPECT_GE(from_injector.load(), overflows) << at;
  EXPECT_LE(from_injector.load(), overflows * (kCap / 2 + 1)) << at;
  tot->items += items;
  tot->steals += steals.load();
  tot->stolen += stolen.load();
  tot->overflows += overflows;
  tot->from_injector += from_injector.load();
}

TEST(LocalQueueModelStress, OwnerAndStealersObtainEveryTaskOnce) {
  const tlmodel::Cases rounds(24, 12, 40);
  const int items = static_cast<int>(tltest::scaled(40'000, 20'000, 10'000));
  Totals tot;
  for (long k = 0; k < rounds.count(); ++k) {
    stress_round(rounds.seed(k), items, &tot);
    if (HasFailure()) return;
  }
  std::printf(
      "capacity %u, %ld rounds: %ld tasks, %ld steals moving %ld, %ld overflows, "
      "%ld tasks through the injector\n",
      kCap, rounds.count(), tot.items, tot.steals, tot.stolen, tot.overflows, tot.from_injector);
}

}  // namespace
