// fork(): a process whose multi-thread runtime is busy (workers running
// tasks and timers, TCP echo traffic, blocking-pool threads working, tasks
// waking each other across threads) forks, many times. Each child builds a
// NEW runtime (multi-thread, then current-thread) and runs tasks, a timer, a
// blocking job and a TCP round trip on it, then exits 0. A child that does
// not exit within 20 s is killed and the test fails: it hung on a lock, or
// waited for a thread that only existed in the parent. The parent's runtime
// keeps running throughout and its work is checked afterwards.
//
// The child leaves with _exit(): the parent's Runtime object is in its copy
// of memory, and destroying it would join worker threads the child does not
// have.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
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
using tideloop::JoinHandle;
using tideloop::Runtime;
using tideloop::Task;
using tideloop::net::TcpListener;
using tideloop::net::TcpStream;

// --- the child's work: every part of the runtime once ---

Task<int> leaf(int v) {
  co_await tideloop::yield_now();
  co_return v;
}

Task<int> child_work() {
  int sum = 0;
  std::vector<JoinHandle<int>> hs;
  for (int i = 0; i < 16; ++i) hs.push_back(tideloop::spawn(leaf(i)));
  for (auto& h : hs) sum += co_await h;  // 120
  co_await tideloop::sleep(2ms);
  sum += co_await tideloop::spawn_blocking([] { return 1000; });
  auto l = TcpListener::bind("127.0.0.1", 0);
  if (!l) co_return -1;
  auto c = co_await TcpStream::connect(l->local_addr().value());
  auto s = co_await l->accept();
  if (!c || !s) co_return -2;
  char out[4] = {'f', 'o', 'r', 'k'}, in[4] = {};
  if (!(co_await c->write_all(out, 4)) || !(co_await s->first.read_exact(in, 4))) co_return -3;
  if (!(co_await s->first.write_all(in, 4)) || !(co_await c->read_exact(out, 4))) co_return -4;
  co_return sum + (out[0] == 'f' ? 10000 : 0);
}

[[noreturn]] void run_child() {
  // Backstop should the parent die: never linger.
  alarm(60);
  try {
    for (const bool multi : {true, false}) {
      auto rt = multi ? Runtime::Builder::multi_thread().worker_threads(2).build()
                      : Runtime::Builder::current_thread().build();
      const int got = rt.block_on(child_work());
      if (got != 11120) {
        std::fprintf(stderr, "fork child: %s runtime returned %d\n",
                     multi ? "multi-thread" : "current-thread", got);
        _exit(3);
      }
    }
  } catch (const std::exception& e) {
    // Must not escape: the child would go on as a copy of the parent's thread.
    std::fprintf(stderr, "fork child: %s\n", e.what());
    _exit(4);
  }
  _exit(0);
}

// --- the parent's background load ---

struct Load {
  std::atomic<bool> stop{false};
  std::atomic<long> ticks{0}, echoes{0}, jobs{0}, pings{0};
};

Task<> timers(Load* ld) {
  while (!ld->stop.load()) {
    co_await tideloop::sleep(std::chrono::microseconds(200 + ld->ticks.load() % 800));
    ld->ticks.fetch_add(1);
  }
}

Task<> echo_pair(Load* ld) {
  auto l = TcpListener::bind("127.0.0.1", 0).value();
  auto c = (co_await TcpStream::connect(l.local_addr().value())).value();
  auto s = (co_await l.accept()).value().first;
  auto server = tideloop::spawn([](TcpStream s) -> Task<> {
    char buf[4096];
    for (;;) {
      auto n = co_await s.read(buf, sizeof buf);
      if (!n || *n == 0) co_return;
      if (!(co_await s.write_all(buf, *n))) co_return;
    }
  }(std::move(s)));
  std::vector<char> out(3000, 'x'), in(3000);
  while (!ld->stop.load()) {
    if (!(co_await c.write_all(out.data(), out.size())) ||
        !(co_await c.read_exact(in.data(), in.size())))
      co_return;
    ld->echoes.fetch_add(1);
  }
  c.close();
  co_await server;
}

Task<> blocking(Load* ld) {
  while (!ld->stop.load()) {
    // Several jobs at once, so pool threads are starting, working and
    // allocating when a fork happens.
    std::vector<JoinHandle<std::size_t>> hs;
    for (int i = 0; i < 3; ++i) {
      hs.push_back(tideloop::spawn_blocking([] {
        std::vector<std::vector<int>> v(64, std::vector<int>(64, 1));
        std::this_thread::sleep_for(200us);
        return v.size();
      }));
    }
    for (auto& h : hs) (void)co_await h;
    ld->jobs.fetch_add(1);
  }
}

// Two tasks waking each other through channels: wake-ups in flight across
// workers all the time (what a fork must not freeze mid-way).
Task<> ping_pong(Load* ld) {
  auto [atx, arx] = tideloop::mpsc::channel<int>(1);
  auto [btx, brx] = tideloop::mpsc::channel<int>(1);
  auto pong = tideloop::spawn(
      [](tideloop::mpsc::Receiver<int> rx, tideloop::mpsc::Sender<int> tx) -> Task<> {
        while (auto v = co_await rx.recv()) {
          if (!co_await tx.send(*v + 1)) co_return;
        }
      }(std::move(arx), std::move(btx)));
  while (!ld->stop.load()) {
    if (!co_await atx.send(1)) break;
    if (!co_await brx.recv()) break;
    ld->pings.fetch_add(1);
  }
  atx = {};
  co_await pong;
}

TEST(Fork, ChildOfABusyRuntimeRunsANewRuntime) {
#if defined(TLREL_ASAN)
  // The ASan allocator of GCC 12 and of clang 14 (compiler-rt 14) does not
  // take its locks around fork(): a parent thread inside malloc at the fork
  // leaves a size-class region's lock held, and the child's new threads hang
  // in AsanThread::Init -> pthread_getattr_np -> free (stacks taken with gdb;
  // about 1 fork in 100). The release build runs this.
  GTEST_SKIP() << "ASan's allocator deadlocks children forked from busy threads";
#endif
  const long forks = tlrel::scaled(100);
  auto rt = Runtime::Builder::multi_thread().worker_threads(2).build();
  Load ld;
  std::vector<JoinHandle<void>> load;
  load.push_back(rt.spawn(timers(&ld)));
  load.push_back(rt.spawn(echo_pair(&ld)));
  load.push_back(rt.spawn(blocking(&ld)));
  load.push_back(rt.spawn(ping_pong(&ld)));
  ASSERT_TRUE(tlrel::wait_until([&] { return ld.echoes.load() > 0 && ld.jobs.load() > 0; }));

  int hung = 0, failed = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < forks; ++i) {
    // Fork at varying points of the load's cycle.
    std::this_thread::sleep_for(std::chrono::microseconds(100 + (i * 7919) % 3000));
    const pid_t pid = fork();
    ASSERT_GE(pid, 0) << "fork: " << std::strerror(errno);
    if (pid == 0) run_child();
    const int status = tlrel::wait_child(pid, 20s);
    if (status == -1) ++hung;
    if (status != 0) {
      ++failed;
      ADD_FAILURE() << "fork " << i << ": child " << tlrel::describe_status(status);
      if (failed >= 3) break;
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // The parent's runtime kept running: each kind of work still progresses.
  const long ticks = ld.ticks.load(), echoes = ld.echoes.load(), jobs = ld.jobs.load(),
             pings = ld.pings.load();
  EXPECT_TRUE(tlrel::wait_until([&] {
    return ld.ticks.load() > ticks && ld.echoes.load() > echoes && ld.jobs.load() > jobs &&
           ld.pings.load() > pings;
  })) << "the parent's runtime stopped after the forks";
  ld.stop = true;
  for (auto& h : load) h.join();
  std::printf(
      "%ld forks in %.2f s (%d failed, %d hung); parent meanwhile: %ld timer ticks, "
      "%ld echoes, %ld blocking rounds, %ld ping-pongs\n",
      forks, secs, failed, hung, ld.ticks.load(), ld.echoes.load(), ld.jobs.load(),
      ld.pings.load());
}

// A fork from inside the runtime: a blocking-pool thread (not a worker) may
// call fork(). The child's forking thread still counts as inside a task (its
// thread-locals are the job's), and block_on() refuses to run inside a task,
// so the child starts its runtime from a new thread, as a program must.
TEST(Fork, ForkFromABlockingJob) {
  auto rt = Runtime::Builder::multi_thread().worker_threads(2).build();
  const int status = rt.block_on([]() -> Task<int> {
    co_return co_await tideloop::spawn_blocking([] {
      const pid_t pid = fork();
      if (pid == 0) {
        std::thread(run_child).join();
        _exit(5);  // not reached: run_child exits
      }
      return tlrel::wait_child(pid, 20s);
    });
  });
  EXPECT_EQ(status, 0) << tlrel::describe_status(status);
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
