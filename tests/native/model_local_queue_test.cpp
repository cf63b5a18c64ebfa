// Model-based test of the scheduler's queues: several LocalQueues and one
// Injector against std::deque models, over random single-threaded
// interleavings of owner pushes (with overflow to the injector), owner pops
// (pop, and pop_unshared on a queue nobody steals from), steal_into between
// queues, injector pops (one and batches) and closing the injector. Seeds:
// see model_support.hpp (TIDELOOP_SEED, TIDELOOP_MODEL_ITERS).
//
// The semantics checked, as local_queue.hpp defines them:
//  - a queue is FIFO: pop returns the oldest task;
//  - push_back on a full queue (capacity kLocalQueueCapacity) moves its older
//    half, then the new task, to the back of the injector, and returns true;
//    into a closed injector those tasks are dropped (their notification
//    reference released);
//  - steal_into(dst) takes the larger half (n - n/2) of the victim's oldest
//    tasks, returns the newest of them and appends the rest, in order, to
//    dst; it takes nothing when dst is more than half full;
//  - len() is exact when nobody is mid-operation.
// After every step the queue and injector lengths match the models; at the
// end every task was obtained exactly once (popped, stolen or dropped).
// Correct for every capacity: the small-queue build (4 slots) runs it too.
#include <gtest/gtest.h>

#include <atomic>
#include <deque>
#include <memory>
#include <random>
#include <vector>

#include "model_support.hpp"
#include "scheduler/injector.hpp"
#include "scheduler/local_queue.hpp"

namespace {

using tideloop::internal::Injector;
using tideloop::internal::kLocalQueueCapacity;
using tideloop::internal::LocalQueue;
using tideloop::internal::TaskHeader;
using tlmodel::where;
namespace st = tideloop::internal::st;

constexpr std::size_t kCap = kLocalQueueCapacity;

// A stand-in task holding one (notification) reference; a drop counts.
struct FakeTask final : TaskHeader {
  FakeTask() : TaskHeader(nullptr) { state.store(st::kRefOne | st::kNotified); }
  bool poll_future() override { return true; }
  void cancel_future() override {}
  void drop_output() override {}
  void destroy() override { ++dropped; }
  int id = 0;
  int dropped = 0;
};

int id_of(TaskHeader* t) {
  return static_cast<FakeTask*>(t)->id;
}

struct Figures {
  long pushes = 0, overflows = 0, steals = 0, stolen = 0, dropped = 0;
};

void queue_case(std::uint64_t seed, long steps, Figures* fig) {
  std::mt19937_64 rng(seed);
  const int nq = 2 + static_cast<int>(rng() % 3);  // 2..4 queues
  std::vector<std::unique_ptr<LocalQueue>> qs;
  std::vector<std::deque<int>> mq(static_cast<std::size_t>(nq));
  for (int i = 0; i < nq; ++i) qs.push_back(std::make_unique<LocalQueue>());
  Injector inj;
  std::deque<int> minj;
  bool closed = false;
  // Queue 0 is sometimes never stolen from: then its owner pops with
  // pop_unshared(), as a one-worker runtime does.
  const bool unshared0 = rng() % 4 == 0;
  // Each task is pushed once; `got` counts how often it came out.
  std::vector<std::unique_ptr<FakeTask>> pool;
  std::vector<int> got;
  long overflows = 0;
  // Weights: pushes, pops, steals, injector pops; then one burst and one
  // (rare) close of the injector.
  const int w_push = 6 + static_cast<int>(rng() % 8);
  const int w_pop = w_push + 2 + static_cast<int>(rng() % 6);
  const int w_steal = w_pop + 2 + static_cast<int>(rng() % 6);
  const int w_inj = w_steal + 1 + static_cast<int>(rng() % 2);
  const unsigned w_total = static_cast<unsigned>(w_inj) + 2;

  auto take = [&](TaskHeader* t) { ++got[static_cast<std::size_t>(id_of(t))]; };
  auto push = [&](int q, long step) {
    auto t = std::make_unique<FakeTask>();
    t->id = static_cast<int>(pool.size());
    got.push_back(0);
    FakeTask* raw = t.get();
    pool.push_back(std::move(t));
    ++fig->pushes;
    const bool overflow = qs[q]->push_back(raw, inj);
    std::deque<int>& m = mq[static_cast<std::size_t>(q)];
    if (m.size() < kCap) {
      ASSERT_FALSE(overflow) << "overflow of a queue holding " << m.size() << where(seed, step);
      m.push_back(raw->id);
      return;
    }
    ASSERT_TRUE(overflow) << "a full queue took a task" << where(seed, step);
    ++overflows;
    // The older half, then the new task, to the injector (or dropped).
    for (std::size_t i = 0; i <= kCap / 2; ++i) {
      int id;
      if (i < kCap / 2) {
        id = m.front();
        m.pop_front();
      } else {
        id = raw->id;
      }
      if (closed) {
        ASSERT_EQ(pool[static_cast<std::size_t>(id)]->dropped, 1)
            << "task " << id << " overflowed into a closed injector" << where(seed, step);
        ++got[static_cast<std::size_t>(id)];
        ++fig->dropped;
      } else {
        minj.push_back(id);
      }
    }
  };

  for (long step = 0; step < steps; ++step) {
    const int op = static_cast<int>(rng() % w_total);
    const int q = static_cast<int>(rng() % static_cast<unsigned>(nq));
    std::deque<int>& m = mq[static_cast<std::size_t>(q)];
    if (op < w_push) {
      push(q, step);
    } else if (op < w_pop) {
      TaskHeader* t = (q == 0 && unshared0) ? qs[q]->pop_unshared() : qs[q]->pop();
      if (m.empty()) {
        ASSERT_EQ(t, nullptr) << "pop of an empty queue" << where(seed, step);
      } else {
        ASSERT_NE(t, nullptr) << "pop lost " << m.size() << " tasks" << where(seed, step);
        ASSERT_EQ(id_of(t), m.front()) << "pop is not FIFO" << where(seed, step);
        m.pop_front();
        take(t);
      }
    } else if (op < w_steal) {
      int victim = static_cast<int>(rng() % static_cast<unsigned>(nq - 1));
      if (victim >= q) ++victim;  // q steals from another queue
      if (victim == 0 && unshared0) continue;
      std::deque<int>& v = mq[static_cast<std::size_t>(victim)];
      std::uint32_t moved = 12345;
      TaskHeader* t = qs[victim]->steal_into(*qs[q], &moved);
      const std::size_t n = v.size() - v.size() / 2;
      if (m.size() > kCap / 2 || n == 0) {
        ASSERT_EQ(t, nullptr) << "steal of " << v.size() << " into a queue of " << m.size()
                              << where(seed, step);
        ASSERT_EQ(moved, 12345u) << where(seed, step);
      } else {
        ASSERT_NE(t, nullptr) << "steal of " << v.size() << " into a queue of " << m.size()
                              << " took nothing" << where(seed, step);
        ASSERT_EQ(moved, n) << "steal took " << moved << " of " << v.size() << where(seed, step);
        for (std::size_t i = 0; i + 1 < n; ++i) {
          m.push_back(v.front());
          v.pop_front();
        }
        ASSERT_EQ(id_of(t), v.front()) << "steal returned the wrong task" << where(seed, step);
        v.pop_front();
        take(t);
        ++fig->steals;
        fig->stolen += static_cast<long>(n);
      }
    } else if (op < w_inj) {
      const std::size_t want = rng() % 2 ? 1 : 1 + rng() % (2 * kCap);
      std::vector<TaskHeader*> out(want, nullptr);
      const std::size_t k =
          want == 1 ? (out[0] = inj.pop()) != nullptr : inj.pop_n(out.data(), want);
      ASSERT_EQ(k, std::min(want, minj.size())) << where(seed, step);
      for (std::size_t i = 0; i < k; ++i) {
        ASSERT_EQ(id_of(out[i]), minj.front()) << "injector is not FIFO" << where(seed, step);
        minj.pop_front();
        take(out[i]);
      }
    } else if (op == w_inj) {
      // A burst: fill the queue past its capacity (overflow, and wrap-around
      // of the positions).
      const std::size_t k = kCap / 2 + rng() % (kCap + 2);
      for (std::size_t i = 0; i < k && !::testing::Test::HasFatalFailure(); ++i) push(q, step);
    } else if (!closed && step > steps / 2 && rng() % 64 == 0) {
      // Shutdown closes the injector; later overflows drop their tasks.
      ASSERT_TRUE(inj.close()) << where(seed, step);
      closed = true;
    }
    if (::testing::Test::HasFatalFailure()) return;
    for (int i = 0; i < nq; ++i) {
      const std::size_t len = mq[static_cast<std::size_t>(i)].size();
      ASSERT_EQ(qs[i]->len(), len) << "length of queue " << i << where(seed, step);
      ASSERT_EQ(qs[i]->is_empty(), len == 0) << where(seed, step);
      ASSERT_EQ(qs[i]->has_tasks(), len != 0) << where(seed, step);
    }
    ASSERT_EQ(inj.len(), minj.size()) << "length of the injector" << where(seed, step);
  }
  // Drain: everything comes out in model order.
  for (int i = 0; i < nq; ++i) {
    for (int id : mq[static_cast<std::size_t>(i)]) {
      TaskHeader* t = qs[i]->pop();
      ASSERT_NE(t, nullptr) << where(seed, steps);
      ASSERT_EQ(id_of(t), id) << where(seed, steps);
      take(t);
    }
    ASSERT_EQ(qs[i]->pop(), nullptr) << where(seed, steps);
  }
  for (int id : minj) {
    TaskHeader* t = inj.pop();
    ASSERT_NE(t, nullptr) << where(seed, steps);
    ASSERT_EQ(id_of(t), id) << where(seed, steps);
    take(t);
  }
  ASSERT_EQ(inj.pop(), nullptr) << where(seed, steps);
  // Every task exactly once across queues, injector, thieves and drops.
  for (std::size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i], 1) << "task " << i << " obtained " << got[i] << " times"
                         << where(seed, steps);
    ASSERT_LE(pool[i]->dropped, 1) << "task " << i << " dropped twice" << where(seed, steps);
  }
  fig->overflows += overflows;
}

TEST(LocalQueueModel, RandomPushPopStealMatchesDeques) {
  // A small queue's cases are cheap and exercise overflow and wrap-around
  // constantly: run more of them.
  const bool small = kCap <= 16;
  const tlmodel::Cases cases(small ? 600 : 150, small ? 200 : 50, small ? 200 : 50);
  Figures fig;
  for (long k = 0; k < cases.count(); ++k) {
    queue_case(cases.seed(k), 2000, &fig);
    if (HasFatalFailure()) return;
  }
  std::printf(
      "capacity %zu, %ld cases: %ld pushes, %ld overflows, %ld steals (%ld tasks), "
      "%ld dropped by a closed injector\n",
      kCap, cases.count(), fig.pushes, fig.overflows, fig.steals, fig.stolen, fig.dropped);
}

}  // namespace
