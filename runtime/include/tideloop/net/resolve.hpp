// Name resolution on the runtime's blocking pool (getaddrinfo blocks, so it
// never runs on a worker), through Asio's resolver.
//
//   auto addrs = (co_await net::lookup_host("localhost", 8080)).value();
//
// A numeric host ("127.0.0.1", "::1") with a numeric port is answered at once
// without a pool thread. Errors are Asio's resolver codes
// (asio::error::host_not_found, ...), std::error_codes like every other
// Result of the I/O layer.
#pragma once

#include <asio/ip/tcp.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "tideloop/io/result.hpp"
#include "tideloop/task.hpp"

namespace tideloop::net {

Task<Result<std::vector<asio::ip::tcp::endpoint>>> lookup_host(std::string host,
                                                               std::uint16_t port);
Task<Result<std::vector<asio::ip::tcp::endpoint>>> lookup_host(std::string host,
                                                               std::string service);

}  // namespace tideloop::net
