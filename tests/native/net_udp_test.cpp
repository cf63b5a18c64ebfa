// UDP: send_to/recv_from, connected send/recv, a receive that waits for its
// datagram, truncation, and ICMP port-unreachable surfacing as ECONNREFUSED.
#include <gtest/gtest.h>

#include <string>

#include "net_test_util.hpp"
#include "tideloop/net.hpp"
#include "tideloop/runtime.hpp"
#include "tideloop/time.hpp"

namespace {

using namespace std::chrono_literals;
using tideloop::Runtime;
using tideloop::Task;
using tideloop::net::UdpSocket;

Runtime make_rt(bool multi) {
  return multi ? Runtime::Builder::multi_thread().worker_threads(2).build()
               : Runtime::Builder::current_thread().build();
}

class Udp : public ::testing::TestWithParam<bool> {};
INSTANTIATE_TEST_SUITE_P(Runtime, Udp, ::testing::Values(true, false), [](const auto& info) {
  return info.param ? "MultiThread" : "CurrentThread";
});

TEST_P(Udp, SendToAndRecvFrom) {
  auto rt = make_rt(GetParam());
  rt.block_on([]() -> Task<> {
    auto a = UdpSocket::bind("127.0.0.1", 0).value();
    auto b = UdpSocket::bind("127.0.0.1", 0).value();
    const auto a_addr = a.local_addr().value();
    const auto b_addr = b.local_addr().value();
    // b waits before anything is sent: the receive needs readiness.
    auto echo = tideloop::spawn([&b]() -> Task<> {
      char buf[64];
      for (int i = 0; i < 10; ++i) {
        auto r = co_await b.recv_from(buf, sizeof buf);
        CO_ASSERT_TRUE(r, << r.error().message());
        auto [n, from] = *r;
        CO_ASSERT_TRUE(co_await b.send_to(buf, n, from));
      }
    });
    co_await tideloop::sleep(2ms);
    for (int i = 0; i < 10; ++i) {
      const std::string msg = "dgram " + std::to_string(i);
      auto s = co_await a.send_to(msg.data(), msg.size(), b_addr);
      CO_ASSERT_TRUE(s);
      EXPECT_EQ(*s, msg.size());
      char buf[64];
      auto r = co_await a.recv_from(buf, sizeof buf);
      CO_ASSERT_TRUE(r);
      EXPECT_EQ(std::string(buf, r->first), msg);
      EXPECT_EQ(r->second, b_addr);
    }
    co_await echo;
    (void)a_addr;
  });
}

TEST_P(Udp, ConnectedSendRecvAndTruncation) {
  auto rt = make_rt(GetParam());
  rt.block_on([]() -> Task<> {
    auto a = UdpSocket::bind("127.0.0.1", 0).value();
    auto b = UdpSocket::bind("127.0.0.1", 0).value();
    CO_ASSERT_TRUE(a.connect(b.local_addr().value()));
    CO_ASSERT_TRUE(b.connect(a.local_addr().value()));
    EXPECT_EQ(a.peer_addr().value(), b.local_addr().value());
    CO_ASSERT_TRUE(co_await a.send("0123456789", 10));
    char small[4];
    auto r = co_await b.recv(small, sizeof small);
    CO_ASSERT_TRUE(r);
    EXPECT_EQ(*r, 4u);  // the rest of the datagram is dropped
    EXPECT_EQ(std::string(small, 4), "0123");
  });
}

TEST_P(Udp, PortUnreachableIsConnectionRefused) {
  auto rt = make_rt(GetParam());
  rt.block_on([]() -> Task<> {
    std::uint16_t dead_port;
    {
      auto tmp = UdpSocket::bind("127.0.0.1", 0).value();
      dead_port = tmp.local_addr().value().port();
    }
    auto a = UdpSocket::bind("127.0.0.1", 0).value();
    CO_ASSERT_TRUE(
        a.connect(tideloop::net::UdpEndpoint(asio::ip::make_address("127.0.0.1"), dead_port)));
    CO_ASSERT_TRUE(co_await a.send("x", 1));
    char b[4];
    // The ICMP error arrives asynchronously and is reported by the next call.
    auto r = co_await tideloop::timeout(2s, a.recv(b, sizeof b));
    EXPECT_EQ(r.error(), std::errc::connection_refused) << r.error().message();
  });
}

}  // namespace
