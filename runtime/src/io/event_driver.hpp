// EventDriver: the runtime's implementation of scheduler/driver.hpp. It
// combines what a parked worker waits for: timer deadlines (TimeDriver) and
// I/O readiness (Reactor); and it owns the blocking pool behind
// spawn_blocking() and name resolution.
//
// park(timeout): fire due timers; if that woke tasks, only poll I/O;
// otherwise sleep in the reactor until the earlier of `timeout` and the next
// timer deadline (or an unpark), dispatch the I/O readiness events, fire timers
// again. Every wake-up it causes lands on the calling worker's local queue.
//
// One per runtime, created by the scheduler's constructor (both flavours)
// and reachable from leaf futures through RuntimeCore::event_driver.
#pragma once

#include <chrono>
#include <memory>
#include <optional>

#include "scheduler/driver.hpp"
#include "scheduler/parker.hpp"
#include "tideloop/blocking.hpp"
#include "tideloop/runtime.hpp"

namespace tideloop::internal {

class TimeDriver;
class Reactor;

// Runs spawn_blocking tasks on the BlockingPool: a wake-up (the first
// "poll") submits the task as a pool job.
class BlockingScheduler final : public Scheduler {
 public:
  BlockingScheduler(RuntimeCore* core, BlockingPool* pool) : core_(core), pool_(pool) {}
  void schedule(TaskHeader* t) override { submit(t); }
  void yield_task(TaskHeader* t) override { submit(t); }
  // The scheduler holds the owner reference until completion.
  bool release(TaskHeader*) override { return true; }
  void submit(TaskHeader* t);

 private:
  RuntimeCore* core_;
  BlockingPool* pool_;
};

class EventDriver final : public Driver {
 public:
  EventDriver(RuntimeCore* core, const RuntimeConfig& cfg, std::size_t workers);
  ~EventDriver() override;

  void park(std::optional<std::chrono::nanoseconds> timeout) override;
  void unpark() override;
  void poll_io() override;
  bool begin_sleep() override;
  void end_sleep() override;
  void shutdown() override;

  TimeDriver* time() noexcept { return time_.get(); }
  const std::shared_ptr<Reactor>& reactor() noexcept { return reactor_; }
  BlockingScheduler* blocking() noexcept { return &blocking_; }
  BlockingPool& blocking_pool() noexcept { return pool_; }

 private:
  void sleep(std::optional<std::chrono::nanoseconds> timeout);

  std::unique_ptr<TimeDriver> time_;
  std::shared_ptr<Reactor> reactor_;
  Parker parker_;  // where park() sleeps when I/O is disabled
  BlockingPool pool_;
  BlockingScheduler blocking_;
};

// Creates the driver and publishes it as core->event_driver.
std::unique_ptr<EventDriver> make_event_driver(RuntimeCore* core, const RuntimeConfig& cfg,
                                               std::size_t workers);

}  // namespace tideloop::internal
