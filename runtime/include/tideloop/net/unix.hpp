// Unix domain stream sockets: UnixListener and UnixStream (the same
// operations as TCP, see tideloop/net/stream.hpp), addresses are Asio's
// asio::local::stream_protocol::endpoint (a filesystem path; abstract
// names start with '\0').
#pragma once

#include <asio/local/stream_protocol.hpp>
#include <string>
#include <string_view>
#include <utility>

#include "tideloop/net/stream.hpp"

namespace tideloop::net {

using UnixEndpoint = asio::local::stream_protocol::endpoint;

class UnixStream : public StreamSocket {
 public:
  using Endpoint = UnixEndpoint;
  using ConnectAwaiter = detail::ConnectAwaiter<UnixStream, Endpoint>;

  UnixStream() = default;
  explicit UnixStream(tideloop::internal::IoRegistration reg) noexcept
      : StreamSocket(std::move(reg)) {}

  // Connects to the socket at `ep` (a path converts implicitly):
  // Result<UnixStream> (ECONNREFUSED when nobody listens, ENOENT when the path
  // does not exist).
  static ConnectAwaiter connect(const Endpoint& ep) { return ConnectAwaiter(ep); }
  // A connected pair (socketpair(2)).
  static Result<std::pair<UnixStream, UnixStream>> pair();

  Result<Endpoint> local_addr() const { return detail::socket_name<Endpoint>(io_.fd(), false); }
  Result<Endpoint> peer_addr() const { return detail::socket_name<Endpoint>(io_.fd(), true); }
};

class UnixListener {
 public:
  using Endpoint = UnixEndpoint;
  using AcceptAwaiter = detail::AcceptAwaiter<UnixStream, Endpoint>;

  UnixListener() = default;
  UnixListener(UnixListener&&) noexcept = default;
  UnixListener& operator=(UnixListener&&) noexcept = default;

  // Binds and listens at `path` (which must not exist; remove a stale one
  // first). The listener does not unlink the path when closed.
  static Result<UnixListener> bind(std::string_view path, int backlog = 1024);

  // Result<std::pair<UnixStream, Endpoint>>; resource errors back off as for
  // TcpListener::accept().
  AcceptAwaiter accept() { return AcceptAwaiter(&io_, &backoff_); }

  Result<Endpoint> local_addr() const { return detail::socket_name<Endpoint>(io_.fd(), false); }
  int native_handle() const noexcept { return io_.fd(); }
  void close() noexcept { io_.close(); }

 private:
  tideloop::internal::IoRegistration io_;
  detail::AcceptBackoff backoff_;
};

}  // namespace tideloop::net
