// AsyncFd: readiness waits on non-socket descriptors (pipe, eventfd).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>

#include "net_test_util.hpp"
#include "tideloop/io.hpp"
#include "tideloop/runtime.hpp"
#include "tideloop/time.hpp"

namespace {

using namespace std::chrono_literals;
using tideloop::AsyncFd;
using tideloop::Runtime;
using tideloop::Task;

TEST(AsyncFd, PipeReadableAfterWrite) {
  auto rt = Runtime::Builder::multi_thread().worker_threads(2).build();
  rt.block_on([]() -> Task<> {
    int p[2];
    CO_ASSERT_TRUE(::pipe2(p, O_NONBLOCK | O_CLOEXEC) == 0);
    auto r = AsyncFd::adopt(p[0]).value();
    auto w = AsyncFd::adopt(p[1]).value();
    auto writer = tideloop::spawn([&w]() -> Task<> {
      co_await tideloop::sleep(5ms);
      CO_ASSERT_TRUE(::write(w.fd(), "abc", 3) == 3);
    });
    char buf[8];
    ssize_t n;
    int waits = 0;
    for (;;) {
      n = ::read(r.fd(), buf, sizeof buf);
      if (n >= 0 || errno != EAGAIN) break;
      r.clear_ready(tideloop::Interest::kRead);  // else readable() completes at once
      auto ready = co_await r.readable();
      CO_ASSERT_TRUE(ready);
      ++waits;
    }
    EXPECT_LE(waits, 3);  // woken by the write, not spinning
    EXPECT_EQ(n, 3);
    co_await writer;
    // Writable at once (level semantics).
    auto wr = co_await tideloop::timeout(1s, w.writable());
    EXPECT_TRUE(wr);
  });
}

TEST(AsyncFd, EventfdAcrossThreads) {
  auto rt = Runtime::Builder::current_thread().build();
  rt.block_on([]() -> Task<> {
    auto e = AsyncFd::adopt(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)).value();
    std::thread t([fd = e.fd()] {
      std::this_thread::sleep_for(10ms);
      std::uint64_t one = 1;
      (void)::write(fd, &one, sizeof one);
    });
    std::uint64_t v = 0;
    auto n = co_await e.io(tideloop::Interest::kRead, [&] { return ::read(e.fd(), &v, sizeof v); });
    CO_ASSERT_TRUE(n, << n.error().message());
    EXPECT_EQ(*n, 8);
    EXPECT_EQ(v, 1u);
    t.join();
  });
}

TEST(AsyncFd, RegularFilesAreAlwaysReady) {
  // epoll refuses regular files (EPERM); Asio then treats them as never
  // blocking, so a readiness wait completes at once.
  auto rt = Runtime::Builder::current_thread().build();
  rt.block_on([]() -> Task<> {
    char path[] = "/tmp/tideloop-asyncfd-XXXXXX";
    const int fd = ::mkstemp(path);
    CO_ASSERT_TRUE(fd >= 0);
    ::unlink(path);
    auto r = AsyncFd::adopt(fd);
    CO_ASSERT_TRUE(r, << r.error().message());
    auto ready = co_await tideloop::timeout(1s, r->readable());
    (void)ready;  // completes (with or without an error code), never hangs
  });
}

}  // namespace
