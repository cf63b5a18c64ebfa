// native_soak: a bounded mixed workload on a multi-thread runtime for a set
// time, checking that no work is lost or done twice and that nothing leaks.
//
//   native_soak [--seconds N] [--workers W] [--seed S] [--warmup SECONDS]
//
// Lanes (each a task looping until the deadline, a bounded number of
// operations in flight, so memory use is flat by construction):
//   spawn      trees of nested spawns (depth 3, fan-out 2), each parent joins
//              its children and checks their sums
//   sleep      batches of 8 sleeps of 0..3 ms; none may complete early
//   timeout    timeout(1 ms, sleep(1 h)) must time out; timeout(10 s,
//              sleep(<= 1 ms)) must not
//   abort      a task parked on a 1 h sleep is aborted after 0..2 ms (or
//              before it first runs); its joiner sees TaskCancelled and its
//              frame's destructor ran exactly once
//   blocking   spawn_blocking jobs (some sleep 100 us), values checked
//   channel    a producer task sends 64 numbered messages on a bounded mpsc
//              channel (capacity 8), the consumer checks order and count
//   echo       4 persistent TCP connections, round trips of 1..32 KiB of
//              seeded bytes, compared byte for byte
//   churn      connect, one 16-byte round trip, close (half of them by RST)
//   accept     the server side: every accepted connection's task must end
//   udp        a datagram echoed by a UDP socket (loopback drops none)
//
// Every operation gets an id when issued and reports it when completed: the
// check is completed == issued and the sums of a hash of the ids match (a lost
// operation and a duplicated one cannot cancel out). Violations (a wrong
// value, an early timer, a missing cancellation) are counted as failures.
// Liveness: every kind must complete at least one operation in every 5 s
// progress window (each needs milliseconds; a yielded task starved behind
// sustained load was found this way).
//
// Baseline: after a warm-up phase (the same workload, default 2 s) every
// lane has ended, every server task has ended, and the runtime is idle; fds
// and RSS are read then. After the measured phase, the same quiescent point
// is reached and compared: fds must be equal, RSS may be at most 8 MiB above
// the baseline. Why 8 MiB: tbbmalloc and glibc keep per-thread caches and
// arenas whose size depends on which thread freed what last (blocking-pool
// threads come and go); measured drift is ~1 MiB either way, while a leak of
// one 200-byte task block per operation would exceed 8 MiB within seconds
// (the soak runs ~100k+ operations per second). Exit code 1 on a violation.
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "reliability_util.hpp"
#include "tideloop/net.hpp"
#include "tideloop/runtime.hpp"
#include "tideloop/spawn_blocking.hpp"
#include "tideloop/sync.hpp"
#include "tideloop/time.hpp"

namespace {

using namespace std::chrono_literals;
using tideloop::Clock;
using tideloop::Instant;
using tideloop::JoinHandle;
using tideloop::Task;
using tideloop::TaskCancelled;
using tideloop::net::TcpListener;
using tideloop::net::TcpStream;
using tideloop::net::UdpSocket;

constexpr std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

struct Rng {
  std::uint64_t s;
  explicit Rng(std::uint64_t seed) : s(mix(seed) | 1) {}
  std::uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  std::uint64_t below(std::uint64_t n) { return next() % n; }
};

// One kind of operation: what was issued, what completed, what went wrong.
struct Kind {
  const char* name;
  std::atomic<std::uint64_t> issued{0}, completed{0}, failed{0};
  std::atomic<std::uint64_t> issued_sum{0}, completed_sum{0};
  std::uint64_t last_completed = 0;  // progress lines only (main thread)

  explicit Kind(const char* n) : name(n) {}
  std::uint64_t issue() {
    const std::uint64_t id = issued.fetch_add(1, std::memory_order_relaxed);
    issued_sum.fetch_add(mix(id), std::memory_order_relaxed);
    return id;
  }
  void complete(std::uint64_t id) {
    completed_sum.fetch_add(mix(id), std::memory_order_relaxed);
    completed.fetch_add(1, std::memory_order_relaxed);
  }
  void fail(const char* what) {
    if (failed.fetch_add(1, std::memory_order_relaxed) < 5)
      std::fprintf(stderr, "soak: %s: %s\n", name, what);
  }
};

enum KindId {
  kSpawn,
  kSleep,
  kTimeout,
  kAbort,
  kBlocking,
  kChannel,
  kEcho,
  kChurn,
  kAccept,
  kUdp,
  kKinds
};
std::array<Kind, kKinds> g_kinds{Kind("spawn"),    Kind("sleep"),   Kind("timeout"), Kind("abort"),
                                 Kind("blocking"), Kind("channel"), Kind("echo"),    Kind("churn"),
                                 Kind("accept"),   Kind("udp")};
// Server connection tasks alive (quiescence: 0 before a measurement).
std::atomic<int> g_server_conns{0};
// Progress windows in which some kind completed nothing.
std::atomic<int> g_starved{0};
// Destructions of the abort lane's frame guards.
std::atomic<std::uint64_t> g_abort_guards_destroyed{0};

Kind& K(KindId k) {
  return g_kinds[k];
}

// --- spawn ---

Task<std::uint64_t> tree(int depth, std::uint64_t id) {
  std::uint64_t nodes = 1;
  if (depth > 0) {
    const std::uint64_t a = K(kSpawn).issue(), b = K(kSpawn).issue();
    auto ha = tideloop::spawn(tree(depth - 1, a));
    auto hb = tideloop::spawn(tree(depth - 1, b));
    nodes += co_await ha;
    nodes += co_await hb;
    const std::uint64_t expect = (std::uint64_t{1} << (depth + 1)) - 1;
    if (nodes != expect) K(kSpawn).fail("tree size");
  }
  K(kSpawn).complete(id);
  co_return nodes;
}

Task<> spawn_lane(Instant end) {
  while (Clock::now() < end) {
    const std::uint64_t id = K(kSpawn).issue();
    const std::uint64_t n = co_await tideloop::spawn(tree(3, id));
    if (n != 15) K(kSpawn).fail("root tree size");
  }
}

// --- timers ---

Task<> one_sleep(std::chrono::microseconds d) {
  const std::uint64_t id = K(kSleep).issue();
  const Instant start = Clock::now();
  co_await tideloop::sleep(d);
  if (Clock::now() < start + d) K(kSleep).fail("fired before its deadline");
  K(kSleep).complete(id);
}

Task<> sleep_lane(Instant end, std::uint64_t seed) {
  Rng rng(seed);
  while (Clock::now() < end) {
    std::vector<JoinHandle<void>> hs;
    for (int i = 0; i < 8; ++i)
      hs.push_back(tideloop::spawn(one_sleep(std::chrono::microseconds(rng.below(3000)))));
    for (auto& h : hs) co_await h;
  }
}

Task<int> sleep_then(std::chrono::microseconds d, int v) {
  co_await tideloop::sleep(d);
  co_return v;
}

Task<> timeout_lane(Instant end, std::uint64_t seed) {
  Rng rng(seed);
  while (Clock::now() < end) {
    {
      const std::uint64_t id = K(kTimeout).issue();
      bool timed_out = false;
      try {
        (void)co_await tideloop::timeout(1ms, sleep_then(1h, 1));
      } catch (const tideloop::TimedOut&) {
        timed_out = true;
      }
      if (!timed_out) K(kTimeout).fail("a 1 h sleep beat a 1 ms timeout");
      K(kTimeout).complete(id);
    }
    {
      const std::uint64_t id = K(kTimeout).issue();
      const int v = static_cast<int>(rng.below(1000));
      try {
        const int got =
            co_await tideloop::timeout(10s, sleep_then(std::chrono::microseconds(v), v));
        if (got != v) K(kTimeout).fail("wrong value through timeout");
      } catch (const tideloop::TimedOut&) {
        K(kTimeout).fail("a <= 1 ms sleep lost to a 10 s timeout");
      }
      K(kTimeout).complete(id);
    }
  }
}

// --- abort ---

struct FrameGuard {
  bool live = true;
  FrameGuard() = default;
  FrameGuard(FrameGuard&& o) noexcept : live(std::exchange(o.live, false)) {}
  ~FrameGuard() {
    if (live) g_abort_guards_destroyed.fetch_add(1, std::memory_order_relaxed);
  }
};

Task<int> parked(FrameGuard g, std::atomic<bool>* started) {
  (void)g;
  started->store(true, std::memory_order_relaxed);
  co_await tideloop::sleep(1h);
  co_return 1;
}

Task<> abort_lane(Instant end, std::uint64_t seed) {
  Rng rng(seed);
  while (Clock::now() < end) {
    const std::uint64_t id = K(kAbort).issue();
    const std::uint64_t before = g_abort_guards_destroyed.load();
    std::atomic<bool> started{false};
    auto h = tideloop::spawn(parked(FrameGuard(), &started));
    const auto mode = rng.below(3);
    if (mode == 1) co_await tideloop::yield_now();
    if (mode == 2) co_await tideloop::sleep(std::chrono::microseconds(rng.below(2000)));
    h.abort();
    bool cancelled = false;
    try {
      (void)co_await h;
    } catch (const TaskCancelled&) {
      cancelled = true;
    }
    if (!cancelled) K(kAbort).fail("aborted task did not report TaskCancelled");
    // Only this lane creates guards, one at a time: exactly one destruction.
    if (g_abort_guards_destroyed.load() != before + 1) K(kAbort).fail("frame not destroyed once");
    K(kAbort).complete(id);
  }
}

// --- blocking ---

Task<> blocking_lane(Instant end, std::uint64_t seed) {
  Rng rng(seed);
  while (Clock::now() < end) {
    const std::uint64_t id = K(kBlocking).issue();
    const std::uint64_t x = rng.next();
    const bool nap = rng.below(4) == 0;
    auto h = tideloop::spawn_blocking([x, nap] {
      if (nap) std::this_thread::sleep_for(100us);
      return mix(x);
    });
    if (co_await h != mix(x)) K(kBlocking).fail("wrong value");
    K(kBlocking).complete(id);
  }
}

// --- channel ---

Task<> producer(tideloop::mpsc::Sender<std::uint64_t> tx, std::uint64_t first, int n) {
  for (int i = 0; i < n; ++i) {
    if (!co_await tx.send(first + i)) {
      K(kChannel).fail("send failed");
      co_return;
    }
  }
}

Task<> channel_lane(Instant end) {
  constexpr int kMessages = 64;
  while (Clock::now() < end) {
    auto [tx, rx] = tideloop::mpsc::channel<std::uint64_t>(8);
    std::uint64_t first = 0;
    for (int i = 0; i < kMessages; ++i) {
      const std::uint64_t id = K(kChannel).issue();
      if (i == 0) first = id;
    }
    // Ids of one batch are consecutive only when this lane is the only one
    // issuing them (it is).
    auto p = tideloop::spawn(producer(std::move(tx), first, kMessages));
    std::uint64_t expect = first;
    while (auto v = co_await rx.recv()) {
      if (*v != expect) K(kChannel).fail("out of order");
      K(kChannel).complete(*v);
      ++expect;
    }
    if (expect != first + kMessages) K(kChannel).fail("messages lost");
    co_await p;
  }
}

// --- TCP ---

Task<> server_conn(TcpStream s, std::uint64_t id) {
  std::vector<char> buf(16 * 1024);
  for (;;) {
    auto n = co_await s.read(buf.data(), buf.size());
    if (!n || *n == 0) break;  // end of stream, or a reset from the churn lane
    if (!(co_await s.write_all(buf.data(), *n))) break;
  }
  K(kAccept).complete(id);
  g_server_conns.fetch_sub(1);
}

Task<> accept_loop(TcpListener* l) {
  for (;;) {
    auto r = co_await l->accept();
    if (!r) {
      K(kAccept).fail(r.error().message().c_str());
      continue;
    }
    g_server_conns.fetch_add(1);
    (void)r->first.set_nodelay(true);
    tideloop::spawn(server_conn(std::move(r->first), K(kAccept).issue())).detach();
  }
}

void fill(std::vector<char>& v, std::size_t n, std::uint64_t seed) {
  v.resize(n);
  std::uint64_t x = mix(seed);
  for (std::size_t i = 0; i < n; ++i) {
    if (i % 8 == 0) x = mix(x);
    v[i] = static_cast<char>(x >> ((i % 8) * 8));
  }
}

Task<> echo_lane(Instant end, tideloop::net::TcpEndpoint addr, std::uint64_t seed) {
  Rng rng(seed);
  auto c = co_await TcpStream::connect(addr);
  if (!c) {
    K(kEcho).fail(c.error().message().c_str());
    co_return;
  }
  (void)c->set_nodelay(true);
  std::vector<char> out, in;
  while (Clock::now() < end) {
    const std::uint64_t id = K(kEcho).issue();
    fill(out, 1 + rng.below(32 * 1024), rng.next());
    in.assign(out.size(), 0);
    // Writer and reader concurrently: a 32 KiB echo must not need the whole
    // message buffered on one side.
    auto w = tideloop::spawn([&c, &out]() -> Task<bool> {
      co_return static_cast<bool>(co_await c->write_all(out.data(), out.size()));
    });
    auto r = co_await c->read_exact(in.data(), in.size());
    const bool wrote = co_await w;
    if (!wrote || !r) {
      K(kEcho).fail("round trip failed");
      co_return;
    }
    if (in != out) K(kEcho).fail("echo differs");
    K(kEcho).complete(id);
  }
}

Task<> churn_lane(Instant end, tideloop::net::TcpEndpoint addr, std::uint64_t seed) {
  Rng rng(seed);
  char msg[16], back[16];
  while (Clock::now() < end) {
    const std::uint64_t id = K(kChurn).issue();
    auto c = co_await TcpStream::connect(addr);
    if (!c) {
      K(kChurn).fail(c.error().message().c_str());
      continue;
    }
    std::snprintf(msg, sizeof msg, "%015" PRIu64, id);
    if (!(co_await c->write_all(msg, sizeof msg)) || !(co_await c->read_exact(back, sizeof back)) ||
        std::memcmp(msg, back, sizeof msg) != 0) {
      K(kChurn).fail("round trip failed");
    }
    if (rng.below(2) == 0) {
      linger lg{1, 0};  // close by RST: the server sees ECONNRESET, no TIME_WAIT
      ::setsockopt(c->native_handle(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    c->close();
    K(kChurn).complete(id);
  }
}

Task<> udp_lane(Instant end, std::uint64_t seed) {
  Rng rng(seed);
  auto a = UdpSocket::bind("127.0.0.1", 0);
  auto b = UdpSocket::bind("127.0.0.1", 0);
  if (!a || !b) {
    K(kUdp).fail("bind");
    co_return;
  }
  const auto a_addr = a->local_addr().value();
  // b echoes every datagram back to its sender until it gets an empty one.
  auto echo = tideloop::spawn([&b]() -> Task<> {
    char buf[2048];
    for (;;) {
      auto r = co_await b->recv_from(buf, sizeof buf);
      if (!r || r->first == 0) co_return;
      (void)co_await b->send_to(buf, r->first, r->second);
    }
  });
  const auto b_addr = b->local_addr().value();
  std::vector<char> out, in(2048);
  while (Clock::now() < end) {
    const std::uint64_t id = K(kUdp).issue();
    fill(out, 1 + rng.below(1400), id);
    (void)co_await a->send_to(out.data(), out.size(), b_addr);
    auto r = co_await a->recv_from(in.data(), in.size());
    if (!r || r->first != out.size() || std::memcmp(in.data(), out.data(), out.size()) != 0)
      K(kUdp).fail("datagram differs");
    K(kUdp).complete(id);
  }
  (void)co_await a->send_to(out.data(), 0, b_addr);
  co_await echo;
  (void)a_addr;
}

// Runs every lane until `end` and waits for them all.
Task<> phase(Instant end, tideloop::net::TcpEndpoint addr, std::uint64_t seed) {
  std::vector<JoinHandle<void>> lanes;
  std::uint64_t lane = 0;
  auto next_seed = [&] { return mix(seed + ++lane); };
  for (int i = 0; i < 2; ++i) lanes.push_back(tideloop::spawn(spawn_lane(end)));
  for (int i = 0; i < 2; ++i) lanes.push_back(tideloop::spawn(sleep_lane(end, next_seed())));
  lanes.push_back(tideloop::spawn(timeout_lane(end, next_seed())));
  lanes.push_back(tideloop::spawn(abort_lane(end, next_seed())));
  for (int i = 0; i < 2; ++i) lanes.push_back(tideloop::spawn(blocking_lane(end, next_seed())));
  lanes.push_back(tideloop::spawn(channel_lane(end)));
  for (int i = 0; i < 4; ++i) lanes.push_back(tideloop::spawn(echo_lane(end, addr, next_seed())));
  for (int i = 0; i < 2; ++i) lanes.push_back(tideloop::spawn(churn_lane(end, addr, next_seed())));
  lanes.push_back(tideloop::spawn(udp_lane(end, next_seed())));
  for (auto& h : lanes) co_await h;
}

struct Options {
  double seconds = 10;
  double warmup = 2;
  std::size_t workers = 2;
  std::uint64_t seed = 0;
};

Options parse(int argc, char** argv) {
  Options o;
  o.seed = static_cast<std::uint64_t>(Clock::now().time_since_epoch().count());
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--seconds") {
      o.seconds = std::strtod(val(), nullptr);
    } else if (a == "--warmup") {
      o.warmup = std::strtod(val(), nullptr);
    } else if (a == "--workers") {
      o.workers = std::strtoul(val(), nullptr, 10);
    } else if (a == "--seed") {
      o.seed = std::strtoull(val(), nullptr, 10);
    } else {
      std::fprintf(stderr, "usage: %s [--seconds N] [--warmup S] [--workers W] [--seed S]\n",
                   argv[0]);
      std::exit(2);
    }
  }
  return o;
}

// Runs one phase of `seconds` from this (non-runtime) thread, printing a
// progress line every 5 s.
void run_phase(tideloop::Runtime& rt, double seconds, tideloop::net::TcpEndpoint addr,
               std::uint64_t seed, bool progress) {
  const Instant start = Clock::now();
  const Instant end = start + std::chrono::duration_cast<tideloop::Duration>(
                                  std::chrono::duration<double>(seconds));
  auto h = rt.spawn(phase(end, addr, seed));
  Instant last = start;
  for (auto& k : g_kinds) k.last_completed = k.completed.load();
  while (!h.is_finished()) {
    std::this_thread::sleep_for(50ms);
    const Instant now = Clock::now();
    if (!progress || now - last < 5s) continue;
    const double dt = std::chrono::duration<double>(now - last).count();
    std::printf("t=%5.0fs", std::chrono::duration<double>(now - start).count());
    for (auto& k : g_kinds) {
      const std::uint64_t c = k.completed.load();
      std::printf(" %s %.0f/s", k.name, static_cast<double>(c - k.last_completed) / dt);
      // Liveness: every lane finishes an operation within milliseconds, so
      // none in 5 s is starvation (a yielded task that never ran again
      // under sustained load was such a bug).
      if (c == k.last_completed) {
        std::fprintf(stderr, "soak: %s completed nothing in %.1f s (starved)\n", k.name, dt);
        g_starved.fetch_add(1);
      }
      k.last_completed = c;
    }
    std::printf(" rss %.1f MiB fds %d\n", tlrel::mib(tlrel::rss_bytes()), tlrel::count_fds());
    std::fflush(stdout);
    last = now;
  }
  h.join();
}

// Waits until every server connection task ended (the client side closed
// them all when its lanes ended).
bool quiesce() {
  const auto deadline = Clock::now() + 30s;
  while (g_server_conns.load() != 0) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  std::printf("native_soak: %.0f s, warm-up %.0f s, %zu workers, seed %" PRIu64
              " (replay: native_soak --seconds %.0f --seed %" PRIu64 ")\n",
              opt.seconds, opt.warmup, opt.workers, opt.seed, opt.seconds, opt.seed);
  const int fds_before = tlrel::count_fds();
  int violations = 0;
  int fds_base = 0, fds_end = 0;
  std::int64_t rss_base = 0, rss_end = 0;
  const auto t0 = Clock::now();
  {
    auto rt = tideloop::Runtime::Builder::multi_thread().worker_threads(opt.workers).build();
    TcpListener listener;
    tideloop::net::TcpEndpoint addr;
    rt.block_on([&]() -> Task<> {
      listener = TcpListener::bind("127.0.0.1", 0).value();
      addr = listener.local_addr().value();
      co_return;
    });
    auto server = rt.spawn(accept_loop(&listener));

    run_phase(rt, opt.warmup, addr, opt.seed, false);
    if (!quiesce()) {
      std::fprintf(stderr, "soak: server connections still open after the warm-up\n");
      ++violations;
    }
    fds_base = tlrel::count_fds();
    rss_base = tlrel::settled_rss_bytes();
    std::printf("baseline after warm-up: rss %.1f MiB, fds %d\n", tlrel::mib(rss_base), fds_base);

    run_phase(rt, opt.seconds, addr, opt.seed + 1, true);
    if (!quiesce()) {
      std::fprintf(stderr, "soak: %d server connections still open at the end\n",
                   g_server_conns.load());
      ++violations;
    }
    fds_end = tlrel::count_fds();
    rss_end = tlrel::settled_rss_bytes();
    server.abort();
    rt.shutdown();
    const auto live = rt.metrics().live_tasks;
    if (live != 0) {
      std::fprintf(stderr, "soak: %llu tasks alive after shutdown\n",
                   static_cast<unsigned long long>(live));
      ++violations;
    }
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  const int fds_after = tlrel::count_fds();

  std::printf("\n%-10s %14s %14s %8s %12s\n", "kind", "issued", "completed", "failed", "ops/s");
  std::uint64_t total = 0;
  for (auto& k : g_kinds) {
    const auto issued = k.issued.load(), completed = k.completed.load(), failed = k.failed.load();
    total += completed;
    const bool ok = issued == completed && k.issued_sum.load() == k.completed_sum.load() &&
                    failed == 0 && issued > 0;
    std::printf(
        "%-10s %14llu %14llu %8llu %12.0f%s\n", k.name, static_cast<unsigned long long>(issued),
        static_cast<unsigned long long>(completed), static_cast<unsigned long long>(failed),
        static_cast<double>(completed) / (opt.seconds + opt.warmup), ok ? "" : "   <-- VIOLATION");
    if (!ok) ++violations;
  }
  const std::int64_t rss_drift = rss_end - rss_base;
  constexpr std::int64_t kRssBound = std::int64_t{8} << 20;
  std::printf("total %llu operations in %.1f s\n", static_cast<unsigned long long>(total), elapsed);
  std::printf("rss: baseline %.1f MiB, end %.1f MiB, drift %+.2f MiB (bound +8 MiB%s)\n",
              tlrel::mib(rss_base), tlrel::mib(rss_end), tlrel::mib(rss_drift),
              tlrel::kRssBounded ? "" : ", not checked under ASan");
  std::printf("fds: baseline %d, end %d (must be equal); before the runtime %d, after it %d\n",
              fds_base, fds_end, fds_before, fds_after);
  if (g_starved.load() != 0) ++violations;
  if (tlrel::kRssBounded && rss_drift > kRssBound) {
    std::fprintf(stderr, "soak: RSS grew by %.2f MiB\n", tlrel::mib(rss_drift));
    ++violations;
  }
  if (fds_end != fds_base || fds_after != fds_before) {
    std::fprintf(stderr, "soak: fd count changed\n%s", tlrel::list_fds().c_str());
    ++violations;
  }
  std::printf("%s\n", violations == 0 ? "PASS" : "FAIL");
  return violations == 0 ? 0 : 1;
}
