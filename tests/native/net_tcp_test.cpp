// TCP on both runtime flavours: echo, addresses and options, large
// transfers that fill the socket buffers (write readiness), a reader and a
// writer on one stream, many connections, accept under a timeout loop,
// name-based connect.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <numeric>
#include <string>
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
using tideloop::net::TcpEndpoint;
using tideloop::net::TcpListener;
using tideloop::net::TcpStream;

Runtime make_rt(bool multi) {
  return multi ? Runtime::Builder::multi_thread().worker_threads(2).build()
               : Runtime::Builder::current_thread().build();
}

class Tcp : public ::testing::TestWithParam<bool> {};
INSTANTIATE_TEST_SUITE_P(Runtime, Tcp, ::testing::Values(true, false), [](const auto& info) {
  return info.param ? "MultiThread" : "CurrentThread";
});

using tltest::echo_server;
using tltest::loopback;

TEST_P(Tcp, EchoRoundTripAndAddresses) {
  auto rt = make_rt(GetParam());
  rt.block_on([]() -> Task<> {
    auto l = TcpListener::bind("127.0.0.1", 0);
    CO_ASSERT_TRUE(l, << l.error().message());
    const auto addr = l->local_addr().value();
    EXPECT_NE(addr.port(), 0);
    auto server = tideloop::spawn(echo_server(&*l, 1));
    auto c = co_await TcpStream::connect(addr);
    CO_ASSERT_TRUE(c, << c.error().message());
    EXPECT_EQ(c->peer_addr().value(), addr);
    EXPECT_TRUE(c->local_addr().value().address().is_loopback());
    CO_ASSERT_TRUE(c->set_nodelay(true));
    EXPECT_TRUE(c->nodelay().value());
    for (int i = 0; i < 100; ++i) {
      const std::string msg = "ping " + std::to_string(i);
      auto w = co_await c->write_all(msg);
      CO_ASSERT_TRUE(w);
      EXPECT_EQ(*w, msg.size());
      std::string back(msg.size(), '\0');
      auto r = co_await c->read_exact(back.data(), back.size());
      CO_ASSERT_TRUE(r, << r.error().message());
      EXPECT_EQ(back, msg);
    }
    co_await server;
  });
}

TEST_P(Tcp, Ipv6Loopback) {
  auto rt = make_rt(GetParam());
  rt.block_on([]() -> Task<> {
    auto l = TcpListener::bind("::1", 0);
    if (!l) co_return;  // no IPv6 loopback here
    auto server = tideloop::spawn(echo_server(&*l, 1));
    auto c = co_await TcpStream::connect(l->local_addr().value());
    CO_ASSERT_TRUE(c, << c.error().message());
    CO_ASSERT_TRUE(co_await c->write_all(std::string_view("v6")));
    char b[2];
    CO_ASSERT_TRUE(co_await c->read_exact(b, 2));
    EXPECT_EQ(std::string(b, 2), "v6");
    co_await server;
  });
}

TEST_P(Tcp, LargeTransferBothWays) {
  // 8 MiB each way through an echo server: both directions hit EAGAIN and
  // wait for readiness many times.
  auto rt = make_rt(GetParam());
  rt.block_on([]() -> Task<> {
    auto l = TcpListener::bind("127.0.0.1", 0).value();
    auto server = tideloop::spawn(echo_server(&l, 1));
    auto c = (co_await TcpStream::connect(l.local_addr().value())).value();
    const std::size_t kSize = 8 << 20;
    std::vector<unsigned char> out(kSize);
    for (std::size_t i = 0; i < kSize; ++i) out[i] = static_cast<unsigned char>(i * 131 + (i >> 9));
    std::vector<unsigned char> in(kSize);
    // Reader in another task, writer here: one stream, two tasks.
    auto reader = tideloop::spawn([&]() -> Task<std::size_t> {
      auto r = co_await c.read_exact(in.data(), in.size());
      co_return r ? *r : 0;
    });
    auto w = co_await c.write_all(out.data(), out.size());
    CO_ASSERT_TRUE(w, << w.error().message());
    EXPECT_EQ(co_await reader, kSize);
    EXPECT_TRUE(in == out);
    c.close();
    co_await server;
  });
}

TEST_P(Tcp, ManyConcurrentConnections) {
  auto rt = make_rt(GetParam());
  std::atomic<int> ok{0};
  rt.block_on([&]() -> Task<> {
    auto l = TcpListener::bind("127.0.0.1", 0).value();
    const int kClients = 100;
    auto server = tideloop::spawn(echo_server(&l, kClients));
    const auto addr = l.local_addr().value();
    std::vector<JoinHandle<void>> hs;
    for (int i = 0; i < kClients; ++i) {
      hs.push_back(tideloop::spawn([&, i]() -> Task<> {
        auto c = co_await TcpStream::connect(addr);
        if (!c) co_return;
        std::vector<char> msg(1024, static_cast<char>(i)), back(1024);
        for (int k = 0; k < 20; ++k) {
          if (!(co_await c->write_all(msg.data(), msg.size()))) co_return;
          if (!(co_await c->read_exact(back.data(), back.size()))) co_return;
          if (back != msg) co_return;
        }
        ok.fetch_add(1);
      }));
    }
    for (auto& h : hs) co_await h;
    co_await server;
  });
  EXPECT_EQ(ok.load(), 100);
}

TEST_P(Tcp, AcceptUnderATimeoutLoop) {
  // The echo example's accept loop: timeouts and accepts interleave; every
  // connection is accepted exactly once and nothing hangs.
  auto rt = make_rt(GetParam());
  rt.block_on([]() -> Task<> {
    auto l = TcpListener::bind("127.0.0.1", 0).value();
    const auto addr = l.local_addr().value();
    const int kConns = 60;
    auto clients = tideloop::spawn([addr]() -> Task<> {
      std::vector<TcpStream> keep;
      for (int i = 0; i < kConns; ++i) {
        auto c = co_await TcpStream::connect(addr);
        if (c) keep.push_back(std::move(*c));
        co_await tideloop::sleep(std::chrono::microseconds(200 + (i * 373) % 1500));
      }
      co_await tideloop::sleep(50ms);
    });
    int accepted = 0, timeouts = 0;
    while (accepted < kConns) {
      try {
        auto r = co_await tideloop::timeout(std::chrono::microseconds(300 + (accepted * 97) % 800),
                                            l.accept());
        CO_ASSERT_TRUE(r, << r.error().message());
        ++accepted;
      } catch (const tideloop::TimedOut&) {
        ++timeouts;
        CO_ASSERT_TRUE(timeouts < 100000);
      }
    }
    co_await clients;
    EXPECT_EQ(accepted, kConns);
  });
}

TEST_P(Tcp, ConnectByName) {
  auto rt = make_rt(GetParam());
  rt.block_on([]() -> Task<> {
    auto l = TcpListener::bind("127.0.0.1", 0).value();
    auto server = tideloop::spawn(echo_server(&l, 1));
    auto c = co_await TcpStream::connect("localhost", l.local_addr().value().port());
    CO_ASSERT_TRUE(c, << c.error().message());
    CO_ASSERT_TRUE(co_await c->write_all(std::string_view("x")));
    char b;
    CO_ASSERT_TRUE(co_await c->read_exact(&b, 1));
    EXPECT_EQ(b, 'x');
    co_await server;
  });
}

TEST_P(Tcp, BindErrorsCarryErrno) {
  auto rt = make_rt(GetParam());
  rt.block_on([]() -> Task<> {
    auto a = TcpListener::bind("127.0.0.1", 0).value();
    auto b = TcpListener::bind(a.local_addr().value());
    CO_ASSERT_TRUE(!b);
    EXPECT_EQ(b.error(), std::errc::address_in_use);
    EXPECT_EQ(b.error().value(), EADDRINUSE);
    EXPECT_THROW(b.value(), std::system_error);
    auto bad = TcpListener::bind("not-an-ip", 1);
    EXPECT_FALSE(bad);
    co_return;
  });
}

TEST_P(Tcp, ReadTimeoutLeavesTheStreamUsable) {
  // A read cancelled by a timeout loses nothing: readiness waits do not
  // consume data.
  auto rt = make_rt(GetParam());
  rt.block_on([]() -> Task<> {
    auto l = TcpListener::bind("127.0.0.1", 0).value();
    auto server = tideloop::spawn(echo_server(&l, 1));
    auto c = (co_await TcpStream::connect(l.local_addr().value())).value();
    char b[4];
    EXPECT_THROW(co_await tideloop::timeout(5ms, c.read(b, sizeof b)), tideloop::TimedOut);
    CO_ASSERT_TRUE(co_await c.write_all(std::string_view("abcd")));
    auto r = co_await c.read_exact(b, 4);
    CO_ASSERT_TRUE(r);
    EXPECT_EQ(std::string(b, 4), "abcd");
    c.close();
    co_await server;
  });
}

TEST_P(Tcp, DataAndFinTogetherAreBothSeen) {
  // The peer writes and closes before we read: data and FIN arrive as one
  // readiness edge. Reading the data with a larger buffer (a short read,
  // which drops plain readiness) must still see the end of stream.
  auto rt = make_rt(GetParam());
  rt.block_on([]() -> Task<> {
    auto l = TcpListener::bind("127.0.0.1", 0).value();
    auto c = (co_await TcpStream::connect(l.local_addr().value())).value();
    auto [s, peer] = (co_await l.accept()).value();
    CO_ASSERT_TRUE(co_await c.write_all(std::string_view("last words")));
    c.close();
    co_await tideloop::sleep(5ms);  // both have arrived
    char buf[256];
    auto n = co_await tideloop::timeout(2s, s.read(buf, sizeof buf));
    CO_ASSERT_TRUE(n);
    EXPECT_EQ(std::string(buf, *n), "last words");
    auto eof = co_await tideloop::timeout(2s, s.read(buf, sizeof buf));
    CO_ASSERT_TRUE(eof);
    EXPECT_EQ(*eof, 0u);
  });
}

TEST(TcpMisuse, SocketsNeedARuntime) {
  EXPECT_THROW((void)TcpListener::bind("127.0.0.1", 0), std::logic_error);
  auto rt = Runtime::Builder::current_thread().enable_io(false).build();
  EXPECT_THROW(rt.block_on([]() -> Task<> {
    (void)TcpListener::bind("127.0.0.1", 0);
    co_return;
  }),
               std::logic_error);
}

}  // namespace
