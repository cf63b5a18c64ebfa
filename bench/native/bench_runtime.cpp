// Tokio's own runtime benchmarks (benches/rt_multi_threaded.rs), ported
// workload for workload. Each spawned body is a tideloop coroutine (a
// Task<>), the closest equivalent of Tokio's `async move { }` block. A good
// number is a small one: ns_per_op is wall time per spawn / ping / yield.
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <vector>

#include "bench_common.hpp"
#include "tideloop/runtime.hpp"
#include "tideloop/sync/oneshot.hpp"

namespace {

using tideloop::JoinHandle;
using tideloop::Runtime;
using tideloop::Task;
using tlbench::OpTimer;
using tlbench::Signal;

constexpr int kNumSpawn = 10'000;

// TIDELOOP_BENCH_LINGER_US=N measures Builder::idle_linger(N us) (default 0,
// the runtime's default): see docs/benchmarks.md.
std::chrono::microseconds linger_from_env() {
  const char* v = std::getenv("TIDELOOP_BENCH_LINGER_US");
  return std::chrono::microseconds(v ? std::atol(v) : 0);
}

Runtime make_rt(benchmark::State& s) {
  return Runtime::Builder::multi_thread()
      .worker_threads(static_cast<std::size_t>(s.range(0)))
      .idle_linger(linger_from_env())
      .build();
}

// Tokio's harness for the signalled workloads: from inside block_on, spawn
// the workload's first task (`first()` returns a Task or a callable), then
// block until the last task signals `done`. `reset` runs before each
// iteration.
template <class Reset, class First>
void run_signalled(benchmark::State& state, double ops, Signal& done, Reset reset, First first) {
  auto rt = make_rt(state);
  OpTimer timer(state, ops);
  for (auto _ : state) {
    timer.iteration([&] {
      reset();
      rt.block_on([&]() -> Task<> {
        tideloop::spawn(first()).detach();
        done.acquire();
        co_return;
      });
    });
  }
  timer.finish();
}

Task<> empty_task() {
  co_return;
}

Task<> count_down(std::atomic<int>* rem, Signal* done) {
  if (rem->fetch_sub(1, std::memory_order_relaxed) == 1) done->release();
  co_return;
}

Task<> spawn_all(std::atomic<int>* rem, Signal* done) {
  for (int i = 0; i < kNumSpawn; ++i) tideloop::spawn(count_down(rem, done)).detach();
  co_return;
}

// 10,000 spawns from inside the runtime; the last task signals.
void spawn_many_local(benchmark::State& state) {
  Signal done(0);
  std::atomic<int> rem{0};
  run_signalled(
      state, kNumSpawn, done, [&] { rem.store(kNumSpawn, std::memory_order_relaxed); },
      [&] { return spawn_all(&rem, &done); });
}

Task<> await_all(std::vector<JoinHandle<void>>* handles) {
  for (auto& h : *handles) co_await h;
  handles->clear();
}

// 10,000 spawns from outside the runtime, then await every handle.
void spawn_many_remote_idle(benchmark::State& state) {
  auto rt = make_rt(state);
  std::vector<JoinHandle<void>> handles;
  handles.reserve(kNumSpawn);
  OpTimer timer(state, kNumSpawn);
  for (auto _ : state) {
    timer.iteration([&] {
      for (int i = 0; i < kNumSpawn; ++i) handles.push_back(rt.spawn(empty_task()));
      rt.block_on(await_all(&handles));
    });
  }
  timer.finish();
}

Task<> busy_yield_loop(std::atomic<bool>* flag) {
  while (flag->load(std::memory_order_relaxed)) {
    co_await tideloop::yield_now();
    tlbench::stall();
  }
}

// The same while 2 x workers background tasks loop yield + 10 µs stall.
void spawn_many_remote_busy1(benchmark::State& state) {
  auto rt = make_rt(state);
  std::atomic<bool> flag{true};
  for (int i = 0; i < 2 * state.range(0); ++i) rt.spawn(busy_yield_loop(&flag)).detach();
  std::vector<JoinHandle<void>> handles;
  handles.reserve(kNumSpawn);
  OpTimer timer(state, kNumSpawn);
  for (auto _ : state) {
    timer.iteration([&] {
      for (int i = 0; i < kNumSpawn; ++i) handles.push_back(rt.spawn(empty_task()));
      rt.block_on(await_all(&handles));
    });
  }
  timer.finish();
  flag.store(false);
}

Task<> respawn_chain(std::atomic<bool>* flag) {
  if (flag->load(std::memory_order_relaxed)) {
    tlbench::stall();
    tideloop::spawn(respawn_chain(flag)).detach();
  }
  co_return;
}

// 1,000 remote spawns while workers-many chains respawn after a stall. Tokio
// 1.24 never finishes this (its LIFO slot starves the injector).
void spawn_many_remote_busy2(benchmark::State& state) {
  constexpr int kSpawns = 1'000;
  auto rt = make_rt(state);
  std::atomic<bool> flag{true};
  for (int i = 0; i < 2 * state.range(0); ++i) rt.spawn(respawn_chain(&flag)).detach();
  std::vector<JoinHandle<void>> handles;
  handles.reserve(kSpawns);
  OpTimer timer(state, kSpawns);
  for (auto _ : state) {
    timer.iteration([&] {
      for (int i = 0; i < kSpawns; ++i) handles.push_back(rt.spawn(empty_task()));
      rt.block_on(await_all(&handles));
    });
  }
  timer.finish();
  flag.store(false);
}

Task<> pong(tideloop::oneshot::Receiver<void> rx1, tideloop::oneshot::Sender<void> tx2) {
  co_await rx1;
  tx2.send();
}

Task<> ping(std::atomic<int>* rem, Signal* done) {
  auto [tx1, rx1] = tideloop::oneshot::channel<void>();
  auto [tx2, rx2] = tideloop::oneshot::channel<void>();
  tideloop::spawn(pong(std::move(rx1), std::move(tx2))).detach();
  tx1.send();
  co_await rx2;
  if (rem->fetch_sub(1, std::memory_order_relaxed) == 1) done->release();
}

Task<> spawn_pings(std::atomic<int>* rem, Signal* done, int n) {
  for (int i = 0; i < n; ++i) tideloop::spawn(ping(rem, done)).detach();
  co_return;
}

// 1,000 tasks, each a oneshot ping-pong with a peer task it spawns.
void ping_pong(benchmark::State& state) {
  constexpr int kPings = 1'000;
  auto rt = make_rt(state);
  Signal done(0);
  std::atomic<int> rem{0};
  OpTimer timer(state, kPings);
  for (auto _ : state) {
    timer.iteration([&] {
      rem.store(kPings, std::memory_order_relaxed);
      rt.block_on([&]() -> Task<> {
        tideloop::spawn(spawn_pings(&rem, &done, kPings)).detach();
        done.acquire();
        co_return;
      });
    });
  }
  timer.finish();
}

Task<> yield_many_task(Signal* done) {
  for (int i = 0; i < 1'000; ++i) co_await tideloop::yield_now();
  done->release();
}

// 200 tasks x 1,000 yields.
void yield_many(benchmark::State& state) {
  constexpr int kTasks = 200, kYields = 1'000;
  auto rt = make_rt(state);
  Signal done(0);
  OpTimer timer(state, double(kTasks) * kYields);
  for (auto _ : state) {
    timer.iteration([&] {
      for (int i = 0; i < kTasks; ++i) rt.spawn(yield_many_task(&done)).detach();
      for (int i = 0; i < kTasks; ++i) done.acquire();
    });
  }
  timer.finish();
}

Task<> chain_link(Signal* done, int n) {
  if (n == 0) {
    done->release();
  } else {
    tideloop::spawn(chain_link(done, n - 1)).detach();
  }
  co_return;
}

// A chain of 1,000 spawns, each task spawning the next.
void chained_spawn(benchmark::State& state) {
  constexpr int kIter = 1'000;
  Signal done(0);
  run_signalled(
      state, kIter, done, [] {}, [&] { return chain_link(&done, kIter); });
}

// The same two workloads with plain callables as tasks, tideloop::spawn(f),
// in the same harness: the like-for-like counterpart of oneTBB's
// task_group::run(f), which runs lambdas (bench/native/tbb_runtime.cpp). A callable task has no
// coroutine frame: its block is the task cell with the callable inside (128 B here, against 192 B
// for a cell plus a small coroutine frame).
void spawn_many_local_fn(benchmark::State& state) {
  Signal done(0);
  std::atomic<int> rem{0};
  run_signalled(
      state, kNumSpawn, done, [&] { rem.store(kNumSpawn, std::memory_order_relaxed); },
      [&] {
        return [&] {
          for (int i = 0; i < kNumSpawn; ++i) {
            tideloop::spawn([&] {
              if (rem.fetch_sub(1, std::memory_order_relaxed) == 1) done.release();
            }).detach();
          }
        };
      });
}

void chain_link_fn(Signal* done, int n) {
  if (n == 0) {
    done->release();
    return;
  }
  tideloop::spawn([done, n] { chain_link_fn(done, n - 1); }).detach();
}

void chained_spawn_fn(benchmark::State& state) {
  constexpr int kIter = 1'000;
  Signal done(0);
  run_signalled(
      state, kIter, done, [] {}, [&] { return [&] { chain_link_fn(&done, kIter); }; });
}

}  // namespace

TL_BENCH_WORKERS(spawn_many_local);
TL_BENCH_WORKERS(spawn_many_local_fn);
TL_BENCH_WORKERS(chained_spawn_fn);
TL_BENCH_WORKERS(spawn_many_remote_idle);
TL_BENCH_WORKERS(spawn_many_remote_busy1);
TL_BENCH_WORKERS(spawn_many_remote_busy2);
TL_BENCH_WORKERS(ping_pong);
TL_BENCH_WORKERS(yield_many);
TL_BENCH_WORKERS(chained_spawn);
