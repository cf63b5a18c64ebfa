// Unix stream sockets: listener + connect + echo, socketpair, and the
// errors of connecting to nothing.
#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

#include "net_test_util.hpp"
#include "tideloop/net.hpp"
#include "tideloop/runtime.hpp"

namespace {

using tideloop::Runtime;
using tideloop::Task;
using tideloop::net::UnixListener;
using tideloop::net::UnixStream;

Runtime make_rt(bool multi) {
  return multi ? Runtime::Builder::multi_thread().worker_threads(2).build()
               : Runtime::Builder::current_thread().build();
}

std::string temp_path(const char* tag) {
  return "/tmp/tideloop-" + std::string(tag) + "-" + std::to_string(::getpid()) + ".sock";
}

class Unix : public ::testing::TestWithParam<bool> {};
INSTANTIATE_TEST_SUITE_P(Runtime, Unix, ::testing::Values(true, false), [](const auto& info) {
  return info.param ? "MultiThread" : "CurrentThread";
});

TEST_P(Unix, ListenConnectEcho) {
  auto rt = make_rt(GetParam());
  const std::string path = temp_path(GetParam() ? "mt" : "ct");
  ::unlink(path.c_str());
  rt.block_on([&]() -> Task<> {
    auto l = UnixListener::bind(path);
    CO_ASSERT_TRUE(l, << l.error().message());
    EXPECT_EQ(l->local_addr().value().path(), path);
    auto server = tideloop::spawn(tltest::echo_server(&*l, 2));
    for (int k = 0; k < 2; ++k) {
      auto c = co_await UnixStream::connect(path);
      CO_ASSERT_TRUE(c, << c.error().message());
      std::string big(200000, 'u');
      auto reader = tideloop::spawn([&c, n = big.size()]() -> Task<std::string> {
        std::string back(n, '\0');
        auto r = co_await c->read_exact(back.data(), back.size());
        co_return r ? back : std::string();
      });
      CO_ASSERT_TRUE(co_await c->write_all(big));
      EXPECT_EQ(co_await reader, big);
    }
    co_await server;
  });
  ::unlink(path.c_str());
}

TEST_P(Unix, SocketPair) {
  auto rt = make_rt(GetParam());
  rt.block_on([]() -> Task<> {
    auto [a, b] = UnixStream::pair().value();
    CO_ASSERT_TRUE(co_await a.write_all(std::string_view("hi")));
    char buf[2];
    CO_ASSERT_TRUE(co_await b.read_exact(buf, 2));
    EXPECT_EQ(std::string(buf, 2), "hi");
    a.close();
    auto eof = co_await b.read(buf, 2);
    CO_ASSERT_TRUE(eof);
    EXPECT_EQ(*eof, 0u);
  });
}

TEST_P(Unix, ConnectErrors) {
  auto rt = make_rt(GetParam());
  const std::string path = temp_path("stale");
  rt.block_on([&]() -> Task<> {
    auto missing = co_await UnixStream::connect("/tmp/tideloop-does-not-exist.sock");
    EXPECT_EQ(missing.error(), std::errc::no_such_file_or_directory);
    ::unlink(path.c_str());
    { auto l = UnixListener::bind(path).value(); }  // closed: the file stays
    auto refused = co_await UnixStream::connect(path);
    EXPECT_EQ(refused.error(), std::errc::connection_refused);
    auto again = UnixListener::bind(path);
    EXPECT_EQ(again.error(), std::errc::address_in_use);
  });
  ::unlink(path.c_str());
}

}  // namespace
