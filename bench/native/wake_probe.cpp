// wake_probe: splits one iteration of chained_spawn and spawn_many_local into
// its parts, for tideloop and oneTBB side by side: waking the pool for the
// first task ("wake-in"), the work inside the pool (and, for
// spawn_many_local, how much of it is the spawning loop), and waking the
// caller after the last task ("wake-out"). Timestamps are taken inside the
// tasks; each figure is a median over many iterations. A diagnostic for
// docs/benchmarks.md, not a benchmark of its own.
//
//   build/bench/native/wake_probe [workers=1] [iterations=1500]
#include <tbb/global_control.h>
#include <tbb/task_arena.h>
#include <tbb/task_group.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <semaphore>
#include <vector>

#include "tideloop/runtime.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using Signal = std::counting_semaphore<1 << 20>;
constexpr int kChain = 1'000;
constexpr int kSpawns = 10'000;

// Written by the task that reaches each point; read after the iteration.
Clock::time_point t_first, t_spawned, t_last;
std::atomic<int> remaining{0};

double us(Clock::duration d) {
  return std::chrono::duration<double, std::micro>(d).count();
}

struct Parts {
  std::vector<double> in, pool, spawning, out;
  void add(Clock::time_point start, Clock::time_point end, bool has_spawning) {
    in.push_back(us(t_first - start));
    pool.push_back(us(t_last - t_first));
    if (has_spawning) spawning.push_back(us(t_spawned - t_first));
    out.push_back(us(end - t_last));
  }
  static double med(std::vector<double> v) {
    if (v.empty()) return 0;
    std::nth_element(v.begin(), v.begin() + static_cast<long>(v.size() / 2), v.end());
    return v[v.size() / 2];
  }
  void print(const char* peer, const char* workload, int workers, int ops) const {
    std::printf("| %s | %s/%d | %.1f | %.1f (%.1f ns/op) | ", peer, workload, workers, med(in),
                med(pool), med(pool) * 1000 / ops);
    if (spawning.empty()) {
      std::printf("— | ");
    } else {
      std::printf("%.1f | ", med(spawning));
    }
    std::printf("%.1f |\n", med(out));
  }
};

tideloop::Task<> chain_link(Signal* done, int n) {
  if (n == kChain) t_first = Clock::now();
  if (n == 0) {
    t_last = Clock::now();
    done->release();
  } else {
    tideloop::spawn(chain_link(done, n - 1)).detach();
  }
  co_return;
}

tideloop::Task<> count_down(Signal* done) {
  if (remaining.fetch_sub(1, std::memory_order_relaxed) == 1) {
    t_last = Clock::now();
    done->release();
  }
  co_return;
}

tideloop::Task<> spawn_all(Signal* done) {
  t_first = Clock::now();
  for (int i = 0; i < kSpawns; ++i) tideloop::spawn(count_down(done)).detach();
  t_spawned = Clock::now();
  co_return;
}

void tbb_link(tbb::task_group& tg, Signal& done, int n) {
  if (n == kChain) t_first = Clock::now();
  if (n == 0) {
    t_last = Clock::now();
    done.release();
    return;
  }
  tg.run([&tg, &done, n] { tbb_link(tg, done, n - 1); });
}

}  // namespace

int main(int argc, char** argv) {
  const int workers = argc > 1 ? std::atoi(argv[1]) : 1;
  const int iters = argc > 2 ? std::atoi(argv[2]) : 1500;
  const int warmup = iters / 10;
  Signal done(0);
  std::printf(
      "| peer | workload | wake-in µs | in the pool µs | of which spawning µs | wake-out µs |\n");
  std::printf("|---|---|---:|---:|---:|---:|\n");
  {
    auto rt = tideloop::Runtime::Builder::multi_thread()
                  .worker_threads(static_cast<std::size_t>(workers))
                  .build();
    Parts chain, many;
    for (int i = 0; i < iters; ++i) {
      const auto start = Clock::now();
      rt.block_on([&]() -> tideloop::Task<> {
        tideloop::spawn(chain_link(&done, kChain)).detach();
        done.acquire();
        co_return;
      });
      if (i >= warmup) chain.add(start, Clock::now(), false);
    }
    for (int i = 0; i < iters / 5; ++i) {
      remaining.store(kSpawns);
      const auto start = Clock::now();
      rt.block_on([&]() -> tideloop::Task<> {
        tideloop::spawn(spawn_all(&done)).detach();
        done.acquire();
        co_return;
      });
      if (i >= warmup / 5) many.add(start, Clock::now(), true);
    }
    chain.print("tideloop", "chained_spawn", workers, kChain);
    many.print("tideloop", "spawn_many_local", workers, kSpawns);
  }
  {
    tbb::global_control cap(tbb::global_control::max_allowed_parallelism,
                            static_cast<std::size_t>(workers) + 1);
    tbb::task_arena arena(workers, 0);
    tbb::task_group tg;
    Parts chain, many;
    for (int i = 0; i < iters; ++i) {
      const auto start = Clock::now();
      arena.enqueue([&] { tbb_link(tg, done, kChain); });
      done.acquire();
      if (i >= warmup) chain.add(start, Clock::now(), false);
    }
    for (int i = 0; i < iters / 5; ++i) {
      remaining.store(kSpawns);
      const auto start = Clock::now();
      arena.enqueue([&] {
        t_first = Clock::now();
        for (int k = 0; k < kSpawns; ++k) {
          tg.run([&] {
            if (remaining.fetch_sub(1, std::memory_order_relaxed) == 1) {
              t_last = Clock::now();
              done.release();
            }
          });
        }
        t_spawned = Clock::now();
      });
      done.acquire();
      if (i >= warmup / 5) many.add(start, Clock::now(), true);
    }
    arena.execute([&] { tg.wait(); });
    chain.print("oneTBB", "chained_spawn", workers, kChain);
    many.print("oneTBB", "spawn_many_local", workers, kSpawns);
  }
}
