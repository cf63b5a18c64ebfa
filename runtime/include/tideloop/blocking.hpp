// A pool of threads for work that blocks: file I/O, name resolution, Python's
// run_in_executor. Threads are created on demand up to a limit and reaped after
// idling, so an idle process holds none and a burst does not queue behind a
// fixed-size pool.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"

namespace tideloop {

class BlockingPool {
 public:
  struct Options {
    // Upper bound on live threads; beyond it jobs wait in the queue (FIFO).
    std::size_t max_threads = 512;
    // A thread idle this long exits.
    std::chrono::milliseconds keep_alive{10000};
    std::string thread_name = "tl-blocking";
  };

  explicit BlockingPool(Options opts);
  BlockingPool() : BlockingPool(Options{}) {}
  // Calls shutdown().
  ~BlockingPool();
  BlockingPool(const BlockingPool&) = delete;
  BlockingPool& operator=(const BlockingPool&) = delete;

  // Queues `job` to run on a pool thread. Thread-safe. Spawns a thread when no
  // thread is idle and the limit allows. Returns FailedPrecondition after
  // shutdown() began (the job is destroyed without running), ResourceExhausted
  // if a thread could not be created and none exists to run the job.
  absl::Status submit(absl::AnyInvocable<void() &&> job);

  // Stops accepting jobs, lets running jobs finish, destroys queued ones
  // without running them, and joins every thread. Idempotent. Must not be
  // called from a pool thread.
  void shutdown();

  // Live threads (busy + idle).
  std::size_t num_threads() const;
  // Threads waiting for work.
  std::size_t num_idle() const;
  // Jobs queued and not yet started.
  std::size_t num_queued() const;

 private:
  struct Shared;
  std::shared_ptr<Shared> shared_;
};

}  // namespace tideloop
