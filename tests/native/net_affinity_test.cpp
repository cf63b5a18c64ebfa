// I/O affinity (runtime/src/scheduler/affinity.hpp): both ends of an
// in-process loopback connection run on the same worker, so a round trip
// stays on one core; connections spread over workers by work stealing.
#include <gtest/gtest.h>

#include <atomic>
#include <vector>

#include "net_test_util.hpp"
#include "test_support.hpp"
#include "tideloop/net.hpp"
#include "tideloop/runtime.hpp"

namespace {

using tideloop::Runtime;
using tideloop::Task;
using tideloop::net::TcpListener;
using tideloop::net::TcpStream;

struct Counts {
  std::atomic<long> together{0}, apart{0}, outside{0};
  std::atomic<long> on_worker[2] = {0, 0};
};

// Echo server side: records the worker of each echo in `where` (the echo of
// round trip i is written before the client reads it, so the client can
// compare without a race: it reads the slot after its read_exact returns).
Task<> echo_recording(TcpStream s, std::atomic<int>* where) {
  char buf[64];
  for (;;) {
    auto n = co_await s.read(buf, sizeof buf);
    if (!n || *n == 0) co_return;
    where->store(tideloop::current_worker_index(), std::memory_order_release);
    if (!(co_await s.write_all(buf, *n))) co_return;
  }
}

TEST(NetAffinity, LoopbackPeersShareAWorker) {
#if defined(TL_TSAN) || defined(TL_ASAN)
  GTEST_SKIP() << "placement, not correctness: measured in Release";
#endif
  constexpr int kConns = 8;
  constexpr int kRounds = 3000;
  constexpr int kWarmup = 200;
  Runtime rt = Runtime::Builder::multi_thread().worker_threads(2).build();
  Counts c;
  std::vector<std::atomic<int>> where(kConns);
  rt.block_on([&]() -> Task<> {
    auto l = TcpListener::bind("127.0.0.1", 0).value();
    const auto addr = l.local_addr().value();
    auto srv = tideloop::spawn([&, l = std::move(l)]() mutable -> Task<> {
      for (int i = 0; i < kConns; ++i) {
        auto r = co_await l.accept();
        CO_ASSERT_TRUE(r.ok());
        // The client sends its index first.
        char id = 0;
        CO_ASSERT_TRUE((co_await r->first.read_exact(&id, 1)).ok());
        tideloop::spawn(echo_recording(std::move(r->first), &where[static_cast<int>(id)])).detach();
      }
    });
    std::vector<tideloop::JoinHandle<void>> clients;
    for (int i = 0; i < kConns; ++i) {
      clients.push_back(tideloop::spawn([&, i]() -> Task<> {
        auto s = (co_await TcpStream::connect(addr)).value();
        const char id = static_cast<char>(i);
        CO_ASSERT_TRUE((co_await s.write_all(&id, 1)).ok());
        char msg[32] = {}, back[32];
        for (int r = 0; r < kRounds; ++r) {
          CO_ASSERT_TRUE((co_await s.write_all(msg, sizeof msg)).ok());
          CO_ASSERT_TRUE((co_await s.read_exact(back, sizeof back)).ok());
          if (r < kWarmup) continue;
          const int me = tideloop::current_worker_index();
          const int peer = where[i].load(std::memory_order_acquire);
          if (me < 0 || peer < 0) {
            c.outside.fetch_add(1);
          } else if (me == peer) {
            c.on_worker[me].fetch_add(1);
            c.together.fetch_add(1);
          } else {
            c.on_worker[me].fetch_add(1);
            c.apart.fetch_add(1);
          }
        }
      }));
    }
    for (auto& h : clients) co_await h;
    co_await srv;
  });
  const long total = c.together + c.apart;
  ASSERT_EQ(c.outside.load(), 0);
  ASSERT_GT(total, 0);
  const double frac = static_cast<double>(c.together) / static_cast<double>(total);
  const double share0 = static_cast<double>(c.on_worker[0]) / static_cast<double>(total);
  RecordProperty("together_fraction", std::to_string(frac));
  RecordProperty("worker0_share", std::to_string(share0));
  // Without affinity a woken task runs wherever the reactor was harvested:
  // connections either pile up on one worker or are split between two.
  EXPECT_GT(frac, 0.75) << c.together << " together, " << c.apart << " apart";
  // ...and the connections are spread, not all on one worker.
  EXPECT_GT(share0, 0.3);
  EXPECT_LT(share0, 0.7);
}

TEST(NetAffinity, CurrentWorkerIndex) {
  EXPECT_EQ(tideloop::current_worker_index(), -1);
  Runtime rt = Runtime::Builder::multi_thread().worker_threads(3).build();
  const int in_task = rt.block_on([]() -> Task<int> {
    co_return co_await tideloop::spawn([]() { return tideloop::current_worker_index(); });
  });
  EXPECT_GE(in_task, 0);
  EXPECT_LT(in_task, 3);
  EXPECT_EQ(rt.block_on([]() -> Task<int> { co_return tideloop::current_worker_index(); }), -1);
}

}  // namespace
