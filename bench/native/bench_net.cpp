// Network benchmark, the same workload as the Tokio peer (bench/peers/tokio):
//
//  tcp_echo/W  an echo server and 64 client tasks in one runtime over
//              loopback TCP (TCP_NODELAY on both ends); each client does
//              10,000 round trips (x TIDELOOP_BENCH_SCALE) of 1 KiB:
//              write_all, read_exact. Connecting is inside the clock.
//              ns_per_op = elapsed / total round trips. Good: below Tokio's
//              (~3.4 us per round trip with 2 workers on the reference VM);
//              most round trips should complete on the first syscall.
#include <cstdlib>
#include <vector>

#include "bench_common.hpp"
#include "tideloop/net.hpp"
#include "tideloop/runtime.hpp"

namespace {

using tideloop::JoinHandle;
using tideloop::Runtime;
using tideloop::Task;
using tideloop::net::TcpEndpoint;
using tideloop::net::TcpListener;
using tideloop::net::TcpStream;

constexpr int kClients = 64;
constexpr int kRoundTrips = 10'000;
constexpr std::size_t kMsg = 1024;

double bench_scale() {
  const char* s = std::getenv("TIDELOOP_BENCH_SCALE");
  const double v = s ? std::atof(s) : 1.0;
  return v > 0 ? v : 1.0;
}

Task<> echo(TcpStream s) {
  std::vector<char> buf(16 * 1024);
  for (;;) {
    auto n = co_await s.read(buf.data(), buf.size());
    if (!n || *n == 0) co_return;
    if (!(co_await s.write_all(buf.data(), *n))) co_return;
  }
}

Task<> serve(TcpListener l) {
  for (;;) {
    auto r = co_await l.accept();
    if (!r) continue;
    (void)r->first.set_nodelay(true);
    tideloop::spawn(echo(std::move(r->first))).detach();
  }
}

Task<> client(TcpEndpoint addr, int rounds, int id) {
  auto s = (co_await TcpStream::connect(addr)).value();
  s.set_nodelay(true).value();
  std::vector<char> out(kMsg, static_cast<char>(id)), back(kMsg);
  for (int i = 0; i < rounds; ++i) {
    (co_await s.write_all(out.data(), out.size())).value();
    (co_await s.read_exact(back.data(), back.size())).value();
  }
  if (back != out) throw std::runtime_error("echo corrupted the payload");
}

void tcp_echo(benchmark::State& state) {
  auto rt = Runtime::Builder::multi_thread()
                .worker_threads(static_cast<std::size_t>(state.range(0)))
                .build();
  const TcpEndpoint addr = rt.block_on([&]() -> Task<TcpEndpoint> {
    auto l = TcpListener::bind("127.0.0.1", 0).value();
    auto a = l.local_addr().value();
    tideloop::spawn(serve(std::move(l))).detach();
    co_return a;
  });
  const int rounds = std::max(1, static_cast<int>(kRoundTrips * bench_scale()));
  tlbench::OpTimer timer(state, static_cast<double>(kClients) * rounds);
  const auto m0 = rt.metrics();
  for (auto _ : state) {
    timer.iteration([&] {
      rt.block_on([&]() -> Task<> {
        std::vector<JoinHandle<void>> cs;
        for (int c = 0; c < kClients; ++c) cs.push_back(tideloop::spawn(client(addr, rounds, c)));
        for (auto& h : cs) co_await h;
      });
    });
  }
  timer.finish();
  // Scheduler behaviour per round trip: how often tasks moved between
  // workers and how often a worker went to sleep.
  const auto m1 = rt.metrics();
  const double ops = static_cast<double>(state.iterations()) * kClients * rounds;
  state.counters["steals_per_op"] = static_cast<double>(m1.stolen_tasks - m0.stolen_tasks) / ops;
  state.counters["parks_per_op"] = static_cast<double>(m1.parks - m0.parks) / ops;
  state.counters["polls_per_op"] = static_cast<double>(m1.polls - m0.polls) / ops;
}

}  // namespace

TL_BENCH_WORKERS(tcp_echo);
