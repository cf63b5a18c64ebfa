// The reference column of the Python network benchmarks ("C echo" in bench_net.py's table): a
// minimal echo server in C++, one thread, epoll, so the table shows what the kernel's loopback
// costs with tideloop_echo_client as the load.
//
// Per readable event it does one read and one write of what was read (a write the socket does
// not take whole is queued and finished on EPOLLOUT, reading goes on), which is the least any
// event loop does; what a Python loop does on top of it is its own cost. A loop whose rate is
// near this column is bound by the kernel (on the 2-core reference VM a syscall is expensive and
// the client and the server each fill one core), and ratios between loops there say little.
// Not a strict bound with 100 KiB messages: this server wakes while a message is still arriving
// and its reads cost more (strace, 100 KiB x 1: one recv per message either way, 66 us each here,
// 14 us in uvloop, which reads later), so uvloop's protocol echo beats it there.
//
//   tideloop_echo_server --transport tcp|udp        binds 127.0.0.1 port 0
//   tideloop_echo_server --transport unix --path P
//
// Prints {"ready": true, "port": P, "path": ..., "loop": "c-echo.epoll"} on stdout, then serves
// until killed or until stdin reaches EOF (the driver is gone).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace {

// Bytes per read; above the largest message (100 KiB) so a message usually takes one read.
constexpr std::size_t kReadSize = 256 * 1024;
constexpr int kMaxEvents = 64;

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "%s: %s\n", what, std::strerror(errno));
  std::exit(1);
}

// A connection and the bytes read but not yet written back. Only the main thread exists.
struct Conn {
  int fd = -1;
  std::vector<char> pending;
  std::size_t written = 0;
};

void set_events(int ep, int fd, void* ptr, std::uint32_t events, int op) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = ptr;
  if (::epoll_ctl(ep, op, fd, &ev) != 0) die("epoll_ctl");
}

void close_conn(Conn* c) {
  ::close(c->fd);  // also removes it from the epoll set
  delete c;
}

// Writes what is pending; returns false if the connection failed.
bool flush(Conn* c) {
  while (c->written < c->pending.size()) {
    ssize_t n =
        ::send(c->fd, c->pending.data() + c->written, c->pending.size() - c->written, MSG_NOSIGNAL);
    if (n > 0) {
      c->written += static_cast<std::size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return true;
    } else {
      return false;
    }
  }
  c->pending.clear();
  c->written = 0;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::string transport = "tcp";
  std::string path;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string_view a = argv[i];
    if (a == "--transport") {
      transport = argv[i + 1];
    } else if (a == "--path") {
      path = argv[i + 1];
    }
  }
  const bool udp = transport == "udp";
  int port = 0;
  int lfd = -1;
  if (transport == "unix") {
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof(sa.sun_path)) {
      std::fprintf(stderr, "--path missing or too long\n");
      return 1;
    }
    std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
    lfd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0 || ::bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) die("bind");
  } else if (transport == "tcp" || udp) {
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    lfd = ::socket(AF_INET, (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0 || ::bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) die("bind");
    socklen_t len = sizeof(sa);
    if (::getsockname(lfd, reinterpret_cast<sockaddr*>(&sa), &len) != 0) die("getsockname");
    port = ntohs(sa.sin_port);
  } else {
    std::fprintf(stderr, "usage: tideloop_echo_server --transport tcp|unix|udp [--path P]\n");
    return 2;
  }
  if (!udp && ::listen(lfd, 128) != 0) die("listen");

  const int ep = ::epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  // Two sentinels tell the listener and stdin from connections in data.ptr.
  static char listener_tag;
  static char stdin_tag;
  set_events(ep, lfd, &listener_tag, EPOLLIN, EPOLL_CTL_ADD);
  set_events(ep, STDIN_FILENO, &stdin_tag, EPOLLIN, EPOLL_CTL_ADD);

  std::printf("{\"ready\": true, \"port\": %d, \"path\": %s%s%s, \"loop\": \"c-echo.epoll\"}\n",
              port, path.empty() ? "null" : "\"", path.c_str(), path.empty() ? "" : "\"");
  std::fflush(stdout);

  std::vector<char> buf(kReadSize);
  epoll_event events[kMaxEvents];
  for (;;) {
    int n = ::epoll_wait(ep, events, kMaxEvents, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    for (int i = 0; i < n; ++i) {
      void* tag = events[i].data.ptr;
      if (tag == &stdin_tag) {
        if (::read(STDIN_FILENO, buf.data(), buf.size()) <= 0) return 0;
        continue;
      }
      if (tag == &listener_tag && udp) {
        // Datagrams: each one straight back to its sender, until the socket is drained.
        for (;;) {
          sockaddr_storage from{};
          socklen_t flen = sizeof(from);
          ssize_t r =
              ::recvfrom(lfd, buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&from), &flen);
          if (r < 0) break;
          ::sendto(lfd, buf.data(), static_cast<std::size_t>(r), 0,
                   reinterpret_cast<sockaddr*>(&from), flen);
        }
        continue;
      }
      if (tag == &listener_tag) {
        for (;;) {
          int fd = ::accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (fd < 0) break;
          if (transport == "tcp") {
            int one = 1;
            ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
          }
          auto* c = new Conn{fd, {}, 0};
          set_events(ep, fd, c, EPOLLIN, EPOLL_CTL_ADD);
        }
        continue;
      }
      auto* c = static_cast<Conn*>(tag);
      const bool had_pending = !c->pending.empty();
      if (had_pending && (events[i].events & EPOLLOUT) && !flush(c)) {
        close_conn(c);
        continue;
      }
      if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        ssize_t r = ::recv(c->fd, buf.data(), buf.size(), 0);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
          close_conn(c);
          continue;
        }
        // Reading goes on while a write is unfinished (as asyncio's and uvloop's transports
        // do): the bytes queue behind it. With nothing queued they go straight from `buf`.
        if (r > 0 && !c->pending.empty()) {
          c->pending.insert(c->pending.end(), buf.data(), buf.data() + r);
        } else if (r > 0) {
          std::size_t sent = 0;
          while (sent < static_cast<std::size_t>(r)) {
            ssize_t w =
                ::send(c->fd, buf.data() + sent, static_cast<std::size_t>(r) - sent, MSG_NOSIGNAL);
            if (w > 0) {
              sent += static_cast<std::size_t>(w);
            } else if (w < 0 && errno == EINTR) {
              continue;
            } else {
              break;
            }
          }
          if (sent < static_cast<std::size_t>(r)) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
              close_conn(c);
              continue;
            }
            c->pending.assign(buf.data() + sent, buf.data() + r);
          }
        }
      }
      if (had_pending != !c->pending.empty()) {
        set_events(ep, c->fd, c, c->pending.empty() ? EPOLLIN : (EPOLLIN | EPOLLOUT),
                   EPOLL_CTL_MOD);
      }
    }
  }
}
