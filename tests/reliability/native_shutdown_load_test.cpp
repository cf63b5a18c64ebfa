// Shutdown under load: a runtime is shut down (shutdown(), or its
// destructor) while tasks are blocked on socket reads, writes and accepts,
// on timers, timeouts and intervals, on channels and Notify, while tasks spin
// with yield_now(), blocking jobs run and more wait in the pool's queue, a
// foreign thread keeps sending, and connections are open. It must end in
// bounded time (a watchdog aborts the binary after 60 s), never crash, and
// leave every piece of pending work in the state the runtime documents:
//  - every task frame still alive is destroyed exactly once (each frame holds
//    a guard that counts its destruction), and its JoinHandle reports
//    TaskCancelled; a task that finished before keeps its value;
//  - running spawn_blocking jobs are waited for (their value is there after
//    shutdown returns) and finish before any task frame is destroyed (so a
//    job may use a frame it was handed by reference); queued jobs never run
//    and report TaskCancelled;
//  - sockets owned by task frames are closed: the peer of a connection reads
//    end of stream (or a reset), and the process's fd count returns exactly to
//    what it was before the runtime existed;
//  - channels whose receiver lived in a task are closed: senders outside the
//    runtime (a test-held Sender, a foreign thread's) see send() fail;
//  - nothing is left alive: metrics().live_tasks == 0.
// Each flavour runs `kRounds` rounds (scaled by TIDELOOP_RELIABILITY_SCALE)
// with a different delay between setting up the load and shutting down.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <optional>
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
using tideloop::TaskCancelled;
using tideloop::net::TcpListener;
using tideloop::net::TcpStream;

constexpr int kRunningJobs = 2;  // == max_blocking_threads
constexpr int kQueuedJobs = 3;

struct State {
  std::atomic<int> frames_created{0}, frames_destroyed{0};
  // Frames destroyed while a running blocking job had not finished yet.
  std::atomic<int> destroyed_before_jobs{0};
  std::atomic<int> jobs_started{0}, jobs_done{0}, queued_ran{0};
  std::atomic<int> parked{0};  // tasks that reached their blocking point
  std::atomic<long> spins{0};
  std::atomic<bool> shutting_down{false};
};

// Lives in a task's frame (a coroutine parameter): counts its destruction.
struct FrameGuard {
  State* st;
  explicit FrameGuard(State* s) : st(s) { s->frames_created.fetch_add(1); }
  FrameGuard(FrameGuard&& o) noexcept : st(std::exchange(o.st, nullptr)) {}
  ~FrameGuard() {
    if (!st) return;
    if (st->jobs_started.load() > st->jobs_done.load()) st->destroyed_before_jobs.fetch_add(1);
    st->frames_destroyed.fetch_add(1);
  }
};

Task<int> sleeper(FrameGuard g) {
  g.st->parked.fetch_add(1);
  co_await tideloop::sleep(1h);
  co_return 1;
}

Task<int> timeouter(FrameGuard g) {
  g.st->parked.fetch_add(1);
  try {
    co_await tideloop::timeout(1h, [](int) -> Task<> { co_await tideloop::sleep(2h); }(0));
  } catch (const tideloop::TimedOut&) {
  }
  co_return 1;
}

Task<int> ticker(FrameGuard g) {
  auto iv = tideloop::interval(1ms);
  g.st->parked.fetch_add(1);
  for (;;) (void)co_await iv.tick();
}

Task<int> spinner(FrameGuard g) {
  g.st->parked.fetch_add(1);
  for (;;) {
    co_await tideloop::yield_now();
    g.st->spins.fetch_add(1, std::memory_order_relaxed);
  }
}

Task<int> receiver(FrameGuard g, tideloop::mpsc::Receiver<int> rx) {
  g.st->parked.fetch_add(1);
  long n = 0;
  while (auto v = co_await rx.recv()) n += *v;
  co_return static_cast<int>(n);
}

Task<int> notified(FrameGuard g, tideloop::Notify* n) {
  g.st->parked.fetch_add(1);
  co_await n->notified();
  co_return 1;
}

Task<int> reader(FrameGuard g, TcpStream s) {
  g.st->parked.fetch_add(1);
  char buf[256];
  for (;;) {
    auto n = co_await s.read(buf, sizeof buf);
    if (!n || *n == 0) co_return -1;  // not expected: nobody closes the peer
  }
}

Task<int> writer(FrameGuard g, TcpStream s) {
  // Writes until the peer's (unread) buffers are full, then blocks.
  std::vector<char> chunk(64 * 1024, 'w');
  g.st->parked.fetch_add(1);
  for (;;) {
    if (!(co_await s.write(chunk.data(), chunk.size()))) co_return -1;
  }
}

Task<int> holder(FrameGuard g, TcpStream s) {
  g.st->parked.fetch_add(1);
  co_await tideloop::sleep(1h);
  (void)s;
  co_return 1;
}

Task<int> acceptor(FrameGuard g, TcpListener l) {
  g.st->parked.fetch_add(1);
  for (;;) {
    auto r = co_await l.accept();
    if (!r) co_return -1;
  }
}

// Holds the process hostage for at most `limit`: a hang is a failure, not a
// stuck CI job.
class Watchdog {
 public:
  explicit Watchdog(std::chrono::seconds limit, const char* what)
      : t_([this, limit, what] {
          std::unique_lock<std::mutex> lk(mu_);
          if (!cv_.wait_for(lk, limit, [this] { return done_; })) {
            std::fprintf(stderr, "FATAL: %s did not finish within %lld s\n", what,
                         static_cast<long long>(limit.count()));
            std::abort();
          }
        }) {}
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> g(mu_);
      done_ = true;
    }
    cv_.notify_one();
    t_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread t_;
};

int raw_connect(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// 0 (end of stream) or -ECONNRESET once the peer closed; 1 if still open
// after `timeout`.
int peer_state(int fd, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return 1;
  char c;
  const ssize_t n = ::recv(fd, &c, 1, 0);
  if (n == 0) return 0;
  if (n < 0) return -errno;
  return 2;  // data: not expected
}

void round(bool multi, int round_no) {
  State st;
  const int fds_before = tlrel::count_fds();
  tideloop::Notify notify;
  std::vector<JoinHandle<int>> pending;  // tasks that must report TaskCancelled
  std::vector<JoinHandle<int>> running_jobs, queued_jobs;
  std::vector<tideloop::mpsc::Sender<int>> senders;
  JoinHandle<int> finished;
  int raw = -1;
  std::thread producer;
  std::atomic<long> produced{0};
  const auto delay = std::chrono::microseconds((round_no * 3119) % 10000);
  int expected_parked = 0;
  double shutdown_ms = 0;
  int fds_with_load = 0, fds_after_shutdown = 0;
  {
    std::optional<Runtime> rt(
        multi ? Runtime::Builder::multi_thread()
                    .worker_threads(2)
                    .max_blocking_threads(kRunningJobs)
                    .build()
              : Runtime::Builder::current_thread().max_blocking_threads(kRunningJobs).build());
    rt->block_on([&]() -> Task<> {
      finished = tideloop::spawn([]() -> Task<int> { co_return 42; });
      auto fg = [&] { return FrameGuard(&st); };
      for (int i = 0; i < 8; ++i) pending.push_back(tideloop::spawn(sleeper(fg())));
      for (int i = 0; i < 2; ++i) pending.push_back(tideloop::spawn(timeouter(fg())));
      pending.push_back(tideloop::spawn(ticker(fg())));
      for (int i = 0; i < 4; ++i) pending.push_back(tideloop::spawn(spinner(fg())));
      for (int i = 0; i < 4; ++i) {
        auto [tx, rx] = tideloop::mpsc::channel<int>(4);
        senders.push_back(std::move(tx));
        pending.push_back(tideloop::spawn(receiver(fg(), std::move(rx))));
      }
      {
        // A foreign producer: sends until the receiver is gone.
        auto [tx, rx] = tideloop::mpsc::unbounded_channel<int>();
        pending.push_back(tideloop::spawn(receiver(fg(), std::move(rx))));
        producer = std::thread([tx = std::move(tx), &produced]() mutable {
          while (tx.send(1)) {
            produced.fetch_add(1, std::memory_order_relaxed);
            std::this_thread::sleep_for(20us);
          }
        });
      }
      pending.push_back(tideloop::spawn(notified(fg(), &notify)));
      // Connections: a reader with a silent peer, a writer whose peer never
      // reads, and one whose peer is a plain socket of this test.
      auto l = TcpListener::bind("127.0.0.1", 0).value();
      const auto addr = l.local_addr().value();
      for (int k = 0; k < 2; ++k) {
        auto c = (co_await TcpStream::connect(addr)).value();
        auto s = (co_await l.accept()).value().first;
        pending.push_back(
            tideloop::spawn(k == 0 ? reader(fg(), std::move(s)) : writer(fg(), std::move(s))));
        pending.push_back(tideloop::spawn(holder(fg(), std::move(c))));
      }
      raw = raw_connect(addr.port());
      pending.push_back(
          tideloop::spawn(reader(fg(), std::move((co_await l.accept()).value().first))));
      pending.push_back(tideloop::spawn(acceptor(fg(), std::move(l))));
      expected_parked = static_cast<int>(pending.size());
      // Blocking jobs: two run (the pool's limit), three wait in its queue.
      for (int i = 0; i < kRunningJobs; ++i) {
        running_jobs.push_back(tideloop::spawn_blocking([&st] {
          st.jobs_started.fetch_add(1);
          // Still running when shutdown reaches the pool (it does within
          // milliseconds), so the queued jobs never get a thread.
          while (!st.shutting_down.load()) std::this_thread::sleep_for(100us);
          std::this_thread::sleep_for(100ms);
          st.jobs_done.fetch_add(1);
          return 7;
        }));
      }
      for (int i = 0; i < kQueuedJobs; ++i) {
        queued_jobs.push_back(tideloop::spawn_blocking([&st] {
          st.queued_ran.fetch_add(1);
          return 8;
        }));
      }
      // Let everything reach its blocking point (a current-thread runtime
      // runs its tasks only in here).
      while (st.parked.load() < expected_parked || st.jobs_started.load() < kRunningJobs ||
             !finished.is_finished())
        co_await tideloop::sleep(1ms);
      co_await tideloop::sleep(delay);
    });
    fds_with_load = tlrel::count_fds();
    const auto t0 = std::chrono::steady_clock::now();
    {
      Watchdog dog(60s, "runtime shutdown under load");
      st.shutting_down = true;
      if (round_no % 2 == 0) {
        rt->shutdown();
      } else {
        rt.reset();  // the destructor
      }
    }
    shutdown_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    fds_after_shutdown = tlrel::count_fds();
    if (rt) EXPECT_EQ(rt->metrics().live_tasks, 0u);
    // Running jobs were waited for, before any frame was destroyed.
    EXPECT_EQ(st.jobs_done.load(), kRunningJobs);
    EXPECT_EQ(st.destroyed_before_jobs.load(), 0);
  }
  // Every frame destroyed exactly once; no task left to report anything else.
  EXPECT_EQ(st.frames_created.load(), expected_parked);
  EXPECT_EQ(st.frames_destroyed.load(), st.frames_created.load());
  int cancelled = 0;
  for (auto& h : pending) {
    try {
      (void)h.join();
    } catch (const TaskCancelled&) {
      ++cancelled;
    }
  }
  EXPECT_EQ(cancelled, expected_parked);
  EXPECT_EQ(finished.join(), 42);
  for (auto& h : running_jobs) EXPECT_EQ(h.join(), 7);
  int queued_cancelled = 0;
  for (auto& h : queued_jobs) {
    try {
      (void)h.join();
    } catch (const TaskCancelled&) {
      ++queued_cancelled;
    }
  }
  EXPECT_EQ(queued_cancelled, kQueuedJobs);
  EXPECT_EQ(st.queued_ran.load(), 0);
  // Channels whose receiver was in a frame are closed for their senders.
  for (auto& tx : senders) EXPECT_FALSE(tx.try_send(1).ok());
  producer.join();  // returns once its send failed
  // The connection's server side was closed with its frame.
  const int peer = peer_state(raw, 5s);
  EXPECT_TRUE(peer == 0 || peer == -ECONNRESET) << "peer state " << peer;
  ::close(raw);
  EXPECT_EQ(tlrel::count_fds(), fds_before) << tlrel::list_fds();
  if (round_no < 2 || ::testing::Test::HasFailure()) {
    std::printf(
        "%s round %d (%s): %d tasks, %d running + %d queued jobs, %ld spins, %ld sent by "
        "the foreign producer; shutdown %.1f ms; fds %d before, %d with load, %d after "
        "shutdown, %d after the peer socket closed\n",
        multi ? "multi_thread(2)" : "current_thread", round_no,
        round_no % 2 == 0 ? "shutdown()" : "destructor", expected_parked, kRunningJobs, kQueuedJobs,
        st.spins.load(), produced.load(), shutdown_ms, fds_before, fds_with_load,
        fds_after_shutdown, tlrel::count_fds());
  }
}

class ShutdownUnderLoad : public ::testing::TestWithParam<bool> {};
INSTANTIATE_TEST_SUITE_P(Runtime, ShutdownUnderLoad, ::testing::Values(true, false),
                         [](const auto& info) {
                           return info.param ? "MultiThread" : "CurrentThread";
                         });

TEST_P(ShutdownUnderLoad, PendingWorkEndsInTheDocumentedWay) {
  const long rounds = tlrel::scaled(10);
  for (long i = 0; i < rounds && !HasFailure(); ++i) round(GetParam(), static_cast<int>(i));
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
