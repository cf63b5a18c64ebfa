// Socket stress (run under ThreadSanitizer too): many connections on many
// workers, a reader and a writer task per stream, timeouts cancelling reads
// while their readiness arrives, tasks aborted from outside threads, and
// runtime shutdown in the middle of the traffic. Invariants: bytes arrive
// intact and in order, every task ends once, nothing hangs, every fd is
// closed afterwards.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <random>
#include <thread>
#include <vector>

#include "net_test_util.hpp"
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

#if defined(__SANITIZE_THREAD__)
constexpr int kScale = 4;
#else
constexpr int kScale = 8;
#endif

// Sends `total` bytes of a position-dependent pattern in uneven chunks.
Task<bool> send_pattern(TcpStream* s, std::size_t total, unsigned seed) {
  std::minstd_rand rng(seed);
  std::vector<unsigned char> buf(8192);
  std::size_t sent = 0;
  while (sent < total) {
    const std::size_t n = std::min<std::size_t>(total - sent, 1 + rng() % buf.size());
    for (std::size_t i = 0; i < n; ++i) buf[i] = static_cast<unsigned char>((sent + i) * 7 + seed);
    if (!(co_await s->write_all(buf.data(), n))) co_return false;
    sent += n;
    if (rng() % 8 == 0) co_await tideloop::yield_now();
  }
  co_return true;
}

// Receives and checks the pattern, through reads that a short timeout keeps
// cancelling (the readiness wait is dropped and re-armed each time).
Task<bool> recv_pattern(TcpStream* s, std::size_t total, unsigned seed) {
  std::vector<unsigned char> buf(4096);
  std::size_t got = 0;
  while (got < total) {
    tideloop::Result<std::size_t> n = std::size_t{0};
    try {
      n = co_await tideloop::timeout(std::chrono::microseconds(200),
                                     s->read(buf.data(), buf.size()));
    } catch (const tideloop::TimedOut&) {
      continue;
    }
    if (!n || *n == 0) co_return false;
    for (std::size_t i = 0; i < *n; ++i)
      if (buf[i] != static_cast<unsigned char>((got + i) * 7 + seed)) co_return false;
    got += *n;
  }
  co_return true;
}

TEST(NetStress, FullDuplexStreamsWithCancelledReads) {
  const int fds_before = tltest::count_fds();
  {
    auto rt = Runtime::Builder::multi_thread().worker_threads(4).build();
    std::atomic<int> ok{0};
    const int kConns = 16 * kScale;
    const std::size_t kBytes = 64 * 1024;
    rt.block_on([&]() -> Task<> {
      auto l = TcpListener::bind("127.0.0.1", 0).value();
      const auto addr = l.local_addr().value();
      // Server side: one echo task per connection. Client side: a writer task
      // and a reader task on the same stream.
      auto server = tideloop::spawn([&]() -> Task<> {
        for (int i = 0; i < kConns; ++i) {
          auto r = co_await l.accept();
          if (!r) co_return;
          tideloop::spawn(tltest::echo_conn(std::move(r->first))).detach();
        }
      });
      std::vector<JoinHandle<void>> hs;
      for (int c = 0; c < kConns; ++c) {
        hs.push_back(tideloop::spawn([&, c]() -> Task<> {
          auto s = co_await TcpStream::connect(addr);
          if (!s) co_return;
          auto writer = tideloop::spawn(send_pattern(&*s, kBytes, 11u + c));
          const bool received = co_await recv_pattern(&*s, kBytes, 11u + c);
          const bool sent = co_await writer;
          if (received && sent) ok.fetch_add(1);
        }));
      }
      for (auto& h : hs) co_await h;
      co_await server;
    });
    EXPECT_EQ(ok.load(), kConns);
  }
  EXPECT_EQ(tltest::count_fds(), fds_before);
}

TEST(NetStress, AbortsFromOutsideAndShutdownMidTraffic) {
  const int fds_before = tltest::count_fds();
  for (int round = 0; round < 3; ++round) {
    auto rt = Runtime::Builder::multi_thread().worker_threads(3).build();
    std::vector<JoinHandle<void>> clients;
    std::atomic<int> finished{0};
    std::uint16_t port = 0;
    rt.block_on([&]() -> Task<> {
      auto l = std::make_shared<TcpListener>(TcpListener::bind("127.0.0.1", 0).value());
      port = l->local_addr().value().port();
      tideloop::spawn([l]() -> Task<> {
        for (;;) {
          auto r = co_await l->accept();
          if (!r) co_return;
          tideloop::spawn(tltest::echo_conn(std::move(r->first))).detach();
        }
      }).detach();
      co_return;
    });
    for (int c = 0; c < 24 * kScale; ++c) {
      clients.push_back(rt.spawn([&, c]() -> Task<> {
        auto s = co_await TcpStream::connect(tltest::loopback(port));
        if (!s) co_return;
        std::vector<char> out(1024, static_cast<char>(c)), back(1024);
        for (int i = 0; i < 1000000; ++i) {
          if (!(co_await s->write_all(out.data(), out.size()))) break;
          if (!(co_await s->read_exact(back.data(), back.size()))) break;
        }
        finished.fetch_add(1);
      }));
    }
    // Abort half of them from this thread while they run...
    std::this_thread::sleep_for(20ms);
    for (std::size_t i = 0; i < clients.size(); i += 2) clients[i].abort();
    std::this_thread::sleep_for(20ms);
    // ...and shut the runtime down under the others.
    rt.shutdown();
    for (auto& h : clients) EXPECT_THROW(h.join(), tideloop::TaskCancelled);
  }
  EXPECT_EQ(tltest::count_fds(), fds_before);
}

TEST(NetStress, BlockOnAcceptLoopNoticesItsStopFlag) {
  // The echo example's main loop, from a block_on root (not a worker):
  // timeout(accept) in a loop while connections come and go, and a flag set
  // from another thread (like a signal handler) must be noticed within one
  // timeout. Two spinning threads oversubscribe the cores so that workers
  // and the root get preempted at arbitrary points.
  std::atomic<bool> spin{true};
  std::vector<std::thread> spinners;
  for (int i = 0; i < 2; ++i)
    spinners.emplace_back([&] {
      while (spin.load(std::memory_order_relaxed)) std::this_thread::yield();
    });
  for (int round = 0; round < 6 * kScale; ++round) {
    auto rt = Runtime::Builder::multi_thread().worker_threads(2).build();
    std::atomic<bool> stop{false};
    std::atomic<long> stopped_at{0};
    std::thread setter([&, round] {
      std::this_thread::sleep_for(std::chrono::milliseconds(20 + (round * 7) % 40));
      stopped_at = tideloop::Clock::now().time_since_epoch().count();
      stop = true;
    });
    rt.block_on([&]() -> Task<> {
      auto l = TcpListener::bind("127.0.0.1", 0).value();
      const auto addr = l.local_addr().value();
      auto clients = tideloop::spawn([addr, &stop]() -> Task<> {
        std::vector<char> out(32 * 1024, 'c'), back(out.size());
        while (!stop.load()) {
          auto c = co_await TcpStream::connect(addr);
          if (!c) co_return;
          if (!(co_await c->write_all(out.data(), out.size()))) co_return;
          if (!(co_await c->read_exact(back.data(), back.size()))) co_return;
        }
      });
      while (!stop.load()) {
        try {
          auto r = co_await tideloop::timeout(2ms, l.accept());
          if (r) tideloop::spawn(tltest::echo_conn(std::move(r->first))).detach();
        } catch (const tideloop::TimedOut&) {
        }
      }
      clients.abort();
    });
    const auto late = tideloop::Clock::now().time_since_epoch().count() - stopped_at.load();
    setter.join();
    EXPECT_LT(late, std::chrono::nanoseconds(500ms).count()) << "round " << round;
  }
  spin = false;
  for (auto& t : spinners) t.join();
}

}  // namespace
