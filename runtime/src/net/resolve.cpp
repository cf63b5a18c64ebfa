// lookup_host: Asio's resolver, run on the blocking pool.
#include "tideloop/net/resolve.hpp"

#include <charconv>

#include "io/reactor.hpp"
#include "tideloop/spawn_blocking.hpp"

namespace tideloop::net {

using Endpoints = std::vector<asio::ip::tcp::endpoint>;

Task<Result<Endpoints>> lookup_host(std::string host, std::uint16_t port) {
  return lookup_host(std::move(host), std::to_string(port));
}

namespace {
// A plain function, not a coroutine: a lambda temporary inside a co_await
// expression is miscompiled by GCC 12 (the closure's strings end up pointing
// into the coroutine frame), so the closure is built here.
JoinHandle<Result<Endpoints>> resolve_on_pool(std::string host, std::string service) {
  // The resolver object belongs to the runtime's io_context (kept alive by
  // the capture); its synchronous resolve is getaddrinfo on a pool thread.
  const std::shared_ptr<tideloop::internal::Reactor>& reactor =
      tideloop::internal::current_reactor();
  return spawn_blocking(
      [reactor, host = std::move(host), service = std::move(service)]() -> Result<Endpoints> {
        asio::ip::tcp::resolver resolver(reactor->context());
        std::error_code rec;
        auto results = resolver.resolve(host, service, rec);
        if (rec) return rec;
        Endpoints out;
        for (const auto& e : results) out.push_back(e.endpoint());
        if (out.empty()) return std::make_error_code(std::errc::host_unreachable);
        return out;
      });
}
}  // namespace

Task<Result<Endpoints>> lookup_host(std::string host, std::string service) {
  // Numeric fast path: nothing to look up, no thread hop.
  std::error_code ec;
  const auto addr = asio::ip::make_address(host, ec);
  unsigned port = 0;
  const auto [p, perr] = std::from_chars(service.data(), service.data() + service.size(), port);
  if (!ec && perr == std::errc() && p == service.data() + service.size() && port <= 65535) {
    co_return Endpoints{asio::ip::tcp::endpoint(addr, static_cast<std::uint16_t>(port))};
  }
  auto h = resolve_on_pool(std::move(host), std::move(service));
  co_return co_await h;
}

}  // namespace tideloop::net
