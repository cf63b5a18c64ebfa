// Shared helpers for the native benchmarks. Every case is named
// <workload>/<workers> and reports the user counter ns_per_op (wall-clock
// nanoseconds per operation: per spawn, per ping, per yield...), so
// bench/compare_native.py can put tideloop, Tokio and oneTBB side by side.
#pragma once

#include <benchmark/benchmark.h>

#include <chrono>
#include <semaphore>
#include <thread>

namespace tlbench {

// The equivalent of Tokio's std::sync::mpsc::sync_channel used as a
// completion signal: a futex-backed semaphore.
using Signal = std::counting_semaphore<1 << 20>;

// Busy-waits for `d`, yielding the thread in the loop: exactly what Tokio's
// benches do (`while now.elapsed() < STALL_DUR { thread::yield_now() }`).
inline void stall(std::chrono::nanoseconds d = std::chrono::microseconds(10)) {
  const auto end = std::chrono::steady_clock::now() + d;
  while (std::chrono::steady_clock::now() < end) std::this_thread::yield();
}

// Times one iteration; call finish() after the loop.
class OpTimer {
 public:
  explicit OpTimer(benchmark::State& s, double ops_per_iter) : s_(s), ops_(ops_per_iter) {}
  template <class F>
  void iteration(F&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    const auto t1 = std::chrono::steady_clock::now();
    const double secs = std::chrono::duration<double>(t1 - t0).count();
    total_ += secs;
    s_.SetIterationTime(secs);
  }
  void finish() {
    const double iters = static_cast<double>(s_.iterations());
    s_.counters["ns_per_op"] = iters > 0 ? total_ * 1e9 / (iters * ops_) : 0.0;
  }

 private:
  benchmark::State& s_;
  double ops_;
  double total_ = 0;
};

}  // namespace tlbench

#define TL_BENCH_WORKERS(fn) \
  BENCHMARK(fn)->Arg(1)->Arg(2)->Arg(4)->UseManualTime()->Unit(benchmark::kMicrosecond)
