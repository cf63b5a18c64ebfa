// echo_server: a native TCP echo server on tideloop.
//
// Usage:
//   ./build/examples/echo_server [PORT] [WORKERS]     (defaults: 7777, one per core)
// then, from another terminal:
//   nc 127.0.0.1 7777        type a line, it comes back; Ctrl-D closes
//   (or: printf 'hello\n' | nc -q1 127.0.0.1 7777)
// Ctrl-C stops the server.
//
// One task per connection: read what is there, write it all back, until the
// peer closes. Every error is a Result carrying the errno (printed, never a
// crash); accept() backs off by itself when the process runs out of file
// descriptors (EMFILE), so the loop below can simply retry.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "tideloop/net.hpp"
#include "tideloop/runtime.hpp"
#include "tideloop/time.hpp"

using tideloop::Task;
using tideloop::net::TcpListener;
using tideloop::net::TcpStream;

namespace {

volatile std::sig_atomic_t g_stop = 0;

Task<> serve(TcpStream s) {
  char buf[16 * 1024];
  for (;;) {
    auto n = co_await s.read(buf, sizeof buf);
    if (!n) {
      std::fprintf(stderr, "read: %s\n", n.error().message().c_str());
      co_return;
    }
    if (*n == 0) co_return;  // the peer closed
    auto w = co_await s.write_all(buf, *n);
    if (!w) {
      std::fprintf(stderr, "write: %s\n", w.error().message().c_str());
      co_return;
    }
  }
}

Task<int> run(std::uint16_t port) {
  auto l = TcpListener::bind("0.0.0.0", port);
  if (!l) {
    std::fprintf(stderr, "bind 0.0.0.0:%u: %s\n", port, l.error().message().c_str());
    co_return 1;
  }
  std::printf("echo server listening on %s\n",
              l->local_addr().value().address().to_string().c_str());
  std::printf("port %u; try: nc 127.0.0.1 %u\n", l->local_addr().value().port(),
              l->local_addr().value().port());
  std::fflush(stdout);
  while (!g_stop) {
    // Wake up now and then to notice Ctrl-C.
    try {
      auto r = co_await tideloop::timeout(std::chrono::milliseconds(200), l->accept());
      if (!r) {
        std::fprintf(stderr, "accept: %s\n", r.error().message().c_str());
        continue;
      }
      auto& [stream, peer] = *r;
      (void)stream.set_nodelay(true);
      tideloop::spawn(serve(std::move(stream))).detach();
    } catch (const tideloop::TimedOut&) {
    }
  }
  std::printf("shutting down\n");
  co_return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const long port = argc > 1 ? std::strtol(argv[1], nullptr, 10) : 7777;
  const long workers = argc > 2 ? std::strtol(argv[2], nullptr, 10) : 0;
  if (port < 0 || port > 65535 || workers < 0) {
    std::fprintf(stderr, "usage: %s [PORT] [WORKERS]\n", argv[0]);
    return 2;
  }
  std::signal(SIGINT, [](int) { g_stop = 1; });
  std::signal(SIGTERM, [](int) { g_stop = 1; });
  auto rt = tideloop::Runtime::Builder::multi_thread()
                .worker_threads(static_cast<std::size_t>(workers))
                .build();
  return rt.block_on(run(static_cast<std::uint16_t>(port)));
}
