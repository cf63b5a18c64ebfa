// oneTBB peers for the runtime workloads that fit a fork-join pool:
// spawn_many_local, spawn_many_remote_idle and chained_spawn. Same names and
// ns_per_op counter as bench_runtime.cpp. The arena has exactly `workers`
// threads and no slot reserved for the benchmark thread, which, like
// Tokio's block_on thread, waits outside the pool for a completion signal.
#include <tbb/global_control.h>
#include <tbb/task_arena.h>
#include <tbb/task_group.h>

#include <atomic>

#include "bench_common.hpp"

namespace {

using tlbench::OpTimer;
using tlbench::Signal;

constexpr int kNumSpawn = 10'000;

// oneTBB caps its worker threads at (CPUs - 1) unless told otherwise, so an
// arena of 2 or 4 slots on a 2-CPU machine would silently run on 1 worker.
// Raise the cap to the arena size for the duration of one case, as a user
// asking for N threads would (the arena reserves no slot for this thread).
struct Workers {
  explicit Workers(const benchmark::State& s)
      : n(static_cast<int>(s.range(0))),
        cap(tbb::global_control::max_allowed_parallelism, static_cast<std::size_t>(n) + 1) {}
  int n;
  tbb::global_control cap;
};

// 10,000 task_group::run calls from inside one task; the last task signals.
void spawn_many_local(benchmark::State& state) {
  Workers w(state);
  tbb::task_arena arena(w.n, 0);
  tbb::task_group tg;
  Signal done(0);
  std::atomic<int> rem{0};
  OpTimer timer(state, kNumSpawn);
  for (auto _ : state) {
    timer.iteration([&] {
      rem.store(kNumSpawn, std::memory_order_relaxed);
      arena.enqueue([&] {
        for (int i = 0; i < kNumSpawn; ++i) {
          tg.run([&] {
            if (rem.fetch_sub(1, std::memory_order_relaxed) == 1) done.release();
          });
        }
      });
      done.acquire();
    });
  }
  arena.execute([&] { tg.wait(); });
  timer.finish();
}

// 10,000 enqueues from outside the pool, then wait for all of them.
void spawn_many_remote_idle(benchmark::State& state) {
  Workers w(state);
  tbb::task_arena arena(w.n, 0);
  Signal done(0);
  std::atomic<int> rem{0};
  OpTimer timer(state, kNumSpawn);
  for (auto _ : state) {
    timer.iteration([&] {
      rem.store(kNumSpawn, std::memory_order_relaxed);
      for (int i = 0; i < kNumSpawn; ++i) {
        arena.enqueue([&] {
          if (rem.fetch_sub(1, std::memory_order_relaxed) == 1) done.release();
        });
      }
      done.acquire();
    });
  }
  timer.finish();
}

void chain_link(tbb::task_group& tg, Signal& done, int n) {
  if (n == 0) {
    done.release();
    return;
  }
  tg.run([&tg, &done, n] { chain_link(tg, done, n - 1); });
}

// A chain of 1,000 spawns, each task spawning the next.
void chained_spawn(benchmark::State& state) {
  constexpr int kIter = 1'000;
  Workers w(state);
  tbb::task_arena arena(w.n, 0);
  tbb::task_group tg;
  Signal done(0);
  OpTimer timer(state, kIter);
  for (auto _ : state) {
    timer.iteration([&] {
      arena.enqueue([&] { chain_link(tg, done, kIter); });
      done.acquire();
    });
  }
  arena.execute([&] { tg.wait(); });
  timer.finish();
}

}  // namespace

TL_BENCH_WORKERS(spawn_many_local);
TL_BENCH_WORKERS(spawn_many_remote_idle);
TL_BENCH_WORKERS(chained_spawn);
