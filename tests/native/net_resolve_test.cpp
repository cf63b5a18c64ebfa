// Name resolution on the blocking pool.
#include <gtest/gtest.h>

#include "net_test_util.hpp"
#include "tideloop/net.hpp"
#include "tideloop/runtime.hpp"

namespace {

using tideloop::Runtime;
using tideloop::Task;

TEST(Resolve, LocalhostAndNumeric) {
  auto rt = Runtime::Builder::multi_thread().worker_threads(2).build();
  rt.block_on([]() -> Task<> {
    auto r = co_await tideloop::net::lookup_host("localhost", 8080);
    CO_ASSERT_TRUE(r, << r.error().message());
    CO_ASSERT_TRUE(!r->empty());
    for (const auto& ep : *r) {
      EXPECT_TRUE(ep.address().is_loopback()) << ep.address().to_string();
      EXPECT_EQ(ep.port(), 8080);
    }
    auto n = co_await tideloop::net::lookup_host("10.1.2.3", "99");
    CO_ASSERT_TRUE(n);
    CO_ASSERT_TRUE(n->size() == 1u);
    EXPECT_EQ((*n)[0].address().to_string(), "10.1.2.3");
    auto v6 = co_await tideloop::net::lookup_host("::1", 1);
    CO_ASSERT_TRUE(v6);
    EXPECT_TRUE((*v6)[0].address().is_v6());
  });
}

TEST(Resolve, UnknownHostIsAnError) {
  auto rt = Runtime::Builder::current_thread().build();
  rt.block_on([]() -> Task<> {
    auto r = co_await tideloop::net::lookup_host("no-such-host.invalid", 80);
    EXPECT_FALSE(r);
    EXPECT_TRUE(r.error()) << "expected a resolver error";
  });
}

}  // namespace
