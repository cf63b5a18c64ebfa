// TcpListener / TcpStream: socket setup and options. The I/O paths are in
// stream.cpp.
#include "tideloop/net/tcp.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tideloop/net/resolve.hpp"

namespace tideloop::net {

namespace {
Result<tideloop::internal::IoRegistration> listen_socket(const sockaddr* addr, socklen_t len,
                                                         int backlog) {
  const int fd = ::socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return last_errno_code();
  if (addr->sa_family == AF_INET || addr->sa_family == AF_INET6) {
    // Like Tokio/mio on Unix: a restarted server can rebind at once.
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  }
  if (::bind(fd, addr, len) != 0 || ::listen(fd, backlog) != 0) {
    const std::error_code ec = last_errno_code();
    ::close(fd);
    return ec;
  }
  return tideloop::internal::IoRegistration::adopt(fd);
}
}  // namespace

Result<TcpListener> TcpListener::bind(const Endpoint& ep, int backlog) {
  auto reg = listen_socket(ep.data(), static_cast<socklen_t>(ep.size()), backlog);
  if (!reg) return reg.error();
  TcpListener l;
  l.io_ = std::move(reg).value();
  return l;
}

Result<TcpListener> TcpListener::bind(std::string_view ip, std::uint16_t port, int backlog) {
  std::error_code ec;
  const auto addr = asio::ip::make_address(std::string(ip), ec);
  if (ec) return ec;
  return bind(Endpoint(addr, port), backlog);
}

Result<TcpStream> TcpStream::from_fd(int fd) {
  const int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
    const std::error_code ec = last_errno_code();
    ::close(fd);
    return ec;
  }
  auto reg = tideloop::internal::IoRegistration::adopt(fd);
  if (!reg) return reg.error();
  return TcpStream(std::move(reg).value());
}

Task<Result<TcpStream>> TcpStream::connect(std::string host, std::uint16_t port) {
  // Not `co_await lookup_host(std::move(host), ...)`: GCC 12 miscompiles
  // copies of coroutine parameters made inside a co_await expression.
  auto lookup = lookup_host(std::move(host), port);
  auto addrs = co_await std::move(lookup);
  if (!addrs) co_return addrs.error();
  std::error_code last = std::make_error_code(std::errc::host_unreachable);
  for (const auto& ep : *addrs) {
    auto s = co_await TcpStream::connect(ep);
    if (s) co_return s;
    last = s.error();
  }
  co_return last;
}

Result<void> TcpStream::set_nodelay(bool on) {
  const int v = on ? 1 : 0;
  if (::setsockopt(io_.fd(), IPPROTO_TCP, TCP_NODELAY, &v, sizeof v) != 0) return last_errno_code();
  return {};
}

Result<bool> TcpStream::nodelay() const {
  int v = 0;
  socklen_t len = sizeof v;
  if (::getsockopt(io_.fd(), IPPROTO_TCP, TCP_NODELAY, &v, &len) != 0) return last_errno_code();
  return v != 0;
}

}  // namespace tideloop::net
