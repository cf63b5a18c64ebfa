// Timer benchmarks, the same workloads as the Tokio peer (bench/peers/tokio):
//
//  timers/W        100,000 tasks, each sleeping i % 10,001 us (deadlines
//                  spread over 0-10 ms), all spawned inside the runtime; the
//                  last one to wake signals. ns_per_op = (elapsed - 10 ms) /
//                  100,000: the cost per timer beyond the window itself
//                  (spawn, register, fire, wake, complete). Good: a few
//                  hundred ns; Tokio 1.24 is ~1 us here.
//  timer_cancel/W  inside one task, create a 1 s sleep, poll it once (it
//                  registers in the wheel: it must report pending), drop it
//                  (it deregisters). 1,000,000 times (x TIDELOOP_BENCH_SCALE).
//                  ns_per_op per create+drop pair. Good: well under 100 ns
//                  (one clock read, two uncontended shard locks).
#include <atomic>
#include <cstdlib>
#include <vector>

#include "bench_common.hpp"
#include "tideloop/runtime.hpp"
#include "tideloop/time.hpp"

namespace {

using namespace std::chrono_literals;
using tideloop::Runtime;
using tideloop::Task;
using tlbench::Signal;

constexpr int kNumTimers = 100'000;
constexpr int kWindowUs = 10'000;
constexpr int kNumCancel = 1'000'000;

double bench_scale() {
  const char* s = std::getenv("TIDELOOP_BENCH_SCALE");
  const double v = s ? std::atof(s) : 1.0;
  return v > 0 ? v : 1.0;
}

Runtime make_rt(benchmark::State& s) {
  return Runtime::Builder::multi_thread()
      .worker_threads(static_cast<std::size_t>(s.range(0)))
      .build();
}

Task<> one_timer(int i, std::atomic<int>* rem, Signal* done) {
  co_await tideloop::sleep(std::chrono::microseconds(i % (kWindowUs + 1)));
  if (rem->fetch_sub(1, std::memory_order_relaxed) == 1) done->release();
}

Task<> spawn_timers(std::atomic<int>* rem, Signal* done) {
  for (int i = 0; i < kNumTimers; ++i) tideloop::spawn(one_timer(i, rem, done)).detach();
  co_return;
}

void timers(benchmark::State& state) {
  auto rt = make_rt(state);
  Signal done(0);
  std::atomic<int> rem{0};
  double overhead_s = 0;
  for (auto _ : state) {
    rem.store(kNumTimers, std::memory_order_relaxed);
    const auto t0 = std::chrono::steady_clock::now();
    rt.block_on([&]() -> Task<> {
      tideloop::spawn(spawn_timers(&rem, &done)).detach();
      done.acquire();
      co_return;
    });
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    state.SetIterationTime(secs);
    overhead_s += secs - kWindowUs * 1e-6;
  }
  const double iters = static_cast<double>(state.iterations());
  state.counters["ns_per_op"] =
      iters > 0 ? std::max(0.01, overhead_s * 1e9 / (iters * kNumTimers)) : 0;
}

Task<> cancel_loop(int n, int* pending, Signal* done) {
  tideloop::internal::TaskHeader* self = tideloop::internal::tl_current_task;
  for (int i = 0; i < n; ++i) {
    auto s = tideloop::sleep(1s);
    if (!s.poll_ready(self)) ++*pending;  // registered in the wheel
  }                                       // ~Sleep: deregistered
  done->release();
  co_return;
}

void timer_cancel(benchmark::State& state) {
  auto rt = make_rt(state);
  const int n = std::max(1, static_cast<int>(kNumCancel * bench_scale()));
  Signal done(0);
  tlbench::OpTimer timer(state, n);
  for (auto _ : state) {
    int pending = 0;
    timer.iteration([&] {
      rt.block_on([&]() -> Task<> {
        tideloop::spawn(cancel_loop(n, &pending, &done)).detach();
        done.acquire();
        co_return;
      });
    });
    if (pending != n) state.SkipWithError("a one-second sleep fired or was never registered");
  }
  timer.finish();
}

}  // namespace

TL_BENCH_WORKERS(timers);
TL_BENCH_WORKERS(timer_cancel);
