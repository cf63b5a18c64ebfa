// Helpers shared by the time/io/net tests.
#pragma once

#include <dirent.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tideloop/net.hpp"
#include "tideloop/runtime.hpp"

// ASSERT_* expands to `return`, which a coroutine cannot use: this fails the
// test and leaves the coroutine. Extra message: CO_ASSERT_TRUE(x, << "why").
#define CO_ASSERT_TRUE(cond, ...)                                \
  do {                                                           \
    if (!(cond)) {                                               \
      ADD_FAILURE() << "CO_ASSERT_TRUE(" #cond ") " __VA_ARGS__; \
      co_return;                                                 \
    }                                                            \
  } while (0)

namespace tltest {

inline tideloop::net::TcpEndpoint loopback(std::uint16_t port) {
  return tideloop::net::TcpEndpoint(asio::ip::make_address("127.0.0.1"), port);
}

// Echoes until end of stream or an error.
template <class Stream>
tideloop::Task<> echo_conn(Stream s) {
  std::vector<char> buf(16 * 1024);
  for (;;) {
    auto n = co_await s.read(buf.data(), buf.size());
    if (!n || *n == 0) co_return;
    if (!(co_await s.write_all(buf.data(), *n))) co_return;
  }
}

// Accepts `n` connections and runs handler(stream) (a Task) for each in its
// own task.
template <class Listener, class Handler>
tideloop::Task<> serve_n(Listener* l, int n, Handler handler) {
  for (int i = 0; i < n; ++i) {
    auto r = co_await l->accept();
    if (!r) {
      ADD_FAILURE() << "accept: " << r.error().message();
      co_return;
    }
    tideloop::spawn(handler(std::move(r->first))).detach();
  }
}

// Accepts `n` connections and echoes each in its own task.
template <class Listener>
tideloop::Task<> echo_server(Listener* l, int n) {
  return serve_n(l, n, [](auto s) { return echo_conn(std::move(s)); });
}

// Open descriptors of this process.
inline int count_fds() {
  int n = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (readdir(d) != nullptr) ++n;
    closedir(d);
  }
  return n - 3;  // ".", ".." and the DIR's own fd
}

}  // namespace tltest
