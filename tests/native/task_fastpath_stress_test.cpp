// The task state's non-atomic fast paths (runtime/src/task/task_state.cpp):
//  - join_drop of a task still "fresh" (just spawned into this worker's LIFO
//    slot, unpolled) is a plain store;
//  - run_task takes RUNNING with a store when the only holders are the
//    worker-local owner list and the notification;
//  - a detached task whose only holders are the owner list and its runner is
//    freed at completion without publishing COMPLETE.
// Each is sound only if no other thread can write the state at that moment.
// These tests mix every way another thread can hold a task (thieves, a
// JoinHandle moved to a foreign thread, an abort, wakers held and fired from
// a foreign thread) with the fast paths, and check that every task runs at
// most once, runs exactly once unless aborted, and is freed exactly once.
// They run under ThreadSanitizer in CI, which checks the orderings.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "test_support.hpp"
#include "tideloop/runtime.hpp"
#include "tideloop/sync/oneshot.hpp"
#include "tideloop/waker.hpp"

namespace {

using tideloop::JoinHandle;
using tideloop::Runtime;
using tideloop::Task;
using tltest::Tracked;

struct Ledger {
  std::atomic<int> ran{0};
  std::atomic<int> destroyed{0};
};

Task<> work(Tracked t, Ledger* l) {
  l->ran.fetch_add(1, std::memory_order_relaxed);
  co_return;
}

// Handles handed to a foreign thread, which drops or aborts them there while
// the tasks sit fresh in the spawning worker's LIFO slot or its queue.
class ForeignDropper {
 public:
  explicit ForeignDropper(std::atomic<int>* aborted) : aborted_(aborted), th_([this] { loop(); }) {}
  ~ForeignDropper() {
    {
      std::lock_guard<std::mutex> g(mu_);
      done_ = true;
    }
    th_.join();
  }
  void give(JoinHandle<void> h) {
    std::lock_guard<std::mutex> g(mu_);
    handles_.push_back(std::move(h));
  }

 private:
  void loop() {
    for (unsigned n = 0;;) {
      std::vector<JoinHandle<void>> batch;
      bool done;
      {
        std::lock_guard<std::mutex> g(mu_);
        batch.swap(handles_);
        done = done_;
      }
      for (auto& h : batch) {
        if (++n % 3 == 0) {
          h.abort();
          aborted_->fetch_add(1, std::memory_order_relaxed);
        }
        h.detach();
      }
      if (done && batch.empty()) return;
      std::this_thread::yield();
    }
  }
  std::atomic<int>* aborted_;
  std::mutex mu_;
  std::vector<JoinHandle<void>> handles_;
  bool done_ = false;
  std::thread th_;
};

TEST(TaskFastPathStress, DetachPatternsAmidThievesAndForeignHandles) {
  constexpr int kSpawners = 4;
  const int kPer = static_cast<int>(tltest::scaled(50000, 10000, 5000));
  const int kTasks = kSpawners * kPer;
  for (int workers : {1, 2, 4}) {
    Ledger l;
    std::atomic<int> aborted{0};
    {
      auto rt = Runtime::Builder::multi_thread().worker_threads(workers).build();
      ForeignDropper foreign(&aborted);
      rt.block_on([&]() -> Task<> {
        // Several spawners, so thieves are busy while handles are dropped.
        std::vector<JoinHandle<void>> spawners;
        for (int s = 0; s < kSpawners; ++s) {
          spawners.push_back(tideloop::spawn([&]() -> Task<> {
            for (int i = 0; i < kPer; ++i) {
              switch (i % 5) {
                case 0:  // detached while fresh: the plain-store path
                case 1:
                  tideloop::spawn(work(Tracked(&l.destroyed), &l)).detach();
                  break;
                case 2: {  // displaced from the LIFO slot before the detach
                  auto a = tideloop::spawn(work(Tracked(&l.destroyed), &l));
                  if (i + 1 < kPer) {
                    auto b = tideloop::spawn(work(Tracked(&l.destroyed), &l));
                    ++i;  // two spawned
                    a.detach();
                    b.detach();
                  }
                  break;
                }
                case 3:  // the handle leaves the thread while the task is fresh
                  foreign.give(tideloop::spawn(work(Tracked(&l.destroyed), &l)));
                  break;
                default: {  // aborted here while fresh, then detached
                  auto h = tideloop::spawn(work(Tracked(&l.destroyed), &l));
                  h.abort();
                  aborted.fetch_add(1, std::memory_order_relaxed);
                  h.detach();
                }
              }
              if (i % 64 == 0) co_await tideloop::yield_now();
            }
          }));
        }
        for (auto& h : spawners) co_await h;
      });
      ASSERT_TRUE(tltest::eventually([&] { return l.destroyed.load() >= kTasks; }))
          << "workers=" << workers << " destroyed " << l.destroyed.load() << " of " << kTasks;
      EXPECT_TRUE(tltest::eventually([&] { return rt.metrics().live_tasks == 0; }))
          << "workers=" << workers << ": " << rt.metrics().live_tasks << " still live";
    }
    // Every task was freed exactly once and ran at most once; only aborted
    // ones (here or on the foreign thread) may have skipped their run.
    EXPECT_EQ(l.destroyed.load(), kTasks) << "workers=" << workers;
    EXPECT_LE(l.ran.load(), kTasks);
    EXPECT_GE(l.ran.load(), kTasks - aborted.load()) << "workers=" << workers;
  }
}

// Wakers held and fired by a foreign thread: the runner's sole-holder checks
// must see those references (and their release on the other thread).
TEST(TaskFastPathStress, ForeignWakersAgainstSoleHolderCompletion) {
  const int kTasks = static_cast<int>(tltest::scaled(40000, 10000, 4000));
  Ledger l;
  {
    auto rt = Runtime::Builder::multi_thread().worker_threads(2).build();
    std::mutex mu;
    std::vector<tideloop::oneshot::Sender<int>> senders;
    std::atomic<bool> stop{false};
    std::thread firer([&] {
      while (!stop.load()) {
        std::vector<tideloop::oneshot::Sender<int>> batch;
        {
          std::lock_guard<std::mutex> g(mu);
          batch.swap(senders);
        }
        for (auto& s : batch) s.send(1);  // wakes the task from this thread
        batch.clear();                    // and drops the channel's waker here
        std::this_thread::yield();
      }
    });
    rt.block_on([&]() -> Task<> {
      for (int i = 0; i < kTasks; ++i) {
        auto [tx, rx] = tideloop::oneshot::channel<int>();
        tideloop::spawn([&l, rx = std::move(rx), t = Tracked(&l.destroyed)]() mutable -> Task<> {
          int v = co_await rx;
          l.ran.fetch_add(v, std::memory_order_relaxed);
        }).detach();
        std::lock_guard<std::mutex> g(mu);
        senders.push_back(std::move(tx));
      }
      co_return;
    });
    ASSERT_TRUE(tltest::eventually([&] { return l.ran.load() == kTasks; }))
        << "ran " << l.ran.load() << " of " << kTasks;
    stop.store(true);
    firer.join();
    EXPECT_TRUE(tltest::eventually([&] { return rt.metrics().live_tasks == 0; }));
  }
  EXPECT_EQ(l.ran.load(), kTasks);
  EXPECT_EQ(l.destroyed.load(), kTasks);
}

// Extra waker clones held by a foreign thread, which fires wake_by_ref on
// them again and drops them while the worker may be starting the task's
// next poll: the run_task store path must not be taken then (more than two
// references), or the foreign thread's RMWs are lost (leaked or doubly
// freed tasks, caught by the ledger).
class ForeignPinger {
 public:
  ForeignPinger() : th_([this] { loop(); }) {}
  ~ForeignPinger() {
    stop_.store(true);
    th_.join();
  }
  struct Ping {
    tideloop::Waker waker;
    std::atomic<bool>* ready;
  };
  void give(Ping p) {
    std::lock_guard<std::mutex> g(mu_);
    pings_.push_back(std::move(p));
  }

 private:
  void loop() {
    for (;;) {
      std::vector<Ping> batch;
      {
        std::lock_guard<std::mutex> g(mu_);
        batch.swap(pings_);
      }
      if (batch.empty() && stop_.load()) return;
      for (auto& p : batch) {
        p.ready->store(true, std::memory_order_release);
        p.waker.wake_by_ref();
      }
      for (auto& p : batch) p.waker.wake_by_ref();  // stale wakes, racing with the polls
      batch.clear();                                // and the drops
      std::this_thread::yield();
    }
  }
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<Ping> pings_;
  std::thread th_;
};

class PingAwaiter : public tideloop::internal::LeafAwaiter<PingAwaiter> {
 public:
  explicit PingAwaiter(ForeignPinger* p) : pinger_(p) {}
  bool poll_ready(tideloop::internal::TaskHeader* self) {
    if (ready_.load(std::memory_order_acquire)) return true;
    if (!sent_) {
      sent_ = true;
      pinger_->give({self->waker(), &ready_});
    }
    return false;
  }
  void await_resume() {}

 private:
  ForeignPinger* pinger_;
  bool sent_ = false;
  std::atomic<bool> ready_{false};
};

TEST(TaskFastPathStress, ForeignWakerClonesAgainstRunStore) {
  const int kTasks = static_cast<int>(tltest::scaled(40000, 10000, 4000));
  Ledger l;
  {
    auto rt = Runtime::Builder::multi_thread().worker_threads(2).build();
    ForeignPinger pinger;
    rt.block_on([&]() -> Task<> {
      for (int i = 0; i < kTasks; ++i) {
        tideloop::spawn([&l, &pinger, t = Tracked(&l.destroyed)]() -> Task<> {
          for (int k = 0; k < 3; ++k) co_await PingAwaiter(&pinger);
          l.ran.fetch_add(1, std::memory_order_relaxed);
        }).detach();
        if (i % 256 == 0) co_await tideloop::yield_now();
      }
    });
    ASSERT_TRUE(tltest::eventually([&] { return l.ran.load() == kTasks; }))
        << "ran " << l.ran.load() << " of " << kTasks;
    EXPECT_TRUE(tltest::eventually([&] { return rt.metrics().live_tasks == 0; }));
  }
  EXPECT_EQ(l.ran.load(), kTasks);
  EXPECT_EQ(l.destroyed.load(), kTasks);
}

}  // namespace
