// Faults and bad input on sockets. Every error must reach the awaiting task
// as a Result carrying the errno, never a crash or a hang:
// connection refused, peer reset mid-read, peer half-close, write to a
// closed peer (no SIGPIPE), accept under EMFILE (backs off, then serves
// again), runtime shutdown with open sockets and pending timers (fds closed),
// sockets that outlive their runtime.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
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
using tideloop::net::Shutdown;
using tideloop::net::TcpListener;
using tideloop::net::TcpStream;
using tltest::loopback;

Runtime make_rt(bool multi) {
  return multi ? Runtime::Builder::multi_thread().worker_threads(2).build()
               : Runtime::Builder::current_thread().build();
}

class Fault : public ::testing::TestWithParam<bool> {
 protected:
  // SIGPIPE keeps its default action (terminate) in these tests: a write
  // without MSG_NOSIGNAL would kill the test binary.
  void SetUp() override { signal(SIGPIPE, SIG_DFL); }
};
INSTANTIATE_TEST_SUITE_P(Runtime, Fault, ::testing::Values(true, false), [](const auto& info) {
  return info.param ? "MultiThread" : "CurrentThread";
});

TEST_P(Fault, ConnectionRefused) {
  auto rt = make_rt(GetParam());
  rt.block_on([]() -> Task<> {
    // A port that was just free: bind, read the port, close.
    std::uint16_t port;
    {
      auto l = TcpListener::bind("127.0.0.1", 0).value();
      port = l.local_addr().value().port();
    }
    auto c = co_await TcpStream::connect(loopback(port));
    CO_ASSERT_TRUE(!c);
    EXPECT_EQ(c.error(), std::errc::connection_refused);
    EXPECT_EQ(c.error().value(), ECONNREFUSED);
  });
}

TEST_P(Fault, PeerResetMidRead) {
  auto rt = make_rt(GetParam());
  rt.block_on([]() -> Task<> {
    auto l = TcpListener::bind("127.0.0.1", 0).value();
    auto c = (co_await TcpStream::connect(l.local_addr().value())).value();
    auto [s, peer] = (co_await l.accept()).value();
    // The client blocks in read; the server resets the connection
    // (SO_LINGER 0 + close sends RST).
    auto reader = tideloop::spawn([&c]() -> Task<std::error_code> {
      char buf[64];
      auto r = co_await c.read(buf, sizeof buf);
      co_return r.error();
    });
    co_await tideloop::sleep(5ms);
    linger lg{1, 0};
    ::setsockopt(s.native_handle(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    s.close();
    const std::error_code ec = co_await reader;
    EXPECT_EQ(ec, std::errc::connection_reset) << ec.message();
  });
}

TEST_P(Fault, PeerHalfClose) {
  auto rt = make_rt(GetParam());
  rt.block_on([]() -> Task<> {
    auto l = TcpListener::bind("127.0.0.1", 0).value();
    auto c = (co_await TcpStream::connect(l.local_addr().value())).value();
    auto [s, peer] = (co_await l.accept()).value();
    CO_ASSERT_TRUE(co_await c.write_all(std::string_view("request")));
    CO_ASSERT_TRUE(c.shutdown(Shutdown::kWrite));
    // The server reads the request then end of stream...
    std::string got;
    char buf[16];
    for (;;) {
      auto n = co_await s.read(buf, sizeof buf);
      CO_ASSERT_TRUE(n, << n.error().message());
      if (*n == 0) break;
      got.append(buf, *n);
    }
    EXPECT_EQ(got, "request");
    // ...and can still answer on its half.
    CO_ASSERT_TRUE(co_await s.write_all(std::string_view("response")));
    s.close();
    std::string back;
    for (;;) {
      auto n = co_await c.read(buf, sizeof buf);
      CO_ASSERT_TRUE(n);
      if (*n == 0) break;
      back.append(buf, *n);
    }
    EXPECT_EQ(back, "response");
    // read_exact past the end reports eof.
    auto r = co_await c.read_exact(buf, 1);
    EXPECT_EQ(r.error(), asio::error::eof);
  });
}

TEST_P(Fault, WriteToClosedPeerIsAnErrorNotSigpipe) {
  auto rt = make_rt(GetParam());
  rt.block_on([]() -> Task<> {
    auto l = TcpListener::bind("127.0.0.1", 0).value();
    auto c = (co_await TcpStream::connect(l.local_addr().value())).value();
    {
      auto acc = (co_await l.accept()).value();
      acc.first.close();
    }
    std::vector<char> chunk(64 * 1024, 'x');
    std::error_code ec;
    for (int i = 0; i < 1000 && !ec; ++i) {
      auto w = co_await c.write(chunk.data(), chunk.size());
      if (!w) ec = w.error();
      co_await tideloop::sleep(1ms);
    }
    EXPECT_TRUE(ec == std::errc::broken_pipe || ec == std::errc::connection_reset) << ec.message();
  });
}

TEST_P(Fault, ReadAfterLocalCloseFails) {
  auto rt = make_rt(GetParam());
  rt.block_on([]() -> Task<> {
    auto [a, b] = tideloop::net::UnixStream::pair().value();
    a.close();
    char buf[4];
    auto r = co_await a.read(buf, sizeof buf);
    EXPECT_EQ(r.error(), std::errc::bad_file_descriptor);
    auto w = co_await a.write(buf, sizeof buf);
    EXPECT_EQ(w.error(), std::errc::bad_file_descriptor);
  });
}

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

TEST_P(Fault, AcceptUnderEmfileBacksOffThenRecovers) {
  auto rt = make_rt(GetParam());
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  rt.block_on([&]() -> Task<> {
    auto l = TcpListener::bind("127.0.0.1", 0).value();
    const auto addr = l.local_addr().value();
    // Client sockets first (they need descriptors too), then use up the
    // rest under a lowered limit.
    constexpr int kClients = 3;
    int clients[kClients];
    for (int& fd : clients) fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    const int probe = ::dup(0);
    rlimit low = saved;
    low.rlim_cur = static_cast<rlim_t>(probe + 16);
    ::close(probe);
    CO_ASSERT_TRUE(setrlimit(RLIMIT_NOFILE, &low) == 0);
    std::vector<int> hogs;
    for (;;) {
      const int fd = ::dup(0);
      if (fd < 0) break;
      hogs.push_back(fd);
    }
    for (int fd : clients) ::connect(fd, addr.data(), static_cast<socklen_t>(addr.size()));

    // An accept loop that simply retries on error, like the echo example.
    std::atomic<int> accepted{0}, emfile{0}, other{0};
    std::atomic<bool> stop{false};
    auto server = tideloop::spawn([&]() -> Task<> {
      std::vector<TcpStream> keep;
      while (!stop.load() && accepted.load() < kClients) {
        auto r = co_await l.accept();
        if (r) {
          keep.push_back(std::move(r->first));
          accepted.fetch_add(1);
        } else if (r.error() == std::errc::too_many_files_open) {
          emfile.fetch_add(1);
        } else {
          other.fetch_add(1);
        }
      }
    });
    const double cpu0 = cpu_seconds();
    co_await tideloop::sleep(400ms);
    const double cpu_used = cpu_seconds() - cpu0;
    EXPECT_GT(emfile.load(), 0);
    EXPECT_EQ(accepted.load(), 0);
    // Backing off, not spinning: a few EMFILEs, little CPU.
    EXPECT_LT(emfile.load(), 50);
    EXPECT_LT(cpu_used, 0.2);
    // Free the descriptors: the same loop serves again.
    for (int fd : hogs) ::close(fd);
    setrlimit(RLIMIT_NOFILE, &saved);
    const auto t0 = tideloop::Clock::now();
    while (accepted.load() < kClients && tideloop::Clock::now() - t0 < 5s)
      co_await tideloop::sleep(5ms);
    EXPECT_EQ(accepted.load(), kClients);
    EXPECT_EQ(other.load(), 0);
    stop = true;
    for (int fd : clients) ::close(fd);
    co_await server;
  });
  setrlimit(RLIMIT_NOFILE, &saved);
}

TEST_P(Fault, ShutdownWithOpenSocketsAndPendingTimersClosesEverything) {
  const int fds_before = tltest::count_fds();
  const auto t0 = tideloop::Clock::now();
  {
    auto rt = make_rt(GetParam());
    std::vector<JoinHandle<void>> hs;
    rt.block_on([&]() -> Task<> {
      auto l = std::make_shared<TcpListener>(TcpListener::bind("127.0.0.1", 0).value());
      const auto addr = l->local_addr().value();
      // Pending accept, pending reads on both ends, pending timers.
      hs.push_back(tideloop::spawn([l]() -> Task<> {
        for (;;) {
          auto r = co_await l->accept();
          if (!r) co_return;
          tideloop::spawn(tltest::echo_conn(std::move(r->first))).detach();
        }
      }));
      for (int i = 0; i < 20; ++i) {
        hs.push_back(tideloop::spawn([addr, i]() -> Task<> {
          auto c = (co_await TcpStream::connect(addr)).value();
          co_await tideloop::sleep(std::chrono::milliseconds(i));
          char b[8];
          (void)co_await c.read(b, sizeof b);  // never answered
        }));
        hs.push_back(tideloop::spawn(
            [i]() -> Task<> { co_await tideloop::sleep(std::chrono::hours(1 + i)); }));
      }
      co_await tideloop::sleep(30ms);
    });
    EXPECT_GT(tltest::count_fds(), fds_before + 20);
  }  // Runtime destroyed: tasks cancelled, sockets closed, reactor gone.
  EXPECT_LT(tideloop::Clock::now() - t0, 5s);
  EXPECT_EQ(tltest::count_fds(), fds_before);
}

TEST(FaultLifetime, SocketOutlivesItsRuntime) {
  const int fds_before = tltest::count_fds();
  TcpStream kept;
  TcpListener kept_listener;
  {
    auto rt = Runtime::Builder::multi_thread().worker_threads(1).build();
    rt.block_on([&]() -> Task<> {
      kept_listener = TcpListener::bind("127.0.0.1", 0).value();
      kept = (co_await TcpStream::connect(kept_listener.local_addr().value())).value();
    });
  }
  // Its runtime is gone: operations fail with ECANCELED (as Tokio's do), even
  // from another runtime's task, and closing still frees everything.
  {
    auto rt2 = Runtime::Builder::current_thread().build();
    rt2.block_on([&]() -> Task<> {
      char b[4];
      auto r = co_await kept.read(b, sizeof b);
      EXPECT_EQ(r.error(), std::errc::operation_canceled);
      auto w = co_await kept.write_all(std::string_view("ok"));
      EXPECT_EQ(w.error(), std::errc::operation_canceled);
    });
  }
  kept.close();
  kept_listener.close();
  EXPECT_EQ(tltest::count_fds(), fds_before);
}

TEST(FaultLifetime, ShutdownWakesABlockOnRootWaitingOnASocket) {
  auto rt = Runtime::Builder::multi_thread().worker_threads(1).build();
  std::thread killer([&] {
    std::this_thread::sleep_for(50ms);
    rt.shutdown();
  });
  std::error_code ec;
  rt.block_on([&]() -> Task<> {
    auto [a, b] = tideloop::net::UnixStream::pair().value();
    char buf[4];
    auto r = co_await a.read(buf, sizeof buf);
    ec = r.error();
  });
  killer.join();
  EXPECT_EQ(ec, std::errc::operation_canceled);
}

}  // namespace
