// TCP: TcpListener (bind, accept) and TcpStream (connect, read, write,
// shutdown, addresses, TCP_NODELAY), on the runtime's reactor.
//
//   auto l = net::TcpListener::bind(net::TcpEndpoint(asio::ip::make_address("127.0.0.1"), 0));
//   auto [s, peer] = (co_await l->accept()).value();
//   auto c = co_await net::TcpStream::connect(l->local_addr().value());
//
// Addresses are Asio's (asio::ip::tcp::endpoint). Errors: Result<T> with the
// errno (see tideloop/io/result.hpp), e.g. ECONNREFUSED from connect(),
// ECONNRESET from read(), EPIPE from write() to a closed peer.
// Sockets are created non-blocking and close-on-exec; listeners set
// SO_REUSEADDR. Creating one needs a runtime with I/O (a task or block_on);
// the object may then be moved anywhere and may outlive the runtime
// (operations then fail with ECANCELED).
#pragma once

#include <asio/ip/tcp.hpp>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "tideloop/net/stream.hpp"
#include "tideloop/task.hpp"

namespace tideloop::net {

using TcpEndpoint = asio::ip::tcp::endpoint;

class TcpStream : public StreamSocket {
 public:
  using Endpoint = TcpEndpoint;
  using ConnectAwaiter = detail::ConnectAwaiter<TcpStream, Endpoint>;

  TcpStream() = default;
  // Internal: wraps a registered, connected socket.
  explicit TcpStream(tideloop::internal::IoRegistration reg) noexcept
      : StreamSocket(std::move(reg)) {}

  // Connects to `ep`; co_await yields Result<TcpStream>.
  static ConnectAwaiter connect(const Endpoint& ep) { return ConnectAwaiter(ep); }
  // Resolves `host` on the blocking pool (numeric addresses skip it) and
  // tries each address in turn; the last error if none accepts.
  static Task<Result<TcpStream>> connect(std::string host, std::uint16_t port);
  // Adopts a connected TCP socket fd (takes ownership; made non-blocking).
  static Result<TcpStream> from_fd(int fd);

  Result<Endpoint> local_addr() const { return detail::socket_name<Endpoint>(io_.fd(), false); }
  Result<Endpoint> peer_addr() const { return detail::socket_name<Endpoint>(io_.fd(), true); }
  // TCP_NODELAY: send small segments at once instead of coalescing (Nagle).
  Result<void> set_nodelay(bool on);
  Result<bool> nodelay() const;
};

class TcpListener {
 public:
  using Endpoint = TcpEndpoint;
  using AcceptAwaiter = detail::AcceptAwaiter<TcpStream, Endpoint>;

  TcpListener() = default;
  TcpListener(TcpListener&&) noexcept = default;
  TcpListener& operator=(TcpListener&&) noexcept = default;

  // socket + SO_REUSEADDR + bind + listen(backlog). Port 0 picks a free port
  // (see local_addr()).
  static Result<TcpListener> bind(const Endpoint& ep, int backlog = 1024);
  // The same from a numeric address ("127.0.0.1", "::1", "0.0.0.0").
  static Result<TcpListener> bind(std::string_view ip, std::uint16_t port, int backlog = 1024);

  // Accepts one connection: Result<std::pair<TcpStream, Endpoint>>.
  // After EMFILE / ENFILE / ENOBUFS / ENOMEM the error is returned and the
  // next accept() first waits a backoff (5 ms doubling to 1 s), so a server
  // loop that just retries does not spin; one accept() at a time.
  AcceptAwaiter accept() { return AcceptAwaiter(&io_, &backoff_); }

  Result<Endpoint> local_addr() const { return detail::socket_name<Endpoint>(io_.fd(), false); }
  int native_handle() const noexcept { return io_.fd(); }
  bool is_open() const noexcept { return io_.valid(); }
  void close() noexcept { io_.close(); }

 private:
  tideloop::internal::IoRegistration io_;
  detail::AcceptBackoff backoff_;
};

}  // namespace tideloop::net
