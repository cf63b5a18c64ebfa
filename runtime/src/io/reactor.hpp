// Reactor: a runtime's readiness-based I/O, driven through Asio.
//
// Structure (Tokio's I/O driver, with Asio as the event loop):
//  - one asio::io_context per runtime, concurrency hint 1: it is only ever
//    run by one thread at a time, the worker that holds the runtime's driver
//    (scheduler/driver.hpp); park(timeout) runs it until an event, the timeout
//    (a timerfd in the driver's epoll set below, precise to the microsecond
//    where an epoll timeout rounds up to whole milliseconds) or unpark()
//    (io_context::stop(), Asio's interrupter);
//  - sockets and other descriptors live in per-worker ("shard"),
//    edge-triggered epoll sets (EPOLLIN | EPOLLOUT | EPOLLRDHUP), registered
//    once when the socket is created, in the set of its home worker
//    (scheduler/affinity.hpp: least busy worker, or the other end's for an
//    in-process loopback pair). Each worker harvests its own set when its run
//    queue is empty and every event_interval ticks, so a connection's tasks
//    run where its events arrive and workers never contend on one epoll lock
//    (measured on tcp_echo/2: one shared set cost 3.0 us per round trip,
//    per-worker sets 1.9 us);
//  - the driver's epoll set (ep_, registered in Asio's reactor) holds the
//    timerfd and every worker's set, nested one-shot: a worker going to sleep
//    on its futex arms its set there (begin_sleep), so the worker sleeping in
//    the io_context wakes up when a sleeper's socket has news and harvests
//    that set for it; a busy worker's events never wake the driver;
//  - each descriptor has an IoState: a readiness word (a bit per direction,
//    sticky "read closed" / "write closed" bits, and a tick the driver bumps
//    on every event, as Tokio's ScheduledIo) and one waker per direction.
//    A harvest (at most kMaxEventsPerTurn per turn) records readiness and
//    wakes the waiting tasks onto the harvesting worker's local queue;
//  - a task tries its system call while its readiness bit is set; on EAGAIN,
//    or a short read/write (edge-triggered epoll: the buffer was drained or
//    filled, a new edge will come; a pending FIN is covered by the sticky
//    read-closed bit), it clears the bit unless the tick moved since it looked,
//    and parks only when the bit is clear. No system call is spent on waiting.
//
// Why not Asio's own per-descriptor machinery: a stream_descriptor /
// socket async_wait is re-armed with EPOLL_CTL_MOD on every wait (measured:
// 2 of 8 system calls per loopback echo round trip, 12% of the CPU), and
// Asio's reactor never tells an operation which events fired, so it cannot
// keep a sticky EOF bit, without which the short-read shortcut loses a FIN
// that arrived together with the data (a hang, caught by the half-close
// test). Both were built and measured before this design was chosen.
//
// Lifetime: IoState is refcounted (the owning socket, the epoll
// registration). A registration's reference is released only after the
// descriptor left its shard's epoll set and no harvested batch of that shard
// can still name it (a per-shard deferred release list, emptied by the next
// harvest of the shard under its lock; a descriptor never changes shards),
// so events never touch freed memory.
// Sockets hold a shared_ptr to the Reactor, so one may outlive its runtime;
// shutdown() marks every registration shut down (waits fail with ECANCELED)
// and wakes its waiters.
#pragma once

// clang-format off
// io_context first: Asio's detail headers rely on its include order.
#include <asio/io_context.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/detail/reactor.hpp>
#include <asio/detail/reactor_op.hpp>
// clang-format on
#include <sys/epoll.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "scheduler/spinlock.hpp"
#include "tideloop/internal/annotated_mutex.hpp"
#include "tideloop/io.hpp"

namespace tideloop::internal {

// Socket events dispatched per driver turn; Tokio polls up to 1024 too.
inline constexpr std::size_t kMaxEventsPerTurn = 1024;

struct IoState {
  IoState(Reactor* r, int fd_, int shard_) : reactor(r), fd(fd_), shard(shard_) {}

  void ref() noexcept { refs.fetch_add(1, std::memory_order_relaxed); }
  void unref() noexcept {
    if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }
  // Sets readiness `bits` (bumping the tick) and wakes the waiters of the
  // directions they make ready.
  void set_ready(std::uint64_t bits) noexcept;

  // The owning registration's, plus one while in the epoll set.
  std::atomic<std::uint32_t> refs{1};
  Reactor* const reactor;
  const int fd;
  // The worker whose epoll set holds it, and whose queue its waiters wake
  // onto (scheduler/affinity.hpp). Never changes.
  const int shard;
  // io_readiness bits and tick (tideloop/io.hpp).
  std::atomic<std::uint64_t> readiness{0};
  SpinLock lock;
  struct Waiter {
    Waker waker;
    TaskHeader* task = nullptr;  // whose waker it is (skips re-cloning)
  } waiters[2] ABSL_GUARDED_BY(lock);
  // Registry links, guarded by the reactor's reg_mu_ (not annotated: the
  // analysis cannot tell that st->reactor is the Reactor holding it).
  IoState* reg_prev = nullptr;
  IoState* reg_next = nullptr;
  bool registered = false;  // guarded by reg_mu_
  bool in_epoll = false;    // set at registration (regular files are not)
  // Key in the reactor's pending-pair table, 0 if not there (reg_mu_).
  std::uint32_t pair_key = 0;
};

class Reactor : public std::enable_shared_from_this<Reactor> {
 public:
  // `workers`: of the multi-thread scheduler driving it (1 otherwise).
  explicit Reactor(std::size_t workers = 1);
  ~Reactor();  // NOLINT(bugprone-exception-escape): see the definition
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;

  asio::io_context& context() noexcept { return ctx_; }

  // --- the driver thread (one at a time) ---
  // Waits for readiness up to `timeout` (nullopt: until an event or
  // unpark(); zero: poll) and dispatches ready events. Returns how many.
  std::size_t park(std::optional<std::chrono::nanoseconds> timeout);
  // Thread-safe; never lost.
  void unpark() noexcept;
  // --- worker k (its own socket set) ---
  // Dispatches the ready events of worker k's set without blocking (nothing
  // if another thread is harvesting it right now). Returns how many.
  std::size_t poll_shard(std::size_t k);
  // Worker k is about to sleep: harvests its set; if that found nothing,
  // marks it asleep and arms its notification in the driver's set, so the
  // driver harvests it on k's behalf. False: do not sleep (events found).
  bool begin_sleep(std::size_t k);
  // Worker k woke up: it harvests its own set again.
  void end_sleep(std::size_t k);
  void shutdown();

  // --- any thread ---
  // Registers `fd` (left open on failure). Returns a state holding the
  // caller's reference.
  // A connection goes to the least busy worker, or, with `pair_key`
  // (family << 16 | the client's port, 0 if not loopback), to the worker of
  // its other end if that is ours too; anything else to the calling worker.
  IoState* register_fd(int fd, bool initially_ready, bool connection, std::uint32_t pair_key,
                       std::error_code& ec);
  // Leaves the epoll set; closes the fd when close_fd; wakes waiters (they
  // see kClosed). The caller still holds its reference.
  void deregister(IoState* st, bool close_fd) noexcept;

 private:
  enum : int { kIdle = 0, kParked = 1, kNotified = 2 };
  // Registers the socket epoll fd in Asio's reactor: an operation that is
  // never completed, so each epoll report just makes run_one() return.
  class NestedOp : public asio::detail::reactor_op {
   public:
    NestedOp()
        : asio::detail::reactor_op(asio::error_code(), &NestedOp::do_perform,
                                   &NestedOp::do_complete) {}

   private:
    static status do_perform(asio::detail::reactor_op*) { return not_done; }
    static void do_complete(void*, asio::detail::operation*, const asio::error_code&, std::size_t) {
    }
  };

  // A worker's socket epoll set (see the file comment).
  struct alignas(64) Shard {
    int ep = -1;
    SpinLock mu;  // one harvester at a time
    std::vector<struct epoll_event> events ABSL_GUARDED_BY(mu);
    bool maybe_more ABSL_GUARDED_BY(mu) = false;  // the last batch was full
    std::atomic<bool> asleep{false};              // its worker sleeps: the driver harvests it
    std::atomic<std::size_t> fds{0};              // registered descriptors
    // Guarded by the reactor's reg_mu_ (not annotated: a nested struct's
    // attribute cannot name the enclosing object's member): deregistered, ref to drop.
    std::vector<IoState*> release;
    std::atomic<bool> has_release{false};
  };
  // Collects one set's events (non-blocking) and dispatches them.
  std::size_t harvest_shard(Shard& sh) ABSL_EXCLUSIVE_LOCKS_REQUIRED(sh.mu);
  // The driver's set (ep_): the timer and the sleeping workers' sets.
  std::size_t harvest_main() ABSL_EXCLUSIVE_LOCKS_REQUIRED(harvest_mu_);
  void rearm(std::size_t k);
  void release_deferred(Shard& sh);
  // The worker with the fewest registered descriptors (the calling worker on
  // ties).
  int pick_shard() ABSL_EXCLUSIVE_LOCKS_REQUIRED(reg_mu_);

  const std::size_t workers_;
  // Descriptors per worker's set. The array is what reg_mu_ guards; clang 14's
  // pt_guarded_by does not take a unique_ptr, and the pointer never changes
  // after construction, so guarding the member itself says the same.
  std::unique_ptr<int[]> tally_ ABSL_GUARDED_BY(reg_mu_);
  std::unique_ptr<Shard[]> shards_;
  asio::io_context ctx_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  asio::detail::reactor& asio_reactor_;
  asio::detail::reactor::per_descriptor_data nested_data_ = nullptr;
  NestedOp nested_op_;
  const int ep_;         // the driver's set: timer_fd_ and the shards
  const int timer_fd_;   // in ep_: bounds a park's wait (driver thread only)
  SpinLock harvest_mu_;  // one harvester of ep_ at a time
  std::vector<struct epoll_event> events_ ABSL_GUARDED_BY(harvest_mu_);
  std::atomic<int> park_state_{kIdle};
  StdMutex reg_mu_;
  IoState* reg_head_ ABSL_GUARDED_BY(reg_mu_) = nullptr;
  bool shutdown_ ABSL_GUARDED_BY(reg_mu_) = false;
  // In-process loopback connections (scheduler/affinity.hpp): the first end
  // registered (connecting or accepted, whichever wins the race) waits here
  // under the client's port until the other end joins its worker.
  absl::flat_hash_map<std::uint32_t, IoState*> pending_pairs_ ABSL_GUARDED_BY(reg_mu_);
};

// The reactor of the calling thread's runtime; throws std::logic_error when
// there is none (outside a runtime, or I/O disabled).
const std::shared_ptr<Reactor>& current_reactor();

}  // namespace tideloop::internal
