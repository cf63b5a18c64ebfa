// The per-worker socket sets (runtime/src/io/reactor.hpp) under stress, run
// by the ThreadSanitizer build: every byte arrives whatever mix of busy
// workers harvesting their own sets, sleeping workers whose sets the driver
// harvests on their behalf, and stolen tasks; nothing is lost when
// connections close while their events are being dispatched.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <random>
#include <vector>

#include "net_test_util.hpp"
#include "test_support.hpp"
#include "tideloop/net.hpp"
#include "tideloop/runtime.hpp"
#include "tideloop/time.hpp"

namespace {

using namespace std::chrono_literals;
using tideloop::JoinHandle;
using tideloop::Runtime;
using tideloop::Task;
using tideloop::net::TcpListener;
using tideloop::net::TcpStream;

// One client: `rounds` round trips of random sizes, some after a pause (the
// workers go to sleep, so the driver harvests their sets), some after a
// burst of CPU work (so the other workers steal).
Task<bool> chatty_client(tideloop::net::TcpEndpoint addr, int rounds, unsigned seed) {
  auto s = co_await TcpStream::connect(addr);
  if (!s) co_return false;
  std::mt19937 rng(seed);
  std::vector<unsigned char> out(8192), back(8192);
  for (int r = 0; r < rounds; ++r) {
    const std::size_t n = 1 + rng() % out.size();
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<unsigned char>(rng());
    if (!(co_await s->write_all(out.data(), n))) co_return false;
    if (!(co_await s->read_exact(back.data(), n))) co_return false;
    if (std::memcmp(out.data(), back.data(), n) != 0) co_return false;
    switch (rng() % 16) {
      case 0:
        co_await tideloop::sleep(std::chrono::microseconds(rng() % 500));
        break;
      case 1: {
        volatile unsigned spin = 0;
        for (int i = 0; i < 20000; ++i) spin = spin + 1;
        break;
      }
      case 2:
        co_await tideloop::yield_now();
        break;
      default:
        break;
    }
  }
  co_return true;
}

TEST(NetShardStress, EveryByteArrivesAcrossSleepingAndBusyWorkers) {
  const int fds_before = tltest::count_fds();
  for (int workers : {2, 4}) {
    auto rt = Runtime::Builder::multi_thread().worker_threads(workers).build();
    const int kConns = static_cast<int>(tltest::scaled(24, 12, 8));
    const int kRounds = static_cast<int>(tltest::scaled(400, 150, 60));
    std::atomic<int> ok{0};
    rt.block_on([&]() -> Task<> {
      auto l = TcpListener::bind("127.0.0.1", 0).value();
      const auto addr = l.local_addr().value();
      auto server = tideloop::spawn(tltest::echo_server(&l, kConns));
      std::vector<JoinHandle<bool>> hs;
      for (int c = 0; c < kConns; ++c)
        hs.push_back(tideloop::spawn(chatty_client(addr, kRounds, 1234u + c)));
      for (auto& h : hs)
        if (co_await h) ok.fetch_add(1);
      co_await server;
    });
    EXPECT_EQ(ok.load(), kConns) << workers << " workers";
  }
  EXPECT_EQ(tltest::count_fds(), fds_before);
}

// A single connection at low load: every round trip finds the workers
// asleep (one in the driver, the others on their futex), so each event goes
// through a sleeping worker's armed set. A lost notification hangs here.
TEST(NetShardStress, IdleRuntimeNeverMissesAnEvent) {
  auto rt = Runtime::Builder::multi_thread().worker_threads(3).build();
  const int kRounds = static_cast<int>(tltest::scaled(300, 150, 80));
  const bool ok = rt.block_on([&]() -> Task<bool> {
    auto l = TcpListener::bind("127.0.0.1", 0).value();
    const auto addr = l.local_addr().value();
    tideloop::spawn([&]() -> Task<> {
      auto r = co_await l.accept();
      if (r) co_await tltest::echo_conn(std::move(r->first));
    }).detach();
    // From the block_on thread: its socket is homed on some worker, and the
    // block_on thread is woken by whichever worker harvests it.
    auto s = (co_await TcpStream::connect(addr)).value();
    char b = 0;
    for (int i = 0; i < kRounds; ++i) {
      co_await tideloop::sleep(200us);
      b = static_cast<char>(i);
      if (!(co_await s.write_all(&b, 1))) co_return false;
      char back = 0;
      if (!(co_await s.read_exact(&back, 1)) || back != b) co_return false;
    }
    co_return true;
  });
  EXPECT_TRUE(ok);
}

// Writes until the client goes away.
Task<> flood(TcpStream s) {
  std::vector<char> junk(4096, 'x');
  while (co_await s.write_all(junk.data(), junk.size())) {
  }
}

// Connections closed while events for them are in flight on other workers
// (the peer writes as fast as it can): the deferred release of each shard
// keeps the dispatch off freed memory (ASan/TSan builds check).
TEST(NetShardStress, CloseWhileEventsAreDispatched) {
  auto rt = Runtime::Builder::multi_thread().worker_threads(4).build();
  const int kConns = static_cast<int>(tltest::scaled(64, 32, 16));
  rt.block_on([&]() -> Task<> {
    auto l = TcpListener::bind("127.0.0.1", 0).value();
    const auto addr = l.local_addr().value();
    auto server = tideloop::spawn(tltest::serve_n(&l, kConns, flood));
    std::vector<JoinHandle<void>> hs;
    for (int c = 0; c < kConns; ++c) {
      hs.push_back(tideloop::spawn([addr, c]() -> Task<> {
        auto s = co_await TcpStream::connect(addr);
        if (!s) co_return;
        char buf[1024];
        for (int i = 0; i < 1 + c % 7; ++i)
          if (!(co_await s->read(buf, sizeof buf))) break;
        s->close();  // events for it may be in another worker's batch
      }));
    }
    for (auto& h : hs) co_await h;
    co_await server;
  });
}

}  // namespace
