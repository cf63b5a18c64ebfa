// UdpSocket: datagrams on the runtime's reactor.
//
//   auto s = net::UdpSocket::bind(net::UdpEndpoint(asio::ip::make_address("127.0.0.1"), 0));
//   co_await s->send_to(buf, n, peer);
//   auto [n, from] = (co_await s->recv_from(buf, sizeof buf)).value();
//
// A datagram larger than the receive buffer is truncated (the rest is
// dropped, as with recvfrom(2)). Errors: Result<T> with the errno; on a
// connected socket an ICMP port-unreachable surfaces as ECONNREFUSED on a
// later send() or recv(). One receiver and one sender at a time.
#pragma once

#include <asio/ip/udp.hpp>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <utility>

#include "tideloop/io.hpp"

namespace tideloop::net {

using UdpEndpoint = asio::ip::udp::endpoint;

class UdpSocket {
 public:
  using Endpoint = UdpEndpoint;

  // send / send_to / recv / recv_from in flight.
  class [[nodiscard]] DatagramOp : public tideloop::internal::LeafAwaiter<DatagramOp> {
   public:
    enum class Kind : std::uint8_t { kSend, kSendTo, kRecv, kRecvFrom };
    DatagramOp(tideloop::internal::IoRegistration* io, Kind k, void* buf, std::size_t len,
               const Endpoint* to) noexcept
        : io_(io), buf_(buf), len_(len), kind_(k) {
      if (to) peer_ = *to;
    }
    bool poll_ready(tideloop::internal::TaskHeader* self) override;
    // Bytes sent or received.
    Result<std::size_t> await_resume() noexcept {
      if (ec_) return ec_;
      return n_;
    }
    const Endpoint& peer() const noexcept { return peer_; }

   private:
    tideloop::internal::IoRegistration* io_;
    void* buf_;
    std::size_t len_;
    std::size_t n_ = 0;
    Endpoint peer_;
    std::error_code ec_;
    Kind kind_;
  };

  class [[nodiscard]] RecvFromOp : public tideloop::internal::LeafAwaiter<RecvFromOp> {
   public:
    RecvFromOp(tideloop::internal::IoRegistration* io, void* buf, std::size_t len) noexcept
        : op_(io, DatagramOp::Kind::kRecvFrom, buf, len, nullptr) {}
    bool poll_ready(tideloop::internal::TaskHeader* self) override { return op_.poll_ready(self); }
    // (bytes, sender)
    Result<std::pair<std::size_t, Endpoint>> await_resume() noexcept {
      auto r = op_.await_resume();
      if (!r) return r.error();
      return std::pair<std::size_t, Endpoint>(*r, op_.peer());
    }

   private:
    DatagramOp op_;
  };

  UdpSocket() = default;

  // socket + bind. Port 0 picks a free port (see local_addr()).
  static Result<UdpSocket> bind(const Endpoint& ep);
  static Result<UdpSocket> bind(std::string_view ip, std::uint16_t port);

  // Sets the default peer: send()/recv() use it and datagrams from others
  // are dropped by the kernel. Immediate (no handshake).
  Result<void> connect(const Endpoint& peer);

  DatagramOp send_to(const void* buf, std::size_t len, const Endpoint& to) {
    return DatagramOp(&io_, DatagramOp::Kind::kSendTo, const_cast<void*>(buf), len, &to);
  }
  RecvFromOp recv_from(void* buf, std::size_t len) { return RecvFromOp(&io_, buf, len); }
  DatagramOp send(const void* buf, std::size_t len) {
    return DatagramOp(&io_, DatagramOp::Kind::kSend, const_cast<void*>(buf), len, nullptr);
  }
  DatagramOp recv(void* buf, std::size_t len) {
    return DatagramOp(&io_, DatagramOp::Kind::kRecv, buf, len, nullptr);
  }

  Result<Endpoint> local_addr() const;
  Result<Endpoint> peer_addr() const;
  Result<void> set_broadcast(bool on);

  int native_handle() const noexcept { return io_.fd(); }
  bool is_open() const noexcept { return io_.valid(); }
  void close() noexcept { io_.close(); }

 private:
  explicit UdpSocket(tideloop::internal::IoRegistration reg) noexcept : io_(std::move(reg)) {}
  tideloop::internal::IoRegistration io_;
};

}  // namespace tideloop::net
