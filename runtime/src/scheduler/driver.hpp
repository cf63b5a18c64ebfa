// Driver: what a parked worker waits in when it holds the runtime's time and
// I/O driver (the Tokio way: one parked worker sleeps in the reactor, the
// others on their futex; an unpark reaches whichever is asleep). The timer
// wheel and the Asio reactor implement this; the scheduler only calls it.
#pragma once

#include <chrono>
#include <optional>

namespace tideloop::internal {

class Driver {
 public:
  virtual ~Driver() = default;
  // Waits until I/O readiness, a timer deadline, or unpark(); dispatches the
  // ready events (waking tasks) before returning. timeout 0 polls without
  // blocking; nullopt waits until an event or unpark(). Called by at most one
  // thread at a time (the scheduler holds a lock around it).
  virtual void park(std::optional<std::chrono::nanoseconds> timeout) = 0;
  // Thread-safe. Makes the current or the next park() return promptly (a
  // wake-up is never lost).
  virtual void unpark() = 0;
  // Any worker, without holding the driver: dispatches the ready I/O events
  // of its own descriptors without blocking (each worker has its own set,
  // runtime/src/io/reactor.hpp). Called when its run queue is empty and
  // periodically; the waking worker's queue gets the tasks.
  virtual void poll_io() {}
  // A worker about to sleep on its futex (not in the driver): last look at
  // its own I/O; false if that woke tasks (do not sleep). Otherwise its
  // descriptors are watched by the driver until end_sleep().
  virtual bool begin_sleep() { return true; }
  virtual void end_sleep() {}
  // Called once at runtime shutdown, after the workers are joined.
  virtual void shutdown() = 0;
};

}  // namespace tideloop::internal
