// LocalQueue (a worker's bounded ring, steal-half) and Injector (the global
// FIFO), tested directly. Sizes follow kLocalQueueCapacity, so the same tests
// run the wrap-around and overflow paths constantly in the small-queue build
// (-DTIDELOOP_LOCAL_QUEUE_CAPACITY=4).
#include "scheduler/local_queue.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <memory>
#include <random>
#include <vector>

#include "scheduler/injector.hpp"

namespace {

using tideloop::internal::Injector;
using tideloop::internal::kLocalQueueCapacity;
using tideloop::internal::LocalQueue;
using tideloop::internal::TaskHeader;
namespace st = tideloop::internal::st;

// A stand-in task: the queues only link and move headers. Holds one reference
// so that a dropped notification "frees" it (counted, memory stays ours).
struct FakeTask final : TaskHeader {
  explicit FakeTask(int i, std::atomic<int>* d = nullptr)
      : TaskHeader(nullptr), id(i), destroyed(d) {
    state.store(st::kRefOne | st::kNotified);
  }
  bool poll_future() override { return true; }
  void cancel_future() override {}
  void drop_output() override {}
  void destroy() override {
    if (destroyed) destroyed->fetch_add(1);
  }
  int id;
  std::atomic<int>* destroyed;
};

int id_of(TaskHeader* t) {
  return static_cast<FakeTask*>(t)->id;
}

struct Pool {
  std::vector<std::unique_ptr<FakeTask>> tasks;
  explicit Pool(int n, std::atomic<int>* d = nullptr) {
    for (int i = 0; i < n; ++i) tasks.push_back(std::make_unique<FakeTask>(i, d));
  }
  FakeTask* operator[](int i) { return tasks[static_cast<std::size_t>(i)].get(); }
};

constexpr int kCap = static_cast<int>(kLocalQueueCapacity);

TEST(LocalQueue, PushPopIsFifo) {
  auto q = std::make_unique<LocalQueue>();
  Injector inj;
  Pool p(kCap);
  EXPECT_TRUE(q->is_empty());
  EXPECT_EQ(q->pop(), nullptr);
  for (int i = 0; i < kCap; ++i) EXPECT_FALSE(q->push_back(p[i], inj));
  EXPECT_EQ(q->len(), kLocalQueueCapacity);
  EXPECT_TRUE(inj.is_empty());
  for (int i = 0; i < kCap; ++i) {
    TaskHeader* t = q->pop();
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(id_of(t), i);
  }
  EXPECT_EQ(q->pop(), nullptr);
  EXPECT_TRUE(q->is_empty());
}

TEST(LocalQueue, RingWrapsAroundManyTimes) {
  auto q = std::make_unique<LocalQueue>();
  Injector inj;
  Pool p(kCap);
  int next_push = 0, next_pop = 0;
  // Keep the ring between 1 and kCap-1 full while positions advance far past
  // the buffer size.
  for (int round = 0; round < 1000; ++round) {
    const int fill = 1 + round % (kCap - 1);
    while (next_push - next_pop < fill) {
      ASSERT_FALSE(q->push_back(p[next_push % kCap], inj));
      ++next_push;
    }
    while (next_push - next_pop > fill / 2) {
      TaskHeader* t = q->pop();
      ASSERT_NE(t, nullptr);
      ASSERT_EQ(id_of(t), next_pop % kCap);
      ++next_pop;
    }
  }
  EXPECT_TRUE(inj.is_empty());
  EXPECT_GT(next_push, 100 * kCap);
}

TEST(LocalQueue, OverflowMovesTheOlderHalfAndTheNewTaskToTheInjector) {
  auto q = std::make_unique<LocalQueue>();
  Injector inj;
  Pool p(kCap + 1);
  // Offset the ring so the overflowing half straddles the buffer's end.
  Pool warm(kCap / 2 + 1);
  for (int i = 0; i < kCap / 2 + 1; ++i) {
    q->push_back(warm[i], inj);
    q->pop();
  }
  for (int i = 0; i < kCap; ++i) ASSERT_FALSE(q->push_back(p[i], inj));
  EXPECT_TRUE(q->push_back(p[kCap], inj));  // full: overflow
  EXPECT_EQ(inj.len(), static_cast<std::size_t>(kCap / 2 + 1));
  EXPECT_EQ(q->len(), static_cast<std::uint32_t>(kCap / 2));
  // Injector: the oldest half, in order, then the new task.
  for (int i = 0; i < kCap / 2; ++i) EXPECT_EQ(id_of(inj.pop()), i);
  EXPECT_EQ(id_of(inj.pop()), kCap);
  EXPECT_TRUE(inj.is_empty());
  // Local queue: the newer half, in order.
  for (int i = kCap / 2; i < kCap; ++i) EXPECT_EQ(id_of(q->pop()), i);
  EXPECT_EQ(q->pop(), nullptr);
}

TEST(LocalQueue, StealTakesHalfInOrder) {
  for (int n = 1; n <= kCap; ++n) {
    auto src = std::make_unique<LocalQueue>();
    auto dst = std::make_unique<LocalQueue>();
    Injector inj;
    Pool p(n);
    for (int i = 0; i < n; ++i) src->push_back(p[i], inj);
    std::uint32_t moved = 0;
    TaskHeader* got = src->steal_into(*dst, &moved);
    ASSERT_NE(got, nullptr) << "n=" << n;
    const int want = n - n / 2;  // the larger half
    EXPECT_EQ(moved, static_cast<std::uint32_t>(want)) << "n=" << n;
    // The thief runs the newest of what it took; the rest sit in its queue.
    EXPECT_EQ(id_of(got), want - 1);
    for (int i = 0; i < want - 1; ++i) EXPECT_EQ(id_of(dst->pop()), i);
    EXPECT_EQ(dst->pop(), nullptr);
    for (int i = want; i < n; ++i) EXPECT_EQ(id_of(src->pop()), i);
    EXPECT_EQ(src->pop(), nullptr);
  }
}

TEST(LocalQueue, StealFromEmptyAndIntoABusyQueue) {
  auto src = std::make_unique<LocalQueue>();
  auto dst = std::make_unique<LocalQueue>();
  Injector inj;
  std::uint32_t moved = 0;
  EXPECT_EQ(src->steal_into(*dst, &moved), nullptr);
  Pool p(2 * kCap);
  for (int i = 0; i < kCap; ++i) src->push_back(p[i], inj);
  // A thief whose own queue is more than half full does not steal.
  for (int i = 0; i < kCap / 2 + 1; ++i) dst->push_back(p[kCap + i], inj);
  EXPECT_EQ(src->steal_into(*dst, &moved), nullptr);
  EXPECT_EQ(src->len(), kLocalQueueCapacity);
}

TEST(LocalQueue, PushAfterStealReusesTheFreedSlots) {
  auto src = std::make_unique<LocalQueue>();
  auto dst = std::make_unique<LocalQueue>();
  Injector inj;
  Pool p(3 * kCap);
  int pushed = 0;
  for (; pushed < kCap; ++pushed) src->push_back(p[pushed], inj);
  std::uint32_t moved = 0;
  ASSERT_NE(src->steal_into(*dst, &moved), nullptr);
  // The stolen slots are free again: no overflow until full once more.
  for (std::uint32_t i = 0; i < moved; ++i, ++pushed)
    EXPECT_FALSE(src->push_back(p[pushed], inj)) << i;
  EXPECT_TRUE(inj.is_empty());
  EXPECT_EQ(src->len(), kLocalQueueCapacity);
  int expect = static_cast<int>(moved);
  while (TaskHeader* t = src->pop()) EXPECT_EQ(id_of(t), expect++);
  EXPECT_EQ(expect, pushed);
}

TEST(Injector, FifoBatchesAndLength) {
  Injector inj;
  Pool p(10);
  EXPECT_TRUE(inj.is_empty());
  EXPECT_EQ(inj.pop(), nullptr);
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(inj.push(p[i]));
  // A batch (as an overflow pushes it).
  TaskHeader* batch[6];
  for (int i = 4; i < 10; ++i) batch[i - 4] = p[i];
  EXPECT_TRUE(inj.push_n(batch, 6));
  EXPECT_EQ(inj.len(), 10u);
  TaskHeader* out[4];
  EXPECT_EQ(inj.pop_n(out, 4), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(id_of(out[i]), i);
  for (int i = 4; i < 10; ++i) EXPECT_EQ(id_of(inj.pop()), i);
  EXPECT_TRUE(inj.is_empty());
  EXPECT_EQ(inj.pop_n(out, 4), 0u);
}

// The injector stores pointers in fixed-size segments: FIFO order must hold
// across segment boundaries for any mix of batch sizes (checked against a
// deque model).
TEST(Injector, FifoAcrossSegmentsWithMixedBatches) {
  Injector inj;
  constexpr int kTasks = 4096;
  Pool p(kTasks);
  std::deque<int> model;
  std::minstd_rand rng(7);
  int next = 0;
  std::vector<TaskHeader*> batch, out;
  for (int op = 0; op < 20000; ++op) {
    if (rng() % 2 && next < kTasks) {
      const int n = std::min<int>(kTasks - next, 1 + static_cast<int>(rng() % 300));
      batch.clear();
      for (int i = 0; i < n; ++i) {
        batch.push_back(p[next]);
        model.push_back(next++);
      }
      ASSERT_TRUE(n == 1 ? inj.push(batch[0]) : inj.push_n(batch.data(), batch.size()));
    } else {
      const std::size_t want = 1 + rng() % 300;
      out.assign(want, nullptr);
      const std::size_t got = inj.pop_n(out.data(), want);
      ASSERT_EQ(got, std::min(want, model.size()));
      for (std::size_t i = 0; i < got; ++i) {
        ASSERT_EQ(id_of(out[i]), model.front());
        model.pop_front();
      }
    }
    ASSERT_EQ(inj.len(), model.size());
    if (next == kTasks && model.empty()) next = 0;  // go round again
  }
}

TEST(Injector, ClosedInjectorDropsPushedNotifications) {
  std::atomic<int> destroyed{0};
  Injector inj;
  Pool p(6, &destroyed);
  EXPECT_TRUE(inj.push(p[0]));
  EXPECT_TRUE(inj.close());
  EXPECT_FALSE(inj.close());  // only the first close reports true
  EXPECT_TRUE(inj.is_closed());
  EXPECT_FALSE(inj.push(p[1]));
  TaskHeader* batch[3] = {p[2], p[3], p[4]};
  EXPECT_FALSE(inj.push_n(batch, 3));
  // Each dropped notification released the task's (only) reference.
  EXPECT_EQ(destroyed.load(), 4);
  // What was queued before closing is still there to drain.
  EXPECT_EQ(inj.len(), 1u);
  inj.drain_and_drop();
  EXPECT_EQ(destroyed.load(), 5);
  EXPECT_TRUE(inj.is_empty());
}

TEST(LocalQueue, OverflowIntoAClosedInjectorDropsTheTasks) {
  std::atomic<int> destroyed{0};
  auto q = std::make_unique<LocalQueue>();
  Injector inj;
  Pool p(kCap + 1, &destroyed);
  for (int i = 0; i < kCap; ++i) q->push_back(p[i], inj);
  inj.close();
  EXPECT_TRUE(q->push_back(p[kCap], inj));
  EXPECT_EQ(destroyed.load(), kCap / 2 + 1);
  EXPECT_EQ(q->len(), static_cast<std::uint32_t>(kCap / 2));
}

}  // namespace
