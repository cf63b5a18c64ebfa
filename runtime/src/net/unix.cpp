// UnixListener / UnixStream setup. The I/O paths are in stream.cpp.
#include "tideloop/net/unix.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace tideloop::net {

Result<UnixListener> UnixListener::bind(std::string_view path, int backlog) {
  const Endpoint ep(path);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return last_errno_code();
  if (::bind(fd, ep.data(), static_cast<socklen_t>(ep.size())) != 0 || ::listen(fd, backlog) != 0) {
    const std::error_code ec = last_errno_code();
    ::close(fd);
    return ec;
  }
  auto reg = tideloop::internal::IoRegistration::adopt(fd);
  if (!reg) return reg.error();
  UnixListener l;
  l.io_ = std::move(reg).value();
  return l;
}

Result<std::pair<UnixStream, UnixStream>> UnixStream::pair() {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
    return last_errno_code();
  auto a = tideloop::internal::IoRegistration::adopt(sv[0]);
  if (!a) {
    ::close(sv[1]);
    return a.error();
  }
  auto b = tideloop::internal::IoRegistration::adopt(sv[1]);
  if (!b) return b.error();
  return std::pair<UnixStream, UnixStream>(UnixStream(std::move(a).value()),
                                           UnixStream(std::move(b).value()));
}

}  // namespace tideloop::net
