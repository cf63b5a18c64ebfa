// Readiness-based I/O on the runtime's reactor.
//
// Every socket type in tideloop/net.hpp follows the same pattern, which
// AsyncFd offers for any other descriptor (pipes, eventfds, a Python
// add_reader):
//
//   ssize_t n = co_await afd.io(Interest::kRead, [&] { return ::read(fd, buf, len); });
//
// i.e.: while the descriptor is known to be ready, run the system call; on
// EAGAIN forget that readiness and wait for the next edge; never a system
// call just to wait. The reactor is an edge-triggered epoll set nested in the
// runtime's asio::io_context, driven by whichever worker parks in it
// (runtime/src/io/reactor.hpp); readiness is recorded per descriptor (a bit
// per direction plus a tick, like Tokio's ScheduledIo) and the task waiting
// for it is woken onto the local queue of that worker.
//
// Errors follow tideloop/io/result.hpp (std::error_code carrying the errno).
// Thread-safety: at most one task waits for each direction (read / write) of
// a descriptor at a time; a reader and a writer may run concurrently. close(),
// moves and destruction need exclusive access.
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <system_error>
#include <type_traits>
#include <utility>

#include "tideloop/internal/task_core.hpp"
#include "tideloop/io/result.hpp"

namespace tideloop {

enum class Interest : std::uint8_t { kRead = 0, kWrite = 1 };

namespace internal {

class Reactor;
struct IoState;

// The readiness word of a registration: flags in the low bits, a tick the
// driver bumps on every event above them. The *_closed bits are sticky (end
// of stream, hang-up): a drained-buffer shortcut never clears them, so a FIN
// that arrived with the last data is still seen; only an EAGAIN, which proves
// the direction is open, clears them.
namespace io_readiness {
inline constexpr std::uint64_t kReadable = 1;
inline constexpr std::uint64_t kWritable = 2;
inline constexpr std::uint64_t kReadClosed = 4;
inline constexpr std::uint64_t kWriteClosed = 8;
inline constexpr std::uint64_t kClosed = 16;    // deregistered (closed or released)
inline constexpr std::uint64_t kShutdown = 32;  // the reactor shut down
inline constexpr std::uint64_t kTickOne = std::uint64_t{1} << 16;
inline constexpr std::uint64_t kFlagMask = kTickOne - 1;
inline constexpr std::uint64_t bit(Interest i) noexcept {
  return i == Interest::kRead ? kReadable : kWritable;
}
// What makes direction i worth a syscall.
inline constexpr std::uint64_t ready_mask(Interest i) noexcept {
  return i == Interest::kRead ? kReadable | kReadClosed : kWritable | kWriteClosed;
}
}  // namespace io_readiness

enum class WaitStatus : std::uint8_t {
  kReady,    // the direction is ready: try the syscall (*snapshot set)
  kPending,  // not ready: the task's waker is registered for the next event
  kError,    // *ec set: the registration is closed or the runtime shut down
};

// One descriptor registered with a runtime's reactor. Owns the descriptor;
// move-only. Not part of the public API (AsyncFd and the socket types are).
class IoRegistration {
 public:
  IoRegistration() noexcept = default;
  // Registers `fd` (made non-blocking) with the reactor of the calling
  // thread's runtime and takes ownership of it; on failure the fd is closed
  // and the error returned. `initially_ready`: assume both directions ready
  // (try the syscall first); false for a connect in progress. Throws
  // std::logic_error outside a runtime with I/O enabled.
  static Result<IoRegistration> adopt(int fd, bool initially_ready = true);
  // adopt() for a connection being made: its waiters run on the worker with
  // the fewest connections (runtime/src/scheduler/affinity.hpp).
  static Result<IoRegistration> adopt_connection(int fd, bool initially_ready,
                                                 const sockaddr* remote, socklen_t remote_len);
  // adopt() for a connection just accepted from `peer`: its waiters run on
  // the worker of its in-process client (both ends on one core), else on the
  // worker with the fewest connections.
  static Result<IoRegistration> adopt_accepted(int fd, const sockaddr* peer, socklen_t peer_len);
  IoRegistration(IoRegistration&& o) noexcept
      : reactor_(std::move(o.reactor_)),
        state_(std::exchange(o.state_, nullptr)),
        readiness_(std::exchange(o.readiness_, nullptr)),
        fd_(std::exchange(o.fd_, -1)) {}
  IoRegistration& operator=(IoRegistration&& o) noexcept {
    if (this != &o) {
      close();
      reactor_ = std::move(o.reactor_);
      state_ = std::exchange(o.state_, nullptr);
      readiness_ = std::exchange(o.readiness_, nullptr);
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  IoRegistration(const IoRegistration&) = delete;
  IoRegistration& operator=(const IoRegistration&) = delete;
  ~IoRegistration() { close(); }

  bool valid() const noexcept { return state_ != nullptr; }
  int fd() const noexcept { return fd_; }

  // Is direction `i` ready? kReady with a snapshot for clear_ready(); else
  // registers self's waker and returns kPending (or kError). Never blocks.
  WaitStatus poll_ready(Interest i, TaskHeader* self, std::uint64_t* snapshot,
                        std::error_code* ec) noexcept {
    if (readiness_ == nullptr) return closed_error(ec);
    const std::uint64_t s = readiness_->load(std::memory_order_acquire);
    if ((s & (io_readiness::kClosed | io_readiness::kShutdown)) == 0 &&
        (s & io_readiness::ready_mask(i)) != 0) {
      *snapshot = s;
      return WaitStatus::kReady;
    }
    return poll_ready_slow(i, self, snapshot, ec);
  }
  // The syscall returned EAGAIN: forget readiness in direction i (closed
  // bits included), unless an event arrived since `snapshot` was taken.
  void clear_ready(Interest i, std::uint64_t snapshot) noexcept {
    clear_bits(io_readiness::ready_mask(i), snapshot);
  }
  // A stream read/write moved less than asked: the buffer is drained (or
  // full). Forget plain readiness; keep the sticky closed bits.
  void clear_drained(Interest i, std::uint64_t snapshot) noexcept {
    clear_bits(io_readiness::bit(i), snapshot);
  }

  // Deregisters and closes the descriptor (pending waiters are woken and
  // see EBADF). Idempotent.
  void close() noexcept;
  // Deregisters and hands the descriptor back without closing it.
  int release() noexcept;

 private:
  static WaitStatus closed_error(std::error_code* ec) noexcept {
    *ec = std::make_error_code(std::errc::bad_file_descriptor);
    return WaitStatus::kError;
  }
  WaitStatus poll_ready_slow(Interest i, TaskHeader* self, std::uint64_t* snapshot,
                             std::error_code* ec) noexcept;
  // Registers with the calling thread's reactor (see Reactor::register_fd).
  static Result<IoRegistration> adopt_as(int fd, bool initially_ready, bool connection,
                                         std::uint32_t pair_key);
  void clear_bits(std::uint64_t bits, std::uint64_t snapshot) noexcept {
    if (readiness_ == nullptr) return;
    std::uint64_t cur = readiness_->load(std::memory_order_acquire);
    while ((cur & ~io_readiness::kFlagMask) == (snapshot & ~io_readiness::kFlagMask)) {
      if (readiness_->compare_exchange_weak(cur, cur & ~bits, std::memory_order_acq_rel,
                                            std::memory_order_acquire))
        return;
    }
  }

  std::shared_ptr<Reactor> reactor_;  // keeps the io_context alive
  IoState* state_ = nullptr;          // refcounted: the reactor's operations hold it too
  std::atomic<std::uint64_t>* readiness_ = nullptr;  // &state_->readiness
  int fd_ = -1;
};

}  // namespace internal

// A descriptor registered with the runtime's reactor, for readiness-driven
// I/O on anything epoll accepts (sockets, pipes, eventfd, ttys). Regular
// files, which epoll refuses, are accepted and always ready. Owns the fd.
class AsyncFd {
 public:
  AsyncFd() = default;
  // Takes ownership of `fd` (sets O_NONBLOCK). On failure `fd` is closed.
  // Must be called on a thread of a runtime (a task or block_on).
  static Result<AsyncFd> adopt(int fd) {
    auto r = internal::IoRegistration::adopt(fd);
    if (!r) return r.error();
    AsyncFd a;
    a.reg_ = std::move(r).value();
    return a;
  }

  // Completes when direction `i` is ready (maybe at once); remembers the
  // readiness it saw for clear_ready(). Result: ok, or EBADF / ECANCELED.
  class ReadyAwaiter : public internal::LeafAwaiter<ReadyAwaiter> {
   public:
    ReadyAwaiter(AsyncFd* fd, Interest i) : fd_(fd), interest_(i) {}
    bool poll_ready(internal::TaskHeader* self) override {
      if (internal::tl_budget == 0 && !internal::coop_poll_proceed(self)) return false;
      std::uint64_t snap = 0;
      switch (fd_->reg_.poll_ready(interest_, self, &snap, &ec_)) {
        case internal::WaitStatus::kPending:
          return false;
        case internal::WaitStatus::kReady:
          fd_->snap_[static_cast<int>(interest_)] = snap;
          internal::coop_spend();
          return true;
        case internal::WaitStatus::kError:
          return true;
      }
      return true;
    }
    Result<void> await_resume() const noexcept { return ec_; }

   private:
    AsyncFd* fd_;
    Interest interest_;
    std::error_code ec_;
  };
  ReadyAwaiter readable() { return ReadyAwaiter(this, Interest::kRead); }
  ReadyAwaiter writable() { return ReadyAwaiter(this, Interest::kWrite); }
  // After a syscall returned EAGAIN: the next readable()/writable() waits
  // for a new readiness event instead of completing at once.
  void clear_ready(Interest i) noexcept { reg_.clear_ready(i, snap_[static_cast<int>(i)]); }

  // Runs `op` (a syscall wrapper returning -1 with errno on failure) when
  // direction `i` is ready, waiting and retrying on EAGAIN. Yields op's
  // result (>= 0) or its errno.
  template <class F>
  class IoAwaiter : public internal::LeafAwaiter<IoAwaiter<F>> {
   public:
    IoAwaiter(AsyncFd* fd, Interest i, F op) : fd_(fd), interest_(i), op_(std::move(op)) {}
    bool poll_ready(internal::TaskHeader* self) override {
      if (internal::tl_budget == 0 && !internal::coop_poll_proceed(self)) return false;
      for (;;) {
        std::uint64_t snap = 0;
        switch (fd_->reg_.poll_ready(interest_, self, &snap, &ec_)) {
          case internal::WaitStatus::kPending:
            return false;
          case internal::WaitStatus::kError:
            return true;
          case internal::WaitStatus::kReady:
            break;
        }
        const auto r = op_();
        if (r >= 0) {
          n_ = static_cast<long long>(r);
          internal::coop_spend();
          return true;
        }
        const int e = errno;
        if (e == EINTR) continue;
        if (e == EAGAIN || e == EWOULDBLOCK) {
          fd_->reg_.clear_ready(interest_, snap);
          continue;
        }
        ec_ = errno_code(e);
        return true;
      }
    }
    Result<long long> await_resume() const noexcept {
      if (ec_) return ec_;
      return n_;
    }

   private:
    AsyncFd* fd_;
    Interest interest_;
    F op_;
    long long n_ = 0;
    std::error_code ec_;
  };
  template <class F>
  IoAwaiter<std::decay_t<F>> io(Interest i, F&& op) {
    return IoAwaiter<std::decay_t<F>>(this, i, std::forward<F>(op));
  }

  int fd() const noexcept { return reg_.fd(); }
  bool valid() const noexcept { return reg_.valid(); }
  int release() noexcept { return reg_.release(); }
  void close() noexcept { reg_.close(); }

 private:
  internal::IoRegistration reg_;
  std::uint64_t snap_[2] = {0, 0};
};

}  // namespace tideloop
