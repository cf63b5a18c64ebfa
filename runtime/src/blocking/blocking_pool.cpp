// BlockingPool: one mutex-protected FIFO and a condition variable. Blocking jobs
// take milliseconds, so a lock per job is noise next to the job itself; what
// matters is that threads appear on demand and go away when idle.
//
// std::mutex rather than absl::Mutex: Debian's absl is not built with
// ThreadSanitizer annotations, so TSan cannot see absl::Mutex's
// happens-before and reports every access to the queue as a race; it
// intercepts pthread mutexes. (StdMutex is std::mutex with the annotations
// -Wthread-safety needs: tideloop/internal/annotated_mutex.hpp.)
#include <pthread.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <system_error>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "tideloop/blocking.hpp"
#include "tideloop/internal/annotated_mutex.hpp"

namespace tideloop {

struct BlockingPool::Shared {
  Options opts;
  mutable internal::StdMutex mu;
  std::condition_variable cv;  // work arrived or shutdown
  std::deque<absl::AnyInvocable<void() &&>> queue ABSL_GUARDED_BY(mu);
  std::size_t num_threads ABSL_GUARDED_BY(mu) = 0;
  std::size_t num_idle ABSL_GUARDED_BY(mu) = 0;
  // Idle threads woken for a job but not yet running it: avoids spawning a new
  // thread for a job an idle one is about to take.
  std::size_t num_notified ABSL_GUARDED_BY(mu) = 0;
  bool shutdown ABSL_GUARDED_BY(mu) = false;
  // Threads that exited by idling out; joined lazily (by the next spawn or
  // shutdown) so no thread joins itself.
  std::vector<std::thread> finished ABSL_GUARDED_BY(mu);
  std::vector<std::thread> threads ABSL_GUARDED_BY(mu);
  std::uint64_t next_id ABSL_GUARDED_BY(mu) = 0;

  void worker_main(std::shared_ptr<Shared> self, std::uint64_t id) ABSL_LOCKS_EXCLUDED(mu);
};

namespace {
void set_thread_name(const std::string& base, std::uint64_t id) {
  std::string name = base + "-" + std::to_string(id);
  if (name.size() > 15) name.resize(15);
  pthread_setname_np(pthread_self(), name.c_str());
}
}  // namespace

// `self` by value: the thread's own reference keeps Shared alive until it returns.
// NOLINTNEXTLINE(performance-unnecessary-value-param)
void BlockingPool::Shared::worker_main(std::shared_ptr<Shared> self, std::uint64_t id) {
  set_thread_name(opts.thread_name, id);
  internal::UniqueLock lock(mu);
  for (;;) {
    while (!queue.empty()) {
      auto job = std::move(queue.front());
      queue.pop_front();
      lock.unlock();
      std::move(job)();
      job = nullptr;  // destroy captured state outside the lock
      lock.lock();
    }
    if (shutdown) break;
    ++num_idle;
    const auto deadline = std::chrono::steady_clock::now() + opts.keep_alive;
    bool timed_out = false;
    while (queue.empty() && !shutdown && !timed_out) {
      timed_out = cv.wait_until(lock.native(), deadline) == std::cv_status::timeout;
      // Every wake-up consumes one notification, also when a busy thread took
      // the job first and this one goes back to waiting. Consuming it only
      // when leaving the loop let num_notified drift up after one-by-one
      // submits, until submit() neither woke an idle thread nor started one
      // (measured: 6 concurrent 20 ms jobs ran one at a time, 121 ms).
      if (num_notified > 0) --num_notified;
    }
    --num_idle;
    if (queue.empty() && !shutdown && timed_out) {
      // Reap: move our own std::thread to `finished` so someone else joins it.
      for (auto it = threads.begin(); it != threads.end(); ++it) {
        if (it->get_id() == std::this_thread::get_id()) {
          finished.push_back(std::move(*it));
          threads.erase(it);
          break;
        }
      }
      break;
    }
  }
  --num_threads;
  (void)self;
}

BlockingPool::BlockingPool(Options opts) : shared_(std::make_shared<Shared>()) {
  shared_->opts = std::move(opts);
  if (shared_->opts.max_threads == 0) shared_->opts.max_threads = 1;
}

BlockingPool::~BlockingPool() {
  shutdown();
}

absl::Status BlockingPool::submit(absl::AnyInvocable<void() &&> job) {
  Shared& s = *shared_;
  std::vector<std::thread> to_join;
  {
    internal::LockGuard<internal::StdMutex> lock(s.mu);
    if (s.shutdown) return absl::FailedPreconditionError("blocking pool is shut down");
    s.queue.push_back(std::move(job));
    to_join.swap(s.finished);
    if (s.num_idle > s.num_notified) {
      ++s.num_notified;
      s.cv.notify_one();
    } else if (s.num_threads < s.opts.max_threads) {
      std::uint64_t id = s.next_id++;
      try {
        s.threads.emplace_back(&Shared::worker_main, &s, shared_, id);
        ++s.num_threads;
      } catch (const std::system_error& e) {
        if (s.num_threads == 0) {
          s.queue.pop_back();
          return absl::ResourceExhaustedError(std::string("cannot start blocking thread: ") +
                                              e.what());
        }
        // Existing threads will get to it.
      }
    }
  }
  for (auto& t : to_join) t.join();
  return absl::OkStatus();
}

void BlockingPool::shutdown() {
  Shared& s = *shared_;
  std::vector<std::thread> threads;
  std::deque<absl::AnyInvocable<void() &&>> dropped;
  {
    internal::LockGuard<internal::StdMutex> lock(s.mu);
    if (s.shutdown && s.threads.empty() && s.finished.empty()) return;
    s.shutdown = true;
    dropped.swap(s.queue);
    s.cv.notify_all();
    threads.swap(s.threads);
    for (auto& t : s.finished) threads.push_back(std::move(t));
    s.finished.clear();
  }
  dropped.clear();  // destructors of never-run jobs run here, outside the lock
  for (auto& t : threads) t.join();
}

std::size_t BlockingPool::num_threads() const {
  internal::LockGuard<internal::StdMutex> lock(shared_->mu);
  return shared_->num_threads;
}
std::size_t BlockingPool::num_idle() const {
  internal::LockGuard<internal::StdMutex> lock(shared_->mu);
  return shared_->num_idle;
}
std::size_t BlockingPool::num_queued() const {
  internal::LockGuard<internal::StdMutex> lock(shared_->mu);
  return shared_->queue.size();
}

}  // namespace tideloop
