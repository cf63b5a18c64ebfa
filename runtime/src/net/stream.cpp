// The system-call side of stream sockets: read/write loops, accept with
// resource backoff, non-blocking connect. Shared by TCP and Unix sockets.
#include "tideloop/net/stream.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <asio/error.hpp>
#include <cerrno>

#include "io/reactor.hpp"

namespace tideloop::net {

using tideloop::internal::TaskHeader;
using tideloop::internal::WaitStatus;

namespace {
// recv/send through syscall(2): glibc's recv() and send() are thread
// cancellation points, and entering and leaving asynchronous-cancel mode
// around each call costs ~3% of a loopback echo. We never cancel threads.
inline ssize_t raw_recv(int fd, void* buf, std::size_t len) {
  return ::syscall(SYS_recvfrom, fd, buf, len, 0, nullptr, nullptr);
}
inline ssize_t raw_send(int fd, const void* buf, std::size_t len) {
  return ::syscall(SYS_sendto, fd, buf, len, MSG_NOSIGNAL, nullptr, 0);
}
}  // namespace

bool StreamSocket::IoOp::poll_ready(TaskHeader* self) {
  if (tideloop::internal::tl_budget == 0 && !tideloop::internal::coop_poll_proceed(self))
    return false;
  const bool done = (kind_ == Kind::kRead || kind_ == Kind::kReadExact)
                        ? poll_dir<Interest::kRead>(self)
                        : poll_dir<Interest::kWrite>(self);
  if (done) tideloop::internal::coop_spend();
  return done;
}

template <Interest kDir>
bool StreamSocket::IoOp::poll_dir(TaskHeader* self) {
  constexpr bool kIsRead = kDir == Interest::kRead;
  const bool all = kind_ == (kIsRead ? Kind::kReadExact : Kind::kWriteAll);
  const int fd = io_->fd();
  for (;;) {
    std::uint64_t snap = 0;
    switch (io_->poll_ready(kDir, self, &snap, &ec_)) {
      case WaitStatus::kPending:
        return false;
      case WaitStatus::kError:
        return true;
      case WaitStatus::kReady:
        break;
    }
    const std::size_t want = len_ - done_;
    const ssize_t n = kIsRead ? raw_recv(fd, buf_ + done_, want) : raw_send(fd, buf_ + done_, want);
    if (n > 0) {
      done_ += static_cast<std::size_t>(n);
      // Less than asked: the socket buffer is drained (read) or full (write).
      // With edge-triggered epoll a new edge reports the change, so the next
      // call waits instead of spending a syscall on EAGAIN. (A FIN that came
      // with the data is kept by the sticky read-closed bit.)
      if (static_cast<std::size_t>(n) < want) io_->clear_drained(kDir, snap);
      if (!all || done_ == len_) return true;
      continue;
    }
    if (n == 0) {
      // Read: end of stream (or a zero-length request). Write: a zero-length write.
      if (kIsRead && all && done_ < len_) ec_ = asio::error::make_error_code(asio::error::eof);
      return true;
    }
    const int e = errno;
    if (e == EINTR) continue;
    if (e == EAGAIN || e == EWOULDBLOCK) {
      io_->clear_ready(kDir, snap);
      continue;
    }
    ec_ = errno_code(e);
    return true;
  }
}

Result<void> StreamSocket::shutdown(Shutdown how) {
  if (::shutdown(io_.fd(), static_cast<int>(how)) != 0) return last_errno_code();
  return {};
}

namespace detail {

namespace {
constexpr Duration kBackoffFirst = std::chrono::milliseconds(5);
constexpr Duration kBackoffMax = std::chrono::seconds(1);

bool is_resource_error(int e) {
  return e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM;
}
// Errors of one pending connection, not of the listener (accept(2), "Error
// handling"): skip that connection and take the next.
bool is_connection_error(int e) {
  return e == ECONNABORTED || e == EPROTO || e == ENETDOWN || e == ENOPROTOOPT || e == EHOSTDOWN ||
         e == ENONET || e == EHOSTUNREACH || e == EOPNOTSUPP || e == ENETUNREACH || e == EPERM;
}
}  // namespace

int accept_poll(tideloop::internal::IoRegistration& lst, AcceptBackoff& backoff,
                std::optional<Sleep>& backoff_sleep, TaskHeader* self, sockaddr* addr,
                socklen_t* addr_len, std::error_code* ec) {
  if (backoff.retry_at) {
    if (!backoff_sleep) backoff_sleep.emplace(*backoff.retry_at);
    if (!backoff_sleep->poll_ready(self)) return kAcceptPending;
    backoff.retry_at.reset();
  }
  const socklen_t cap = *addr_len;
  for (;;) {
    std::uint64_t snap = 0;
    switch (lst.poll_ready(Interest::kRead, self, &snap, ec)) {
      case WaitStatus::kPending:
        return kAcceptPending;
      case WaitStatus::kError:
        return -1;
      case WaitStatus::kReady:
        break;
    }
    *addr_len = cap;
    const int fd = ::accept4(lst.fd(), addr, addr_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      backoff.delay = Duration::zero();
      return fd;
    }
    const int e = errno;
    if (e == EINTR || is_connection_error(e)) continue;
    if (e == EAGAIN || e == EWOULDBLOCK) {
      lst.clear_ready(Interest::kRead, snap);
      continue;
    }
    if (is_resource_error(e)) {
      backoff.delay = backoff.delay == Duration::zero() ? kBackoffFirst
                                                        : std::min(backoff.delay * 2, kBackoffMax);
      backoff.retry_at = Clock::now() + backoff.delay;
    }
    *ec = errno_code(e);
    return -1;
  }
}

int connect_poll(tideloop::internal::IoRegistration& reg, ConnectState& st, const sockaddr* addr,
                 socklen_t addr_len, TaskHeader* self, std::error_code* ec) {
  if (!st.started) {
    st.started = true;
    (void)tideloop::internal::current_reactor();  // throws outside a runtime
    const int fd = ::socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      *ec = last_errno_code();
      return -1;
    }
    int rc = ::connect(fd, addr, addr_len);
    // Unix sockets may be interrupted before connecting: retry. An inet
    // connect interrupted by a signal continues asynchronously.
    while (rc != 0 && errno == EINTR && addr->sa_family == AF_UNIX)
      rc = ::connect(fd, addr, addr_len);
    const bool in_progress = rc != 0 && (errno == EINPROGRESS || errno == EINTR);
    if (rc != 0 && !in_progress) {
      *ec = last_errno_code();
      ::close(fd);
      return -1;
    }
    // Registered after connect(): a connecting socket must not look ready
    // until epoll reports the outcome.
    auto r = tideloop::internal::IoRegistration::adopt_connection(
        fd, /*initially_ready=*/!in_progress, addr, addr_len);
    if (!r) {
      *ec = r.error();
      return -1;
    }
    reg = std::move(r).value();
    if (!in_progress) return 1;
  }
  std::uint64_t snap = 0;
  switch (reg.poll_ready(Interest::kWrite, self, &snap, ec)) {
    case WaitStatus::kPending:
      return 0;
    case WaitStatus::kError:
      return -1;
    case WaitStatus::kReady:
      break;
  }
  int err = 0;
  socklen_t len = sizeof err;
  if (::getsockopt(reg.fd(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err != 0) {
    *ec = errno_code(err);
    reg.close();
    return -1;
  }
  return 1;
}

}  // namespace detail
}  // namespace tideloop::net
