// EventDriver: see event_driver.hpp.
#include "io/event_driver.hpp"

#include <algorithm>
#include <stdexcept>

#include "io/reactor.hpp"
#include "scheduler/affinity.hpp"
#include "tideloop/spawn_blocking.hpp"
#include "time/time_driver.hpp"

namespace tideloop::internal {

namespace {
std::int64_t now_ns() noexcept {
  return to_ns(Clock::now());
}

BlockingPool::Options pool_options(const RuntimeConfig& cfg) {
  BlockingPool::Options o;
  if (cfg.max_blocking_threads) o.max_threads = cfg.max_blocking_threads;
  o.thread_name = cfg.thread_name + "-blk";
  return o;
}

// A pool job owning one notification of a blocking task. Run: polls the
// task (runs the function). Destroyed unrun (pool shut down): cancels it,
// so its JoinHandle reports TaskCancelled instead of waiting forever.
class BlockingJob {
 public:
  BlockingJob(RuntimeCore* core, TaskHeader* t) noexcept : core_(core), t_(t) {}
  BlockingJob(BlockingJob&& o) noexcept : core_(o.core_), t_(std::exchange(o.t_, nullptr)) {}
  BlockingJob(const BlockingJob&) = delete;
  BlockingJob& operator=(const BlockingJob&) = delete;
  ~BlockingJob() {
    if (TaskHeader* t = std::exchange(t_, nullptr)) {
      abort_task(t);  // NOTIFIED is set (we hold the notification): flags only
      run_task(t);    // sees CANCELLED: destroys the function, completes
    }
  }
  void operator()() && {
    TaskHeader* t = std::exchange(t_, nullptr);
    // Inside the function, Handle::current() and spawn() target the runtime.
    RuntimeCore* saved = tl_runtime;
    tl_runtime = core_;
    tl_budget = kInitialBudget;
    run_task(t);
    tl_runtime = saved;
  }

 private:
  RuntimeCore* core_;
  TaskHeader* t_;
};
}  // namespace

void BlockingScheduler::submit(TaskHeader* t) {
  // On failure the job was destroyed unrun, which cancelled the task.
  (void)pool_->submit(BlockingJob(core_, t));
}

EventDriver::EventDriver(RuntimeCore* core, const RuntimeConfig& cfg, std::size_t workers)
    : pool_(pool_options(cfg)), blocking_(core, &pool_) {
  if (cfg.enable_io) reactor_ = std::make_shared<Reactor>(workers);
  if (cfg.enable_time) time_ = std::make_unique<TimeDriver>(workers, [this] { unpark(); });
}

EventDriver::~EventDriver() = default;

namespace {
// The socket set of the calling worker (a current-thread runtime has one).
std::size_t my_shard() noexcept {
  return tl_worker_index >= 0 ? static_cast<std::size_t>(tl_worker_index) : 0;
}
}  // namespace

void EventDriver::sleep(std::optional<std::chrono::nanoseconds> timeout) {
  if (reactor_) {
    const std::size_t k = my_shard();
    if ((timeout && timeout->count() <= 0) || !reactor_->begin_sleep(k)) {
      // Polling, or our own set had events: no sleep, but look at the
      // sleeping workers' sets too.
      reactor_->poll_shard(k);
      reactor_->park(std::chrono::nanoseconds(0));
      return;
    }
    reactor_->park(timeout);
    reactor_->end_sleep(k);
  } else if (!timeout) {
    parker_.park();
  } else {
    parker_.park_timeout(*timeout);
  }
}

void EventDriver::park(std::optional<std::chrono::nanoseconds> timeout) {
  if (!time_) {
    sleep(timeout);
    return;
  }
  std::int64_t now = now_ns();
  // Timers that are already due first: if they woke tasks, do not block.
  if (time_->process(now) > 0) timeout = std::chrono::nanoseconds(0);
  if (timeout && timeout->count() <= 0) {
    sleep(std::chrono::nanoseconds(0));
  } else {
    std::int64_t until = kNever;
    if (timeout) until = now + std::min<std::int64_t>(timeout->count(), kNever - now);
    until = time_->begin_sleep(until);
    std::optional<std::chrono::nanoseconds> t;
    if (until != kNever) t = std::chrono::nanoseconds(std::max<std::int64_t>(0, until - now));
    sleep(t);
    time_->end_sleep();
    now = now_ns();
  }
  time_->process(now);
}

void EventDriver::unpark() {
  if (reactor_) {
    reactor_->unpark();
  } else {
    parker_.unpark();
  }
}

void EventDriver::poll_io() {
  if (reactor_) reactor_->poll_shard(my_shard());
}

bool EventDriver::begin_sleep() {
  return !reactor_ || reactor_->begin_sleep(my_shard());
}

void EventDriver::end_sleep() {
  if (reactor_) reactor_->end_sleep(my_shard());
}

void EventDriver::shutdown() {
  if (time_) time_->shutdown();
  if (reactor_) reactor_->shutdown();
  // Lets running blocking jobs finish; queued ones are cancelled.
  pool_.shutdown();
}

std::unique_ptr<EventDriver> make_event_driver(RuntimeCore* core, const RuntimeConfig& cfg,
                                               std::size_t workers) {
  auto d = std::make_unique<EventDriver>(core, cfg, workers);
  core->event_driver = d.get();
  return d;
}

// --- lookups used by the leaf futures ---

namespace {
EventDriver& current_driver(const char* what) {
  RuntimeCore* core = tl_runtime;
  if (core == nullptr || core->event_driver == nullptr)
    throw std::logic_error(std::string("tideloop: ") + what + " used outside a tideloop runtime");
  return *core->event_driver;
}
}  // namespace

TimeDriver& current_time_driver() {
  EventDriver& d = current_driver("a timer");
  if (d.time() == nullptr)
    throw std::logic_error("tideloop: timers need a runtime with time enabled");
  return *d.time();
}

const std::shared_ptr<Reactor>& current_reactor() {
  EventDriver& d = current_driver("an I/O object");
  if (!d.reactor()) throw std::logic_error("tideloop: I/O needs a runtime with I/O enabled");
  return d.reactor();
}

Scheduler* blocking_scheduler(RuntimeCore* core) {
  if (core->event_driver == nullptr)
    throw std::logic_error("tideloop: spawn_blocking() needs a runtime with a driver");
  return core->event_driver->blocking();
}

void blocking_spawn(RuntimeCore* core, TaskHeader* t) {
  // No reference on the core: runtime shutdown joins the pool (running jobs
  // finish, queued ones are cancelled) before the core can be freed, so no
  // blocking task touches its scheduler afterwards.
  core->event_driver->blocking()->submit(t);
}

}  // namespace tideloop::internal
