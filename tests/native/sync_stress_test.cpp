// Stress tests for the sync primitives on the multi-thread runtime (2 workers):
// races between the two halves of a channel, many producers and consumers,
// ping-pong chains. Run under ThreadSanitizer in CI (the "stress" label); the
// sizes keep the whole file well under 20 s there.
// Channels are unpacked into variables, not structured bindings: lambdas capture
// them, which clang 14 (the asan tree's compiler) does not allow for bindings.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "tideloop/runtime.hpp"
#include "tideloop/sync.hpp"

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define TIDELOOP_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define TIDELOOP_TEST_SANITIZED 1
#endif
#endif

// Task blocks come from oneTBB's scalable_malloc (runtime/src/task/task_state.cpp).
// The sanitizers do not instrument tbbmalloc: TSan misses the happens-before
// its private free lists give a block freed on one worker and reused on the
// other, and reports that reuse as a race; ASan cannot see task-block
// use-after-free at all. Until task_alloc itself falls back to malloc in
// sanitizer builds, this binary interposes the two entry points the runtime
// uses so the sanitizers see every task block (the sync blocks already use
// plain operator new there: tideloop/sync/internal/alloc.hpp).
#ifdef TIDELOOP_TEST_SANITIZED
extern "C" void* scalable_malloc(std::size_t n) {
  return std::malloc(n);
}
extern "C" void scalable_free(void* p) {
  std::free(p);
}
#endif

namespace tideloop {
namespace {

using namespace std::chrono_literals;

// Sizes scale down under the sanitizers (TSan runs ~10x slower).
#ifdef TIDELOOP_TEST_SANITIZED
constexpr int kScale = 4;
#else
constexpr int kScale = 10;
#endif

struct Counted {
  static inline std::atomic<int> live{0};
  int v = 0;
  explicit Counted(int x) : v(x) { live.fetch_add(1, std::memory_order_relaxed); }
  Counted(Counted&& o) noexcept : v(o.v) { live.fetch_add(1, std::memory_order_relaxed); }
  Counted& operator=(Counted&&) = default;
  ~Counted() { live.fetch_sub(1, std::memory_order_relaxed); }
};

Runtime make_mt() {
  return Runtime::Builder::multi_thread().worker_threads(2).build();
}

// --- oneshot ---------------------------------------------------------------

// Tokio's ping_pong benchmark shape: each round spawns a pinger and a ponger
// connected by two fresh oneshots.
TEST(SyncStress, OneshotPingPong) {
  auto rt = make_mt();
  const int rounds = 20 * kScale;
  const int pairs = 200;
  for (int r = 0; r < rounds; ++r) {
    int done = rt.block_on([pairs]() -> Task<int> {
      std::vector<JoinHandle<int>> hs;
      hs.reserve(pairs);
      for (int i = 0; i < pairs; ++i) {
        hs.push_back(spawn([i]() -> Task<int> {
          auto [tx1_, rx1_] = oneshot::channel<int>();
          auto tx1 = std::move(tx1_);
          auto rx1 = std::move(rx1_);
          auto [tx2_, rx2_] = oneshot::channel<int>();
          auto tx2 = std::move(tx2_);
          auto rx2 = std::move(rx2_);
          auto pong = spawn([rx1 = std::move(rx1), tx2 = std::move(tx2)]() mutable -> Task<void> {
            int v = co_await rx1;
            tx2.send(v + 1);
          });
          auto ping = spawn([tx1 = std::move(tx1), i]() mutable { tx1.send(i); });
          int v = co_await rx2;
          co_await pong;
          co_await ping;
          co_return v;
        }));
      }
      int ok = 0;
      for (int i = 0; i < pairs; ++i) ok += (co_await hs[i]) == i + 1;
      co_return ok;
    });
    ASSERT_EQ(done, pairs);
  }
}

// A long chain of tasks passing a token through oneshots, across workers.
TEST(SyncStress, OneshotChain) {
  auto rt = make_mt();
  const int len = 2000 * kScale;
  int v = rt.block_on([len]() -> Task<int> {
    auto [first_tx_, rx_] = oneshot::channel<int>();
    auto first_tx = std::move(first_tx_);
    auto rx = std::move(rx_);
    std::vector<JoinHandle<void>> hs;
    for (int i = 0; i < len; ++i) {
      auto [tx_, next_rx_] = oneshot::channel<int>();
      auto tx = std::move(tx_);
      auto next_rx = std::move(next_rx_);
      hs.push_back(spawn([rx = std::move(rx), tx = std::move(tx)]() mutable -> Task<void> {
        int v = co_await rx;
        tx.send(v + 1);
      }));
      rx = std::move(next_rx);
    }
    first_tx.send(0);
    int v = co_await rx;
    for (auto& h : hs) co_await h;
    co_return v;
  });
  EXPECT_EQ(v, len);
}

// Sender and receiver race on different workers: send vs drop, send vs
// close, send vs await, drop vs await. Every value is destroyed exactly once.
TEST(SyncStress, OneshotRaces) {
  Counted::live = 0;
  auto rt = make_mt();
  const int n = 3000 * kScale;
  // Per mode: values received, sends that failed, RecvErrors.
  std::atomic<int> received[4] = {}, failed[4] = {}, errors[4] = {};
  rt.block_on([&]() -> Task<void> {
    std::vector<JoinHandle<void>> hs;
    for (int i = 0; i < n; ++i) {
      auto [tx_, rx_] = oneshot::channel<Counted>();
      auto tx = std::move(tx_);
      auto rx = std::move(rx_);
      const int mode = i % 4;
      hs.push_back(spawn([tx = std::move(tx), mode, &failed]() mutable {
        if (mode == 3) {
          auto gone = std::move(tx);  // drop without sending
        } else if (!tx.send(Counted(1))) {
          failed[mode].fetch_add(1);
        }
      }));
      hs.push_back(spawn([rx = std::move(rx), mode, &received, &errors]() mutable -> Task<void> {
        if (mode == 1) {
          auto gone = std::move(rx);
        } else if (mode == 2) {
          rx.close();
          auto r = rx.try_recv();
          if (r.ok()) received[mode].fetch_add(r->v);
        } else {
          try {
            Counted c = co_await rx;
            received[mode].fetch_add(c.v);
          } catch (const oneshot::RecvError&) {
            errors[mode].fetch_add(1);
          }
        }
      }));
      if (hs.size() >= 128) {
        for (auto& h : hs) co_await h;
        hs.clear();
      }
    }
    for (auto& h : hs) co_await h;
  });
  EXPECT_EQ(Counted::live.load(), 0);
  const int per_mode = n / 4;
  EXPECT_EQ(received[0].load(), per_mode);  // await always gets the value
  EXPECT_EQ(failed[0].load(), 0);
  EXPECT_EQ(errors[0].load(), 0);
  EXPECT_EQ(received[2].load() + failed[2].load(), per_mode);  // sent before close, or refused
  EXPECT_EQ(errors[3].load(), per_mode);                       // dropped sender
}

// Plain threads on both sides and tasks in between: blocking_recv, sends
// from outside the runtime.
TEST(SyncStress, OneshotThreadsAndTasks) {
  auto rt = make_mt();
  const int n = 500 * kScale;
  std::thread producer([&] {
    for (int i = 0; i < n; ++i) {
      auto [tx_, rx_] = oneshot::channel<int>();
      auto tx = std::move(tx_);
      auto rx = std::move(rx_);
      auto [back_tx_, back_rx_] = oneshot::channel<int>();
      auto back_tx = std::move(back_tx_);
      auto back_rx = std::move(back_rx_);
      auto h = rt.spawn([rx = std::move(rx), back_tx = std::move(back_tx)]() mutable -> Task<void> {
        back_tx.send(co_await rx * 2);
      });
      tx.send(i);
      ASSERT_EQ(back_rx.blocking_recv(), 2 * i);
      h.join();
    }
  });
  producer.join();
}

// --- mpsc --------------------------------------------------------------------

// Several channels, each fed by several producer tasks (and one plain thread
// using blocking_send), each drained by one consumer task; small bounded
// capacities keep senders parking and being handed slots. Every message is
// received exactly once, and each producer's messages arrive in order.
TEST(SyncStress, MpscManyProducersManyConsumers) {
  auto rt = make_mt();
  constexpr int kChannels = 4;
  constexpr int kTaskProducers = 4;
  const int per_producer = 500 * kScale;
  const int producers = kTaskProducers + 1;  // + the thread
  const int per_channel = producers * per_producer;
  std::vector<std::atomic<std::uint8_t>> seen(static_cast<std::size_t>(kChannels) * per_channel);

  std::vector<mpsc::Sender<int>> thread_senders;
  std::vector<mpsc::Receiver<int>> receivers;
  std::vector<mpsc::Sender<int>> task_senders;
  for (int c = 0; c < kChannels; ++c) {
    auto [tx_, rx_] = mpsc::channel<int>(c % 2 == 0 ? 1 : 4);
    auto tx = std::move(tx_);
    auto rx = std::move(rx_);
    thread_senders.push_back(tx);
    task_senders.push_back(std::move(tx));
    receivers.push_back(std::move(rx));
  }
  std::thread thread_producer([&, senders = std::move(thread_senders)]() mutable {
    for (int i = 0; i < per_producer; ++i) {
      for (int c = 0; c < kChannels; ++c)
        ASSERT_TRUE(senders[c].blocking_send(kTaskProducers * per_producer + i));
    }
  });
  rt.block_on([&]() -> Task<void> {
    std::vector<JoinHandle<void>> hs;
    for (int c = 0; c < kChannels; ++c) {
      for (int p = 0; p < kTaskProducers; ++p) {
        hs.push_back(spawn([tx = task_senders[c], p, per_producer]() mutable -> Task<void> {
          for (int i = 0; i < per_producer; ++i) {
            const int id = p * per_producer + i;
            if (i % 3 == 0) {
              absl::Status st = tx.try_send(id);
              if (st.ok()) continue;
              EXPECT_TRUE(absl::IsResourceExhausted(st));
            }
            EXPECT_TRUE(co_await tx.send(id));
          }
        }));
      }
    }
    task_senders.clear();  // the copies in the producers are the last task senders
    for (int c = 0; c < kChannels; ++c) {
      hs.push_back(spawn([rx = std::move(receivers[c]), c, &seen, per_channel, per_producer,
                          producers]() mutable -> Task<void> {
        std::vector<int> last(producers, -1);
        int n = 0;
        while (auto v = co_await rx.recv()) {
          const int id = *v;
          seen[static_cast<std::size_t>(c) * per_channel + id].fetch_add(1);
          const int p = id / per_producer;
          EXPECT_GT(id, last[p]);
          last[p] = id;
          ++n;
        }
        EXPECT_EQ(n, per_channel);
      }));
    }
    for (auto& h : hs) co_await h;
  });
  thread_producer.join();
  for (std::size_t i = 0; i < seen.size(); ++i) ASSERT_EQ(seen[i].load(), 1) << "message " << i;
}

// Unbounded: producers on both workers and a plain thread, one consumer.
TEST(SyncStress, MpscUnboundedFanIn) {
  auto rt = make_mt();
  const int producers = 6;
  const int each = 2000 * kScale;
  auto [tx_, rx_] = mpsc::unbounded_channel<int>();
  auto tx = std::move(tx_);
  auto rx = std::move(rx_);
  std::thread t([tx]() mutable {
    for (int i = 0; i < each; ++i) ASSERT_TRUE(tx.send(i));
  });
  long sum = rt.block_on([&]() -> Task<long> {
    std::vector<JoinHandle<void>> hs;
    for (int p = 1; p < producers; ++p) {
      hs.push_back(spawn([tx, p, each]() mutable -> Task<void> {
        for (int i = 0; i < each; ++i) {
          EXPECT_TRUE(tx.send(p * each + i));
          if (i % 64 == 0) co_await yield_now();
        }
      }));
    }
    { auto gone = std::move(tx); }
    long sum = 0;
    while (auto v = co_await rx.recv()) sum += *v;
    for (auto& h : hs) co_await h;
    co_return sum;
  });
  t.join();
  const long n = static_cast<long>(producers) * each;
  EXPECT_EQ(sum, n * (n - 1) / 2);
}

// Senders parked on a full channel are aborted while the consumer drains it:
// each value is either received once or destroyed with its cancelled sender,
// never both, never leaked; the queue of waiters stays consistent.
TEST(SyncStress, MpscAbortParkedSenders) {
  Counted::live = 0;
  auto rt = make_mt();
  const int rounds = 40 * kScale;
  const int senders = 16;
  rt.block_on([&]() -> Task<void> {
    for (int r = 0; r < rounds; ++r) {
      auto [tx_, rx_] = mpsc::channel<Counted>(2);
      auto tx = std::move(tx_);
      auto rx = std::move(rx_);
      std::vector<JoinHandle<bool>> hs;
      for (int s = 0; s < senders; ++s) {
        hs.push_back(
            spawn([tx, s]() mutable -> Task<bool> { co_return co_await tx.send(Counted(s)); }));
      }
      { auto gone = std::move(tx); }
      auto consumer = spawn([rx = std::move(rx)]() mutable -> Task<std::vector<int>> {
        std::vector<int> got;
        while (auto v = co_await rx.recv()) got.push_back(v->v);
        co_return got;
      });
      for (int s = r % 2; s < senders; s += 2) hs[s].abort();
      int delivered = 0;
      for (auto& h : hs) {
        try {
          if (co_await h) ++delivered;
        } catch (const TaskCancelled&) {
        }
      }
      std::vector<int> got = co_await consumer;
      std::sort(got.begin(), got.end());
      EXPECT_TRUE(std::adjacent_find(got.begin(), got.end()) == got.end());
      // A sender cancelled after its value was handed off still delivered it.
      EXPECT_GE(static_cast<int>(got.size()), delivered);
      EXPECT_GE(static_cast<int>(got.size()), senders / 2);
    }
  });
  EXPECT_EQ(Counted::live.load(), 0);
}

// --- Notify ------------------------------------------------------------------

// A doorbell: the producer bumps a counter and rings notify_one(); the
// consumer sleeps on notified() whenever it has caught up. A lost wake-up
// would hang; a spurious one is harmless.
TEST(SyncStress, NotifyDoorbell) {
  auto rt = make_mt();
  const int n = 5000 * kScale;
  Notify bell;
  std::atomic<int> produced{0};
  int consumed = rt.block_on([&]() -> Task<int> {
    auto consumer = spawn([&]() -> Task<int> {
      int seen = 0;
      while (seen < n) {
        if (produced.load(std::memory_order_acquire) > seen) {
          ++seen;
          continue;
        }
        co_await bell.notified();
      }
      co_return seen;
    });
    auto producer = spawn([&]() -> Task<void> {
      for (int i = 0; i < n; ++i) {
        produced.fetch_add(1, std::memory_order_release);
        bell.notify_one();
        if (i % 8 == 0) co_await yield_now();
      }
    });
    co_await producer;
    co_return co_await consumer;
  });
  EXPECT_EQ(consumed, n);
}

// notify_waiters() as a barrier release, many rounds: every waiter that
// registered before the broadcast is released.
TEST(SyncStress, NotifyWaitersRounds) {
  auto rt = make_mt();
  const int rounds = 50 * kScale;
  const int waiters = 8;
  rt.block_on([&]() -> Task<void> {
    Notify go;
    for (int r = 0; r < rounds; ++r) {
      std::atomic<int> ready{0};
      std::vector<JoinHandle<void>> hs;
      for (int w = 0; w < waiters; ++w) {
        hs.push_back(spawn([&]() -> Task<void> {
          auto f = go.notified();  // counts from here
          ready.fetch_add(1);
          co_await f;
        }));
      }
      while (ready.load() < waiters) co_await yield_now();
      go.notify_waiters();
      for (auto& h : hs) co_await h;
    }
  });
}

// --- Mutex -------------------------------------------------------------------

// Tasks on both workers and a plain thread increment under the lock, some
// holding it across a yield; some waiting tasks are aborted. The count is
// exact and the lock ends free.
TEST(SyncStress, MutexContention) {
  auto rt = make_mt();
  const int tasks = 12;
  const int iters = 300 * kScale;
  Mutex<long> m(0);
  std::atomic<long> expected{0};
  std::thread t([&] {
    for (int i = 0; i < iters; ++i) {
      auto g = m.blocking_lock();
      ++*g;
    }
  });
  expected += iters;
  rt.block_on([&]() -> Task<void> {
    std::vector<JoinHandle<void>> hs;
    for (int k = 0; k < tasks; ++k) {
      hs.push_back(spawn([&, k]() -> Task<void> {
        for (int i = 0; i < iters; ++i) {
          auto g = co_await m.lock();
          ++*g;
          expected.fetch_add(1);
          if ((i + k) % 7 == 0) co_await yield_now();
        }
      }));
    }
    // Waiters that get cancelled while parked (or right after a hand-over).
    std::vector<JoinHandle<void>> doomed;
    for (int k = 0; k < 32; ++k) {
      doomed.push_back(spawn([&]() -> Task<void> {
        auto g = co_await m.lock();
        ++*g;
        expected.fetch_add(1);
        co_await yield_now();
      }));
    }
    co_await yield_now();
    for (auto& h : doomed) h.abort();
    for (auto& h : doomed) {
      try {
        co_await h;
      } catch (const TaskCancelled&) {
      }
    }
    for (auto& h : hs) co_await h;
  });
  t.join();
  EXPECT_FALSE(m.is_locked());
  EXPECT_EQ(m.get_mut(), expected.load());
}

}  // namespace
}  // namespace tideloop
