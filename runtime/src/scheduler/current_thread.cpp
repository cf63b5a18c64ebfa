// The current-thread scheduler: the same tasks, driven only by the thread
// inside block_on(). No stealing, no worker threads. Wake-ups from the driving
// thread go to a plain deque; from other threads to an injector plus an
// unpark of the driver.
#include <deque>

#include "io/event_driver.hpp"  // [time/io]
#include "scheduler/injector.hpp"
#include "scheduler/owned_tasks.hpp"
#include "scheduler/parker.hpp"
#include "tideloop/internal/annotated_mutex.hpp"
#include "tideloop/runtime.hpp"

namespace tideloop::internal {

std::shared_ptr<RuntimeCore> adopt_core(RuntimeCore* core);

namespace {

class CurrentThread;
thread_local CurrentThread* tl_driver = nullptr;

// A block_on root here: wake-ups set a flag and unpark the driver.
class RootScheduler final : public Scheduler {
 public:
  // [time/io] With a driver the runtime sleeps in it, so wake it there.
  RootScheduler(Parker* p, Driver* d) : parker_(p), driver_(d) {}
  void schedule(TaskHeader*) override { notify(); }
  void yield_task(TaskHeader*) override { notify(); }
  bool release(TaskHeader*) override { return false; }
  bool take_notified() noexcept { return notified_.exchange(false, std::memory_order_acquire); }

 private:
  void notify() noexcept {
    // safety: the parker belongs to the runtime, which outlives this call.
    Parker* p = parker_;
    Driver* d = driver_;
    notified_.store(true, std::memory_order_release);
    if (d) {
      d->unpark();
    } else {
      p->unpark();
    }
  }
  Parker* parker_;
  Driver* driver_;
  std::atomic<bool> notified_{false};
};

class CurrentThread final : public RuntimeCore {
 public:
  explicit CurrentThread(RuntimeConfig cfg) : cfg_(std::move(cfg)) {
    // [time/io] timers, reactor and blocking pool (runtime/src/io/event_driver.hpp)
    driver_ = make_event_driver(this, cfg_, 1);
  }
  ~CurrentThread() override {
    shutdown();
    remote_.drain_and_drop();  // late wake-ups, see ~MultiThread
  }

  void schedule(TaskHeader* t) override {
    if (tl_driver == this) {
      local_.push_back(t);
    } else if (remote_.push(t)) {
      wake_driver();
    }
  }
  void yield_task(TaskHeader* t) override { schedule(t); }
  bool release(TaskHeader* t) override { return owned_.remove(t); }

  void spawn_task(TaskHeader* t) override {
    spawned_.fetch_add(1, std::memory_order_relaxed);
    if (!owned_.bind(t, 0)) {
      reject_task(t);
      return;
    }
    schedule(t);
  }

  void block_on(TaskHeader* root) override {
    LockGuard<StdMutex> drive(drive_mu_);  // one driver at a time
    RootScheduler rs(&parker_, driver_.get());
    root->scheduler = &rs;
    CurrentThread* saved_driver = tl_driver;
    RuntimeCore* saved_rt = tl_runtime;
    tl_driver = this;
    tl_runtime = this;
    bool root_ready = true;
    std::uint32_t tick = 0;
    for (;;) {
      if (root_ready || rs.take_notified()) {
        root_ready = false;
        tl_budget = kInitialBudget;
        run_task(root);
        polls_.fetch_add(1, std::memory_order_relaxed);
        if (is_complete(root)) break;
      }
      // A bounded batch, then look at the root again.
      int ran = 0;
      for (; ran < static_cast<int>(cfg_.event_interval); ++ran) {
        ++tick;
        TaskHeader* t = nullptr;
        if (tick % cfg_.global_queue_interval == 0) t = remote_.pop();
        if (!t && !local_.empty()) {
          t = local_.front();
          local_.pop_front();
        }
        if (!t) t = remote_.pop();
        if (!t) break;
        tl_budget = kInitialBudget;
        run_task(t);
        if (rs.take_notified()) {
          root_ready = true;
          ++ran;
          break;
        }
      }
      polls_.fetch_add(static_cast<std::uint64_t>(ran), std::memory_order_relaxed);
      if (ran == 0 && !root_ready && local_.empty() && remote_.is_empty()) {
        parks_.fetch_add(1, std::memory_order_relaxed);
        // [time/io] idle: sleep in the driver (timers bound the wait)
        if (driver_) {
          driver_->park(std::nullopt);
        } else {
          parker_.park();
        }
      } else if (driver_ && ran == static_cast<int>(cfg_.event_interval)) {
        // [time/io] busy: let timers and I/O progress between batches
        driver_->park(std::chrono::nanoseconds(0));
      }
    }
    tl_driver = saved_driver;
    tl_runtime = saved_rt;
  }

  void shutdown() override {
    LockGuard<StdRecursiveMutex> g(shutdown_mu_);
    if (shutdown_started_) return;
    shutdown_started_ = true;
    remote_.close();
    {
      LockGuard<StdMutex> drive(drive_mu_);
      while (!local_.empty()) {
        drop_notified(local_.front());
        local_.pop_front();
      }
      // [time/io] Before the tasks are cancelled, as in the multi-thread
      // runtime: the blocking pool waits for its running jobs, which may use
      // a frame they were handed by reference (co_await spawn_blocking([&]
      // {...})); cancelling first destroyed such frames under running jobs
      // (tests/reliability/native_shutdown_load_test).
      if (driver_) driver_->shutdown();
      while (!local_.empty()) {
        drop_notified(local_.front());
        local_.pop_front();
      }
    }
    owned_.close_and_shutdown_all();
    {
      // Cancelled tasks' destructors may have woken others.
      LockGuard<StdMutex> drive(drive_mu_);
      while (!local_.empty()) {
        drop_notified(local_.front());
        local_.pop_front();
      }
    }
    remote_.drain_and_drop();
  }

  RuntimeMetrics metrics() const override {
    RuntimeMetrics m;
    m.workers = 0;
    m.spawned = spawned_.load(std::memory_order_relaxed);
    m.polls = polls_.load(std::memory_order_relaxed);
    m.parks = parks_.load(std::memory_order_relaxed);
    m.live_tasks = const_cast<OwnedTasks&>(owned_).live();
    return m;
  }

 private:
  // [time/io] wakes the block_on thread wherever it sleeps
  void wake_driver() {
    if (driver_) {
      driver_->unpark();
    } else {
      parker_.unpark();
    }
  }

  const RuntimeConfig cfg_;
  OwnedTasks owned_;
  Injector remote_;
  std::deque<TaskHeader*> local_;  // driver thread only (or under drive_mu_)
  Parker parker_;
  StdMutex drive_mu_;
  std::unique_ptr<EventDriver> driver_;  // [time/io] set in the constructor
  StdRecursiveMutex shutdown_mu_;
  bool shutdown_started_ ABSL_GUARDED_BY(shutdown_mu_) = false;
  std::atomic<std::uint64_t> spawned_{0}, polls_{0}, parks_{0};
};

}  // namespace

std::shared_ptr<RuntimeCore> make_current_thread(RuntimeConfig cfg) {
  return adopt_core(new CurrentThread(std::move(cfg)));
}

}  // namespace tideloop::internal
