// Watcher: the record behind every fd the loop waits on (libuv's uv__io_t). The poller's tag for
// a registered fd is a pointer to its Watcher, and readiness is dispatched through the watcher's
// ops, so each handle kind (add_reader/add_writer watches, stream transports, servers, datagram
// endpoints, and later pipes and subprocess pipes) brings its own reaction to readiness and runs
// it inside the tick, in the same GIL hold as the wait's other results.
//
// The engine knows nothing of Python: WatcherOps is only declared here and defined by the loop
// (bridge/loop/watchers.hpp), which is where dispatch, GC traversal and close live. A Watcher is
// embedded in the object it belongs to (a transport, the per-fd add_reader record...), so
// registering allocates nothing.
//
// Lifetime rule (what makes a pointer tag safe): one wait can report several fds, and a callback
// run for an early one may unregister a later one (a protocol closes another transport). The
// loop therefore never frees a watcher's owner while a batch of events is being dispatched: the
// registry's reference to the owner is dropped only after the batch (FdRegistry::unregister
// hands the owner back to the caller, who defers the release; see bridge/loop/registry.cpp).
// Only the bridge thread, holding the GIL, touches watchers.
#pragma once

#include <cstdint>

namespace tideloop::bridge {

struct WatcherOps;

struct Watcher {
  const WatcherOps* ops = nullptr;  // set once by the owner, never null while registered
  int fd = -1;                      // the watched descriptor while registered, else -1
  std::uint32_t interest = 0;       // EPOLLIN/EPOLLOUT currently in the poller's set (0: none)
  bool registered = false;          // the registry's table holds this watcher for `fd`
  // The loop's own fds (the wake-up eventfd, the signal socket): not counted by
  // FdRegistry::active(), so a tick with ready callbacks makes no epoll_wait(0) just for them
  // (the eventfd is drained at the next blocking wait, a pending signal by PyErr_CheckSignals).
  bool internal = false;
};

}  // namespace tideloop::bridge
