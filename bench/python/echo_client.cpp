// The load generator of the Python network benchmarks (bench/python/bench_net.py): the same
// client for every event loop under test, in its own process, so the numbers compare servers.
//
// N connections (or, for UDP, N connected sockets) each run request/response echo with a message
// of S bytes: send the whole message, read back exactly S bytes, check they are the bytes sent,
// repeat. One thread, epoll, non-blocking sockets, level-triggered; EPOLLOUT is watched only
// while a send is unfinished. Each run has a warm-up (round trips not counted) and then a
// measured window of fixed length; a round trip counts if it completes inside the window.
//
// Output, one JSON object on stdout: messages per second (completed round trips), MiB/s of
// echoed payload (one direction), the median and 99th percentile round-trip latency, and for
// UDP the datagrams given up on. Exit status 1 with {"error": ...} when the server misbehaves
// (closes, echoes other bytes, or never answers).
//
// With --server-pid PID it also reports the CPU time the server process spent inside the
// measured window ("server_cpu_s"), read by the client itself at the window's two ends, so the
// samples are exact to the microsecond with no third process waking up: the sum over
// /proc/PID/task/*/schedstat of the first field (ns on a CPU, every thread of the process), or,
// on a kernel without schedstat, utime + stime of /proc/PID/stat (all threads, in clock ticks:
// 10 ms steps). "server_cpu_source" says which. A thread that exits inside the window takes its
// schedstat time with it (the servers here start none after they are ready).
//
// Why it is not the bottleneck: a round trip costs the client one send, one recv and a share of
// an epoll_wait, no allocation and no copy beyond the kernel's; that is the least any server
// does too, so the client's cost is the kernel's loopback cost. A Python server adds its
// interpreter time on top. The ceiling, measured on the 2-core reference VM with a minimal C
// epoll echo server in place of Python: 70-110k round trips/s of 1 KiB over 10 connections,
// both processes busy in the kernel; uvloop's protocol echo does about 65k there, asyncio's
// about 25k. Over 1 connection every round trip waits for two wake-ups: ~30 us, whatever the
// server, so the 1-connection rows compress the differences between loops.
//
//   tideloop_echo_client --transport tcp --host 127.0.0.1 --port P --size 1024 --conns 10
//                        --duration 1.0 --warmup 0.2
//   tideloop_echo_client --transport unix --path /tmp/x/echo.sock ...
//   tideloop_echo_client --transport udp --host 127.0.0.1 --port P ...   (size <= 61440)
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

// UDP datagrams stay below the IPv4 maximum (65,507 bytes) with a round number.
constexpr std::size_t kMaxUdpSize = 60 * 1024;
// A UDP datagram (request or reply) can be dropped when a receive buffer is full; after this
// long without a reply the socket gives up on it and sends the next one.
constexpr auto kUdpResendAfter = std::chrono::milliseconds(200);
// Events taken per epoll_wait; more than the connections of any row.
constexpr int kMaxEvents = 64;

enum class Transport { kTcp, kUnix, kUdp };

struct Options {
  Transport transport = Transport::kTcp;
  std::string host = "127.0.0.1";
  int port = 0;
  std::string path;
  std::size_t size = 1024;
  int conns = 1;
  double duration = 1.0;
  double warmup = 0.2;
  int server_pid = 0;  // 0: no CPU sampling
};

// One connection's round trip in progress. Only the main thread exists.
struct Conn {
  int fd = -1;
  std::vector<unsigned char> out;  // the message being sent; its first 8 bytes are `seq`
  std::vector<unsigned char> in;   // bytes received so far of the reply
  std::size_t sent = 0;
  std::size_t received = 0;
  std::uint64_t seq = 0;
  Clock::time_point started;
  bool want_out = false;  // EPOLLOUT is registered
};

[[noreturn]] void fail(const std::string& msg) {
  std::string esc;
  for (char c : msg) {
    if (c == '"' || c == '\\') esc += '\\';
    esc += (c == '\n') ? ' ' : c;
  }
  std::printf("{\"error\": \"%s\"}\n", esc.c_str());
  std::fflush(stdout);
  std::exit(1);
}

[[noreturn]] void fail_errno(const std::string& what) {
  fail(what + ": " + std::strerror(errno));
}

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: tideloop_echo_client --transport tcp|unix|udp (--host H --port P | --path "
               "SOCK) --size BYTES --conns N --duration S --warmup S [--server-pid PID]\n");
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (i + 1 >= argc) usage();
    const char* v = argv[++i];
    if (a == "--transport") {
      std::string_view t = v;
      if (t == "tcp") {
        o.transport = Transport::kTcp;
      } else if (t == "unix") {
        o.transport = Transport::kUnix;
      } else if (t == "udp") {
        o.transport = Transport::kUdp;
      } else {
        usage();
      }
    } else if (a == "--host") {
      o.host = v;
    } else if (a == "--port") {
      o.port = std::atoi(v);
    } else if (a == "--path") {
      o.path = v;
    } else if (a == "--size") {
      o.size = static_cast<std::size_t>(std::atol(v));
    } else if (a == "--conns") {
      o.conns = std::atoi(v);
    } else if (a == "--duration") {
      o.duration = std::atof(v);
    } else if (a == "--warmup") {
      o.warmup = std::atof(v);
    } else if (a == "--server-pid") {
      o.server_pid = std::atoi(v);
    } else {
      usage();
    }
  }
  if (o.size < 8 || o.conns < 1 || o.duration <= 0 || o.warmup < 0) usage();
  if (o.transport == Transport::kUdp && o.size > kMaxUdpSize) {
    fail("UDP messages are capped at " + std::to_string(kMaxUdpSize) + " bytes");
  }
  if (o.transport == Transport::kUnix ? o.path.empty() : o.port <= 0) usage();
  return o;
}

int connect_one(const Options& o) {
  int fd = -1;
  if (o.transport == Transport::kUnix) {
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    if (o.path.size() >= sizeof(sa.sun_path)) fail("unix socket path too long");
    std::memcpy(sa.sun_path, o.path.c_str(), o.path.size() + 1);
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) fail_errno("socket");
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) fail_errno("connect");
  } else {
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<std::uint16_t>(o.port));
    if (::inet_pton(AF_INET, o.host.c_str(), &sa.sin_addr) != 1) fail("bad IPv4 address");
    const int type = o.transport == Transport::kUdp ? SOCK_DGRAM : SOCK_STREAM;
    fd = ::socket(AF_INET, type | SOCK_CLOEXEC, 0);
    if (fd < 0) fail_errno("socket");
    // Connected even for UDP: send/recv then need no address, and replies from elsewhere are
    // filtered by the kernel.
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) fail_errno("connect");
    if (o.transport == Transport::kTcp) {
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
  }
  // Connected while blocking (the listener's backlog completes it), then non-blocking for I/O.
  if (::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) fail_errno("fcntl");
  return fd;
}

void watch(int ep, Conn& c, bool want_out, int op) {
  epoll_event ev{};
  ev.events = EPOLLIN | (want_out ? EPOLLOUT : 0u);
  ev.data.ptr = &c;
  if (::epoll_ctl(ep, op, c.fd, &ev) != 0) fail_errno("epoll_ctl");
  c.want_out = want_out;
}

// Stream transports: write what the socket takes; watch EPOLLOUT only while some is left.
void pump_send(int ep, Conn& c) {
  while (c.sent < c.out.size()) {
    ssize_t n = ::send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
    if (n > 0) {
      c.sent += static_cast<std::size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      break;
    } else {
      fail_errno("send");
    }
  }
  const bool left = c.sent < c.out.size();
  if (left != c.want_out) watch(ep, c, left, EPOLL_CTL_MOD);
}

void start_round_trip(int ep, Conn& c, bool datagram) {
  ++c.seq;
  std::memcpy(c.out.data(), &c.seq, sizeof(c.seq));
  c.sent = 0;
  c.received = 0;
  c.started = Clock::now();
  if (!datagram) {
    pump_send(ep, c);
    return;
  }
  // A datagram goes whole or not at all; a full send buffer is the only expected failure,
  // and the resend timer covers it.
  ssize_t n = ::send(c.fd, c.out.data(), c.out.size(), 0);
  if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS && errno != EINTR &&
      errno != ECONNREFUSED) {
    fail_errno("send");
  }
}

struct Stats {
  std::uint64_t messages = 0;
  std::uint64_t lost = 0;  // UDP only: round trips given up after kUdpResendAfter
  std::vector<double> latencies_us;
};

// Called when c's reply is complete; true if it is the message sent.
bool reply_matches(const Conn& c) {
  return std::memcmp(c.out.data(), c.in.data(), c.out.size()) == 0;
}

// Reads what is readable; returns true when the reply is complete.
bool pump_recv(Conn& c, bool datagram) {
  if (datagram) {
    for (;;) {
      ssize_t n = ::recv(c.fd, c.in.data(), c.in.size(), 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNREFUSED) return false;
        fail_errno("recv");
      }
      // A late reply to a datagram already given up on carries an older seq: skip it.
      if (static_cast<std::size_t>(n) == c.out.size() && reply_matches(c)) return true;
      std::uint64_t seq = 0;
      if (n >= 8) std::memcpy(&seq, c.in.data(), sizeof(seq));
      if (n < 8 || seq >= c.seq) fail("udp reply differs from the datagram sent");
    }
  }
  while (c.received < c.in.size()) {
    ssize_t n = ::recv(c.fd, c.in.data() + c.received, c.in.size() - c.received, 0);
    if (n > 0) {
      c.received += static_cast<std::size_t>(n);
    } else if (n == 0) {
      fail("server closed the connection");
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return false;
    } else {
      fail_errno("recv");
    }
  }
  // The server sends nothing unasked, so bytes beyond S cannot arrive before the next request.
  if (!reply_matches(c)) fail("reply differs from the message sent");
  return true;
}

// CPU time of process `pid` so far, all threads, in seconds; negative if it cannot be read.
// `source` is set to "schedstat" or "stat".
double process_cpu_s(int pid, const char** source) {
  const std::string dir = "/proc/" + std::to_string(pid) + "/task";
  if (DIR* d = ::opendir(dir.c_str())) {
    unsigned long long ns = 0;
    bool any = false, ok = true;
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      std::ifstream f(dir + "/" + e->d_name + "/schedstat");
      unsigned long long t = 0;
      if (f >> t) {
        ns += t;
        any = true;
      } else if (!::access((dir + "/" + e->d_name).c_str(), F_OK)) {
        ok = false;  // the thread is there but has no schedstat: use stat
        break;
      }  // else the thread exited while we listed: its time is gone either way
    }
    ::closedir(d);
    if (any && ok) {
      *source = "schedstat";
      return static_cast<double>(ns) * 1e-9;
    }
  }
  // /proc/PID/stat: fields 14 and 15 (utime, stime) come after the ")" that ends field 2.
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(f, line)) return -1;
  const auto rparen = line.rfind(')');  // the command name may hold spaces and parens
  if (rparen == std::string::npos || rparen + 2 > line.size()) return -1;
  std::string_view rest(line);
  rest.remove_prefix(rparen + 2);  // now at field 3
  unsigned long long utime = 0, stime = 0;
  for (int field = 3; field <= 15; ++field) {
    const auto sp = rest.find(' ');
    const std::string tok(rest.substr(0, sp));
    if (field == 14) utime = std::strtoull(tok.c_str(), nullptr, 10);
    if (field == 15) stime = std::strtoull(tok.c_str(), nullptr, 10);
    if (sp == std::string_view::npos) {
      if (field < 15) return -1;
      break;
    }
    rest.remove_prefix(sp + 1);
  }
  *source = "stat";
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

double percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  auto k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const bool datagram = o.transport == Transport::kUdp;
  const int ep = ::epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) fail_errno("epoll_create1");

  std::vector<Conn> conns(static_cast<std::size_t>(o.conns));
  for (std::size_t i = 0; i < conns.size(); ++i) {
    Conn& c = conns[i];
    c.fd = connect_one(o);
    c.out.resize(o.size);
    c.in.resize(o.size);
    for (std::size_t k = 0; k < o.size; ++k) {
      c.out[k] = static_cast<unsigned char>((k * 131 + i * 7) & 0xff);
    }
    watch(ep, c, false, EPOLL_CTL_ADD);
  }

  using Secs = std::chrono::duration<double>;
  const auto t0 = Clock::now();
  const auto window_start = t0 + std::chrono::duration_cast<Clock::duration>(Secs(o.warmup));
  const auto window_end =
      window_start + std::chrono::duration_cast<Clock::duration>(Secs(o.duration));
  Stats st;
  st.latencies_us.reserve(1 << 20);
  std::uint64_t warm_messages = 0;
  // Server CPU at the window's start and end (--server-pid); sampled when the loop first sees
  // the clock past window_start (the epoll_wait timeout below ends there) and past window_end.
  bool window_open = false;
  const char* cpu_source = "";
  const char* cpu_source_end = "";
  double cpu_start = -1, cpu_end = -1;

  for (Conn& c : conns) start_round_trip(ep, c, datagram);

  epoll_event events[kMaxEvents];
  for (;;) {
    const auto now = Clock::now();
    if (now >= window_end) break;
    if (!window_open && now >= window_start) {
      window_open = true;
      if (o.server_pid > 0) cpu_start = process_cpu_s(o.server_pid, &cpu_source);
    }
    // Wake at least every 50 ms: the UDP resend scan and the deadlines need no event.
    const auto next = window_open ? window_end : window_start;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(next - now).count();
    const int timeout = static_cast<int>(std::clamp<long long>(left + 1, 1, 50));
    int n = ::epoll_wait(ep, events, kMaxEvents, timeout);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_errno("epoll_wait");
    }
    for (int i = 0; i < n; ++i) {
      Conn& c = *static_cast<Conn*>(events[i].data.ptr);
      if (!datagram && (events[i].events & (EPOLLOUT | EPOLLERR)) && c.sent < c.out.size()) {
        pump_send(ep, c);
      }
      if (!(events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) continue;
      if (!pump_recv(c, datagram)) continue;
      const auto done = Clock::now();
      if (done >= window_start && done < window_end) {
        ++st.messages;
        st.latencies_us.push_back(
            std::chrono::duration<double, std::micro>(done - c.started).count());
      } else if (done < window_start) {
        ++warm_messages;
      }
      start_round_trip(ep, c, datagram);
    }
    if (datagram) {
      const auto t = Clock::now();
      for (Conn& c : conns) {
        if (t - c.started > kUdpResendAfter) {
          if (t >= window_start) ++st.lost;
          start_round_trip(ep, c, datagram);
        }
      }
    }
  }
  if (o.server_pid > 0 && window_open) cpu_end = process_cpu_s(o.server_pid, &cpu_source_end);
  for (Conn& c : conns) ::close(c.fd);
  ::close(ep);

  if (st.messages == 0) {
    fail(warm_messages ? "no round trip completed in the measured window"
                       : "the server never answered");
  }
  const double secs = o.duration;
  const double p50 = percentile(st.latencies_us, 0.50);
  const double p99 = percentile(st.latencies_us, 0.99);
  const char* names[] = {"tcp", "unix", "udp"};
  std::printf(
      "{\"transport\": \"%s\", \"size\": %zu, \"conns\": %d, \"duration_s\": %.3f, "
      "\"messages\": %llu, \"messages_per_s\": %.1f, \"mib_per_s\": %.2f, "
      "\"latency_us_p50\": %.1f, \"latency_us_p99\": %.1f, \"lost\": %llu",
      names[static_cast<int>(o.transport)], o.size, o.conns, secs,
      static_cast<unsigned long long>(st.messages), static_cast<double>(st.messages) / secs,
      static_cast<double>(st.messages) * static_cast<double>(o.size) / secs / (1024.0 * 1024.0),
      p50, p99, static_cast<unsigned long long>(st.lost));
  // Both samples from the same source, or none (a mixed pair would not subtract).
  if (cpu_start >= 0 && cpu_end >= cpu_start && std::strcmp(cpu_source, cpu_source_end) == 0) {
    std::printf(", \"server_cpu_s\": %.6f, \"server_cpu_source\": \"%s\"", cpu_end - cpu_start,
                cpu_source);
  }
  std::printf("}\n");
  return 0;
}
