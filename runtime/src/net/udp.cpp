// UdpSocket: setup and the datagram system calls.
#include "tideloop/net/udp.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include "tideloop/net/stream.hpp"

namespace tideloop::net {

using tideloop::internal::TaskHeader;
using tideloop::internal::WaitStatus;

Result<UdpSocket> UdpSocket::bind(const Endpoint& ep) {
  const int fd = ::socket(ep.data()->sa_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return last_errno_code();
  if (::bind(fd, ep.data(), static_cast<socklen_t>(ep.size())) != 0) {
    const std::error_code ec = last_errno_code();
    ::close(fd);
    return ec;
  }
  auto reg = tideloop::internal::IoRegistration::adopt(fd);
  if (!reg) return reg.error();
  return UdpSocket(std::move(reg).value());
}

Result<UdpSocket> UdpSocket::bind(std::string_view ip, std::uint16_t port) {
  std::error_code ec;
  const auto addr = asio::ip::make_address(std::string(ip), ec);
  if (ec) return ec;
  return bind(Endpoint(addr, port));
}

Result<void> UdpSocket::connect(const Endpoint& peer) {
  if (::connect(io_.fd(), peer.data(), static_cast<socklen_t>(peer.size())) != 0)
    return last_errno_code();
  return {};
}

Result<UdpSocket::Endpoint> UdpSocket::local_addr() const {
  return detail::socket_name<Endpoint>(io_.fd(), false);
}
Result<UdpSocket::Endpoint> UdpSocket::peer_addr() const {
  return detail::socket_name<Endpoint>(io_.fd(), true);
}

Result<void> UdpSocket::set_broadcast(bool on) {
  const int v = on ? 1 : 0;
  if (::setsockopt(io_.fd(), SOL_SOCKET, SO_BROADCAST, &v, sizeof v) != 0) return last_errno_code();
  return {};
}

bool UdpSocket::DatagramOp::poll_ready(TaskHeader* self) {
  if (tideloop::internal::tl_budget == 0 && !tideloop::internal::coop_poll_proceed(self))
    return false;
  const bool sending = kind_ == Kind::kSend || kind_ == Kind::kSendTo;
  const Interest in = sending ? Interest::kWrite : Interest::kRead;
  const int fd = io_->fd();
  for (;;) {
    std::uint64_t snap = 0;
    switch (io_->poll_ready(in, self, &snap, &ec_)) {
      case WaitStatus::kPending:
        return false;
      case WaitStatus::kError:
        return true;
      case WaitStatus::kReady:
        break;
    }
    ssize_t n;
    if (kind_ == Kind::kSendTo) {
      n = ::sendto(fd, buf_, len_, MSG_NOSIGNAL, peer_.data(),
                   static_cast<socklen_t>(peer_.size()));
    } else if (kind_ == Kind::kSend) {
      n = ::send(fd, buf_, len_, MSG_NOSIGNAL);
    } else if (kind_ == Kind::kRecvFrom) {
      auto alen = static_cast<socklen_t>(peer_.capacity());
      n = ::recvfrom(fd, buf_, len_, 0, peer_.data(), &alen);
      if (n >= 0) peer_.resize(alen);
    } else {
      n = ::recv(fd, buf_, len_, 0);
    }
    if (n >= 0) {
      // (A datagram shorter than the buffer says nothing about the queue.)
      n_ = static_cast<std::size_t>(n);
      break;
    }
    const int e = errno;
    if (e == EINTR) continue;
    if (e == EAGAIN || e == EWOULDBLOCK) {
      io_->clear_ready(in, snap);
      continue;
    }
    ec_ = errno_code(e);
    break;
  }
  tideloop::internal::coop_spend();
  return true;
}

}  // namespace tideloop::net
