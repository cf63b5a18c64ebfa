// Leaks: runtimes created and destroyed 1,000 times (multi-thread with 2
// workers, and current-thread), each running tasks, a timer, a blocking job
// and a TCP round trip, leave no thread, fd or memory behind; 100,000 task
// spawn/abort cycles leave RSS flat and every frame destroyed once.
//
// Figures are taken after a warm-up (allocator caches, the first blocking
// thread's arena, lazily created statics), then after the run:
//  - threads (/proc/self/task, once exiting threads are gone) and fds
//    (/proc/self/fd): exactly the baseline;
//  - RSS (after returning the allocators' free memory): at most 4 MiB above
//    the baseline. A runtime allocates ~100 KiB and more (workers, queues,
//    timer shards, epoll sets) and a spawned task 192 B, so a leak of one
//    runtime in 40 or of one task block in 200 cycles exceeds the bound,
//    while the measured drift is well under 1 MiB.
// Counts scale with TIDELOOP_RELIABILITY_SCALE (default 1.0).
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <vector>

#include "reliability_util.hpp"
#include "tideloop/net.hpp"
#include "tideloop/runtime.hpp"
#include "tideloop/spawn_blocking.hpp"
#include "tideloop/time.hpp"

namespace {

using namespace std::chrono_literals;
using tideloop::JoinHandle;
using tideloop::Runtime;
using tideloop::Task;
using tideloop::TaskCancelled;
using tideloop::net::TcpListener;
using tideloop::net::TcpStream;

constexpr std::int64_t kRssBound = std::int64_t{4} << 20;

Task<int> child(int v) {
  co_await tideloop::yield_now();
  co_return v;
}

// What one short-lived runtime does before it is dropped.
Task<int> life(bool with_io) {
  auto a = tideloop::spawn(child(1));
  auto b = tideloop::spawn(child(2));
  int sum = co_await a + co_await b;
  co_await tideloop::sleep(0ms);
  sum += co_await tideloop::spawn_blocking([] { return 3; });
  if (with_io) {
    auto l = TcpListener::bind("127.0.0.1", 0).value();
    auto c = (co_await TcpStream::connect(l.local_addr().value())).value();
    auto s = (co_await l.accept()).value();
    char x = 4;
    (void)co_await c.write_all(&x, 1);
    (void)co_await s.first.read_exact(&x, 1);
    sum += x;
  }
  // Left pending: dropped with the runtime.
  tideloop::spawn([]() -> Task<> { co_await tideloop::sleep(1h); }).detach();
  co_return sum;
}

struct Figures {
  int threads, fds;
  std::int64_t rss;
};
Figures measure() {
  return {tlrel::settled_thread_count(), tlrel::count_fds(), tlrel::settled_rss_bytes()};
}

void create_destroy(bool multi, long n) {
  auto once = [multi](long i) {
    auto rt = multi ? Runtime::Builder::multi_thread().worker_threads(2).build()
                    : Runtime::Builder::current_thread().build();
    // I/O every 4th runtime: each TCP round trip leaves a TIME_WAIT socket in
    // the kernel, and a thousand of them only cost ports.
    const int sum = rt.block_on(life(i % 4 == 0));
    EXPECT_EQ(sum, i % 4 == 0 ? 10 : 6);
  };
  for (long i = 0; i < 20; ++i) once(i);  // warm-up
  const Figures base = measure();
  const auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < n; ++i) {
    once(i);
    if (::testing::Test::HasFailure()) return;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const Figures end = measure();
  std::printf("%s x%ld in %.2f s: threads %d -> %d, fds %d -> %d, rss %.2f -> %.2f MiB (%+.2f)\n",
              multi ? "multi_thread(2)" : "current_thread", n, secs, base.threads, end.threads,
              base.fds, end.fds, tlrel::mib(base.rss), tlrel::mib(end.rss),
              tlrel::mib(end.rss - base.rss));
  EXPECT_EQ(end.threads, base.threads);
  EXPECT_EQ(end.fds, base.fds) << tlrel::list_fds();
  if (tlrel::kRssBounded) EXPECT_LE(end.rss - base.rss, kRssBound);
}

TEST(Leak, MultiThreadRuntimeCreateDestroy) {
  create_destroy(true, tlrel::scaled(1000));
}

TEST(Leak, CurrentThreadRuntimeCreateDestroy) {
  create_destroy(false, tlrel::scaled(1000));
}

std::atomic<long> g_frames_destroyed{0};
struct FrameGuard {
  bool live = true;
  FrameGuard() = default;
  FrameGuard(FrameGuard&& o) noexcept : live(std::exchange(o.live, false)) {}
  ~FrameGuard() {
    if (live) g_frames_destroyed.fetch_add(1, std::memory_order_relaxed);
  }
};

Task<int> parked(FrameGuard g) {
  (void)g;
  co_await tideloop::sleep(1h);
  co_return 1;
}

// Spawns `n` tasks parked on timers in batches and aborts them: some before
// their first poll, some while they sleep. Returns the cancellations seen.
Task<long> spawn_abort(long n, long batch) {
  long cancelled = 0;
  std::vector<JoinHandle<int>> hs;
  hs.reserve(static_cast<std::size_t>(batch));
  for (long done = 0; done < n; done += batch) {
    for (long i = 0; i < batch; ++i) hs.push_back(tideloop::spawn(parked(FrameGuard())));
    // Half of each batch gets to register its timer first.
    co_await tideloop::yield_now();
    for (auto& h : hs) h.abort();
    for (auto& h : hs) {
      try {
        (void)co_await h;
      } catch (const TaskCancelled&) {
        ++cancelled;
      }
    }
    hs.clear();
  }
  co_return cancelled;
}

void spawn_abort_cycles(bool multi) {
  const long n = tlrel::scaled(100000);
  constexpr long kBatch = 100;
  auto rt = multi ? Runtime::Builder::multi_thread().worker_threads(2).build()
                  : Runtime::Builder::current_thread().build();
  g_frames_destroyed = 0;
  EXPECT_EQ(rt.block_on(spawn_abort(10 * kBatch, kBatch)), 10 * kBatch);  // warm-up
  const Figures base = measure();
  g_frames_destroyed = 0;
  const auto t0 = std::chrono::steady_clock::now();
  const long cancelled = rt.block_on(spawn_abort(n, kBatch));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const Figures end = measure();
  const long rounded = (n + kBatch - 1) / kBatch * kBatch;
  std::printf(
      "%s: %ld spawn/abort cycles in %.2f s, frames destroyed %ld, live tasks %llu, "
      "rss %.2f -> %.2f MiB (%+.2f)\n",
      multi ? "multi_thread(2)" : "current_thread", rounded, secs, g_frames_destroyed.load(),
      static_cast<unsigned long long>(rt.metrics().live_tasks), tlrel::mib(base.rss),
      tlrel::mib(end.rss), tlrel::mib(end.rss - base.rss));
  EXPECT_EQ(cancelled, rounded);
  EXPECT_EQ(g_frames_destroyed.load(), rounded);
  EXPECT_EQ(rt.metrics().live_tasks, 0u);
  EXPECT_EQ(end.fds, base.fds);
  if (tlrel::kRssBounded) EXPECT_LE(end.rss - base.rss, kRssBound);
}

TEST(Leak, SpawnAbortCyclesMultiThread) {
  spawn_abort_cycles(true);
}

TEST(Leak, SpawnAbortCyclesCurrentThread) {
  spawn_abort_cycles(false);
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
