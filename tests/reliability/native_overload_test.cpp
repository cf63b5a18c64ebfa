// Overload: a native echo server (TcpListener, one task per connection, an
// accept loop that just retries on errors) runs in a child process with
// RLIMIT_NOFILE lowered to 64; this process (limit not lowered) then
//  1. opens 8 "kept" connections and checks a round trip on each;
//  2. opens 300 more connections than the server can hold and, for 2 s,
//     while the server sits at EMFILE it must not spin (over 1 s without
//     traffic its CPU time stays under a quarter of one core: accept() backs
//     off), and then round trips on the kept ones for 1 s must all succeed;
//  3. drops those, then for 3 s a client thread opens and drops connections
//     (half by RST) as fast as it can while round trips on the kept
//     connections go on, all succeeding;
//  4. after the load: the server's descriptors drain, 20 new connections are
//     accepted and served, and once everything is closed the server's fd
//     count is exactly its baseline; it then exits 0 when asked (no crash,
//     no hang: every wait here has a deadline).
// The server is the same binary re-executed with --overload-server.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "reliability_util.hpp"
#include "test_support.hpp"
#include "tideloop/net.hpp"
#include "tideloop/runtime.hpp"

extern char** environ;

namespace {

using namespace std::chrono_literals;
using tideloop::Task;
using tideloop::net::TcpListener;
using tideloop::net::TcpStream;

constexpr rlim_t kServerFdLimit = 64;

// --- the server (child process) ---

std::atomic<long> g_accepted{0}, g_emfile{0}, g_other_errors{0};

Task<> echo(TcpStream s) {
  char buf[4096];
  for (;;) {
    auto n = co_await s.read(buf, sizeof buf);
    if (!n || *n == 0) co_return;
    if (!(co_await s.write_all(buf, *n))) co_return;
  }
}

Task<> accept_loop(TcpListener* l) {
  for (;;) {
    auto r = co_await l->accept();
    if (!r) {
      (r.error().value() == EMFILE ? g_emfile : g_other_errors).fetch_add(1);
      continue;  // the listener backs off by itself
    }
    g_accepted.fetch_add(1);
    (void)r->first.set_nodelay(true);
    tideloop::spawn(echo(std::move(r->first))).detach();
  }
}

// Serves until stdin closes, then prints its counters and exits 0.
int server_main() {
  rlimit lim{};
  getrlimit(RLIMIT_NOFILE, &lim);
  lim.rlim_cur = kServerFdLimit;
  if (setrlimit(RLIMIT_NOFILE, &lim) != 0) return 10;
  auto rt = tideloop::Runtime::Builder::multi_thread().worker_threads(2).build();
  TcpListener l;
  rt.block_on([&]() -> Task<> {
    l = TcpListener::bind("127.0.0.1", 0).value();
    co_return;
  });
  auto server = rt.spawn(accept_loop(&l));
  std::printf("PORT %u\n", l.local_addr().value().port());
  std::fflush(stdout);
  char c;
  while (::read(0, &c, 1) > 0) {
  }
  std::printf("STATS accepted=%ld emfile=%ld other_errors=%ld\n", g_accepted.load(),
              g_emfile.load(), g_other_errors.load());
  std::fflush(stdout);
  server.abort();
  rt.shutdown();
  return 0;
}

// --- the client side (this process): plain blocking sockets with timeouts,
// independent of the runtime under test ---

void set_timeouts(int fd, std::chrono::milliseconds t) {
  timeval tv{static_cast<time_t>(t.count() / 1000),
             static_cast<suseconds_t>(t.count() % 1000 * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);  // connect() too
}

int connect_to(std::uint16_t port, std::chrono::milliseconds t = 10s) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  set_timeouts(fd, t);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

void close_rst(int fd) {
  linger lg{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  ::close(fd);
}

// 64 bytes there and back within the socket's timeouts.
bool round_trip(int fd, std::uint32_t seq) {
  char out[64], in[64];
  for (std::size_t i = 0; i < sizeof out; ++i) out[i] = static_cast<char>(seq * 31 + i);
  if (::send(fd, out, sizeof out, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof out)) return false;
  std::size_t got = 0;
  while (got < sizeof in) {
    const ssize_t n = ::recv(fd, in + got, sizeof in - got, 0);
    if (n <= 0) return false;
    got += static_cast<std::size_t>(n);
  }
  return std::memcmp(in, out, sizeof in) == 0;
}

struct Child {
  pid_t pid = -1;
  int to_child = -1;    // its stdin
  int from_child = -1;  // its stdout
};

Child spawn_server() {
  int in[2], out[2];
  Child c;
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) return c;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  // Nothing else inherited (a test runner's stray descriptors would count
  // against the server's limit).
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);
  char exe[] = "/proc/self/exe";
  char mode[] = "--overload-server";
  char* argv[] = {exe, mode, nullptr};
  if (posix_spawn(&c.pid, exe, &fa, nullptr, argv, environ) != 0) c.pid = -1;
  posix_spawn_file_actions_destroy(&fa);
  ::close(in[0]);
  ::close(out[1]);
  c.to_child = in[1];
  c.from_child = out[0];
  return c;
}

// One line from the child, or "" after `timeout`.
std::string read_line(int fd, std::chrono::milliseconds timeout) {
  std::string line;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char ch;
    if (::read(fd, &ch, 1) != 1) break;
    if (ch == '\n') return line;
    line += ch;
  }
  return "";
}

bool alive(pid_t pid) {
  int status;
  return waitpid(pid, &status, WNOHANG) == 0;
}

TEST(Overload, EchoServerUnderFdExhaustionAndConnectionChurn) {
  Child child = spawn_server();
  ASSERT_GT(child.pid, 0);
  struct Reap {
    Child& c;
    ~Reap() {
      if (c.to_child >= 0) ::close(c.to_child);
      if (c.pid > 0 && tlrel::wait_child(c.pid, 20s) == -1) ADD_FAILURE() << "server did not exit";
      if (c.from_child >= 0) ::close(c.from_child);
    }
  } reap{child};
  const std::string port_line = read_line(child.from_child, 20s);
  ASSERT_EQ(port_line.rfind("PORT ", 0), 0u) << "server did not start: '" << port_line << "'";
  const auto port = static_cast<std::uint16_t>(std::stoi(port_line.substr(5)));

  // Baseline: after a few connections came and went (lazy setup done).
  for (int i = 0; i < 3; ++i) {
    const int fd = connect_to(port);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(round_trip(fd, i));
    ::close(fd);
  }
  std::this_thread::sleep_for(200ms);
  const int base = tlrel::count_fds(child.pid);
  ASSERT_TRUE(tlrel::wait_until([&] { return tlrel::count_fds(child.pid) == base; }));

  // 1. Kept connections.
  constexpr int kKept = 8;
  std::vector<int> kept;
  for (int i = 0; i < kKept; ++i) {
    kept.push_back(connect_to(port));
    ASSERT_GE(kept.back(), 0);
    ASSERT_TRUE(round_trip(kept.back(), i));
  }
  std::uint32_t seq = 0;
  long kept_trips = 0;
  auto trips_on_kept = [&](std::chrono::milliseconds d) {
    const auto end = std::chrono::steady_clock::now() + d;
    while (std::chrono::steady_clock::now() < end) {
      for (int fd : kept) {
        if (!round_trip(fd, ++seq)) return false;
        ++kept_trips;
      }
    }
    return true;
  };

  // 2. More connections than the server's limit, held.
  constexpr int kFlood = 300;
  std::vector<int> flood;
  for (int i = 0; i < kFlood; ++i) {
    const int fd = connect_to(port, 2s);
    if (fd >= 0) flood.push_back(fd);
  }
  // At the limit with no traffic the server must be idle: a spinning accept
  // would take a whole core for the window, backoff wakes it ~10 times.
  std::this_thread::sleep_for(100ms);
  const int fds_at_limit = tlrel::count_fds(child.pid);
  const std::string fd_list_at_limit = tlrel::list_fds(child.pid);
  const double cpu0 = tlrel::process_cpu_seconds(child.pid);
  const auto w0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(1s);
  const double window =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
  const double cpu_at_limit = tlrel::process_cpu_seconds(child.pid) - cpu0;
  EXPECT_LT(cpu_at_limit, 0.25 * window) << "server spins at EMFILE";
  const bool held_ok = trips_on_kept(1s);
  EXPECT_TRUE(held_ok) << "a kept connection failed while the server was at its fd limit";
  EXPECT_TRUE(alive(child.pid));
  EXPECT_LE(fds_at_limit, static_cast<int>(kServerFdLimit)) << fd_list_at_limit;
  for (int fd : flood) ::close(fd);

  // 3. Open/drop churn.
  std::atomic<bool> stop{false};
  std::atomic<long> churned{0}, churn_failed{0};
  std::thread churn([&] {
    long i = 0;
    while (!stop.load()) {
      const int fd = connect_to(port, 1s);
      if (fd < 0) {
        churn_failed.fetch_add(1);  // a full accept queue drops SYNs: expected
        continue;
      }
      // RST mostly (no TIME_WAIT, so the client cannot run out of ports).
      if (++i % 8 == 0) {
        ::close(fd);
      } else {
        close_rst(fd);
      }
      churned.fetch_add(1);
    }
  });
  const bool churn_ok = trips_on_kept(3s);
  stop = true;
  churn.join();
  EXPECT_TRUE(churn_ok) << "a kept connection failed during the churn";
  EXPECT_TRUE(alive(child.pid));

  // 4. Recovery: descriptors drain, new connections are served.
  const bool drained =
      tlrel::wait_until([&] { return tlrel::count_fds(child.pid) <= base + kKept; }, 20s);
  EXPECT_TRUE(drained) << "server fds " << tlrel::count_fds(child.pid)
                       << ", expected <= " << base + kKept << "\n"
                       << tlrel::list_fds(child.pid);
  std::vector<int> fresh;
  int fresh_ok = 0;
  for (int i = 0; i < 20; ++i) {
    const int fd = connect_to(port);
    if (fd >= 0 && round_trip(fd, i)) ++fresh_ok;
    if (fd >= 0) fresh.push_back(fd);
  }
  EXPECT_EQ(fresh_ok, 20) << "new connections not served after the load";
  EXPECT_TRUE(trips_on_kept(100ms));
  for (int fd : fresh) ::close(fd);
  for (int fd : kept) ::close(fd);
  const bool back = tlrel::wait_until([&] { return tlrel::count_fds(child.pid) == base; }, 20s);
  EXPECT_TRUE(back) << "server fds " << tlrel::count_fds(child.pid) << " != baseline " << base
                    << "\n"
                    << tlrel::list_fds(child.pid);

  ::close(child.to_child);
  child.to_child = -1;
  const std::string stats = read_line(child.from_child, 20s);
  const int status = tlrel::wait_child(child.pid, 20s);
  child.pid = -1;
  EXPECT_EQ(status, 0) << "server " << tlrel::describe_status(status);
  std::printf(
      "server fds: baseline %d, at the limit %d (limit %d); held %zu over-limit "
      "connections; %ld round trips on %d kept connections, all good; server CPU %.2f s "
      "in a %.2f s window at EMFILE; churn: %ld connections opened and dropped in 3 s "
      "(%ld connect failures); server %s\n",
      base, fds_at_limit, static_cast<int>(kServerFdLimit), flood.size(), kept_trips, kKept,
      cpu_at_limit, window, churned.load(), churn_failed.load(), stats.c_str());
  EXPECT_EQ(stats.rfind("STATS ", 0), 0u);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--overload-server") == 0) return server_main();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
