// StreamSocket: what TcpStream and UnixStream share, plus the awaiters of
// the connection-oriented socket types (accept, connect).
//
// Every operation tries its system call first and waits for readiness only
// on EAGAIN (see tideloop/io.hpp); a pending operation is cancelled by
// destroying its awaiter (its task being cancelled, or a timeout), which
// loses nothing: readiness waits do not consume data.
//
// Errors: Result<T> carrying the errno (tideloop/io/result.hpp). Writes use
// MSG_NOSIGNAL, so writing to a closed peer yields EPIPE (or ECONNRESET),
// never SIGPIPE.
//
// Thread-safety: one reader and one writer may use a stream concurrently
// (e.g. two tasks); two concurrent readers (or writers) are not supported.
// close(), moves and destruction need exclusive access.
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <utility>

#include "tideloop/io.hpp"
#include "tideloop/time.hpp"

namespace tideloop::net {

enum class Shutdown { kRead = SHUT_RD, kWrite = SHUT_WR, kBoth = SHUT_RDWR };

class StreamSocket {
 public:
  // One read, write, read_exact or write_all in flight; co_await yields
  // the bytes transferred.
  class [[nodiscard]] IoOp : public tideloop::internal::LeafAwaiter<IoOp> {
   public:
    enum class Kind : std::uint8_t { kRead, kReadExact, kWrite, kWriteAll };
    IoOp(tideloop::internal::IoRegistration* io, Kind k, void* buf, std::size_t len) noexcept
        : io_(io), buf_(static_cast<std::byte*>(buf)), len_(len), kind_(k) {}
    bool poll_ready(tideloop::internal::TaskHeader* self) override;
    Result<std::size_t> await_resume() noexcept {
      if (ec_) return ec_;
      return done_;
    }

   private:
    // One read (kRead) or write loop; defined in stream.cpp.
    template <Interest kDir>
    bool poll_dir(tideloop::internal::TaskHeader* self);
    tideloop::internal::IoRegistration* io_;
    std::byte* buf_;
    std::size_t len_;
    std::size_t done_ = 0;
    std::error_code ec_;
    Kind kind_;
  };

  StreamSocket() = default;
  explicit StreamSocket(tideloop::internal::IoRegistration reg) noexcept : io_(std::move(reg)) {}

  // Reads up to len bytes: the count, 0 at end of stream.
  IoOp read(void* buf, std::size_t len) { return IoOp(&io_, IoOp::Kind::kRead, buf, len); }
  IoOp read(std::span<std::byte> b) { return read(b.data(), b.size()); }
  // Reads exactly len bytes; asio::error::eof if the stream ends first.
  IoOp read_exact(void* buf, std::size_t len) {
    return IoOp(&io_, IoOp::Kind::kReadExact, buf, len);
  }
  IoOp read_exact(std::span<std::byte> b) { return read_exact(b.data(), b.size()); }
  // Writes some of the bytes (at least one unless len is 0): the count.
  IoOp write(const void* buf, std::size_t len) {
    return IoOp(&io_, IoOp::Kind::kWrite, const_cast<void*>(buf), len);
  }
  IoOp write(std::span<const std::byte> b) { return write(b.data(), b.size()); }
  // Writes all the bytes (the count is len).
  IoOp write_all(const void* buf, std::size_t len) {
    return IoOp(&io_, IoOp::Kind::kWriteAll, const_cast<void*>(buf), len);
  }
  IoOp write_all(std::span<const std::byte> b) { return write_all(b.data(), b.size()); }
  IoOp write_all(std::string_view s) { return write_all(s.data(), s.size()); }

  // shutdown(2): e.g. kWrite sends FIN (the peer reads end of stream) while
  // this side can still read.
  Result<void> shutdown(Shutdown how = Shutdown::kWrite);

  int native_handle() const noexcept { return io_.fd(); }
  bool is_open() const noexcept { return io_.valid(); }
  // Closes now (also done by the destructor). Pending operations on this
  // stream fail with EBADF.
  void close() noexcept { io_.close(); }

 protected:
  tideloop::internal::IoRegistration io_;
};

namespace detail {

// Backoff of a listener after accept failed for lack of resources (EMFILE,
// ENFILE, ENOBUFS, ENOMEM): the error is returned, and the next accept()
// waits first, so a server loop that retries does not spin while the
// condition lasts. 5 ms doubling to 1 s (what Go's net/http does), reset by a
// successful accept.
struct AcceptBackoff {
  Duration delay{0};
  std::optional<Instant> retry_at;
};

inline constexpr int kAcceptPending = -2;

// One accept step. Returns the new (non-blocking, close-on-exec) fd, or
// kAcceptPending (a wait is armed), or -1 with *ec set.
int accept_poll(tideloop::internal::IoRegistration& lst, AcceptBackoff& backoff,
                std::optional<Sleep>& backoff_sleep, tideloop::internal::TaskHeader* self,
                sockaddr* addr, socklen_t* addr_len, std::error_code* ec);

// One connect step on `reg` (created on the first call). Returns 1 when
// connected, 0 when pending, -1 with *ec set.
struct ConnectState {
  bool started = false;
};
int connect_poll(tideloop::internal::IoRegistration& reg, ConnectState& st, const sockaddr* addr,
                 socklen_t addr_len, tideloop::internal::TaskHeader* self, std::error_code* ec);

// Fills ep from getsockname / getpeername.
template <class Endpoint>
Result<Endpoint> socket_name(int fd, bool peer) {
  Endpoint ep;
  auto len = static_cast<socklen_t>(ep.capacity());
  const int r = peer ? ::getpeername(fd, ep.data(), &len) : ::getsockname(fd, ep.data(), &len);
  if (r != 0) return last_errno_code();
  ep.resize(len);
  return ep;
}

template <class Stream, class Endpoint>
class [[nodiscard]] AcceptAwaiter
    : public tideloop::internal::LeafAwaiter<AcceptAwaiter<Stream, Endpoint>> {
 public:
  AcceptAwaiter(tideloop::internal::IoRegistration* lst, AcceptBackoff* bo) : lst_(lst), bo_(bo) {}
  bool poll_ready(tideloop::internal::TaskHeader* self) override {
    if (tideloop::internal::tl_budget == 0 && !tideloop::internal::coop_poll_proceed(self))
      return false;
    auto len = static_cast<socklen_t>(peer_.capacity());
    const int fd = accept_poll(*lst_, *bo_, sleep_, self, peer_.data(), &len, &ec_);
    if (fd == kAcceptPending) return false;
    if (fd >= 0) {
      peer_.resize(len);
      auto reg = tideloop::internal::IoRegistration::adopt_accepted(fd, peer_.data(),
                                                                    static_cast<socklen_t>(len));
      if (reg) {
        stream_.emplace(std::move(reg).value());
      } else {
        ec_ = reg.error();
      }
    }
    tideloop::internal::coop_spend();
    return true;
  }
  // The connected stream and the peer's address.
  Result<std::pair<Stream, Endpoint>> await_resume() {
    if (!stream_) return ec_;
    return std::pair<Stream, Endpoint>(std::move(*stream_), peer_);
  }

 private:
  tideloop::internal::IoRegistration* lst_;
  AcceptBackoff* bo_;
  std::optional<Sleep> sleep_;
  Endpoint peer_;
  std::optional<Stream> stream_;
  std::error_code ec_;
};

template <class Stream, class Endpoint>
class [[nodiscard]] ConnectAwaiter
    : public tideloop::internal::LeafAwaiter<ConnectAwaiter<Stream, Endpoint>> {
 public:
  explicit ConnectAwaiter(Endpoint ep) : ep_(std::move(ep)) {}
  bool poll_ready(tideloop::internal::TaskHeader* self) override {
    if (tideloop::internal::tl_budget == 0 && !tideloop::internal::coop_poll_proceed(self))
      return false;
    const int r =
        connect_poll(reg_, st_, ep_.data(), static_cast<socklen_t>(ep_.size()), self, &ec_);
    if (r == 0) return false;
    tideloop::internal::coop_spend();
    return true;
  }
  Result<Stream> await_resume() {
    if (ec_) return ec_;
    return Stream(std::move(reg_));
  }

 private:
  Endpoint ep_;
  tideloop::internal::IoRegistration reg_;
  ConnectState st_;
  std::error_code ec_;
};

}  // namespace detail
}  // namespace tideloop::net
