// Runtime: owns the scheduler threads and everything spawned on them.
//
//   auto rt = tideloop::Runtime::Builder::multi_thread().worker_threads(2).build();
//   int v = rt.block_on(main_task());           // runs main_task on this thread
//   auto h = rt.spawn(other_task());            // from anywhere, any thread
//
// Two flavours share the task machinery:
//  - multi-thread: N workers with work stealing (see runtime/src/scheduler/);
//  - current-thread: tasks run only on the thread inside block_on(), no
//    stealing and no worker threads (tests, embedding, one-core programs).
//
// Inside a task, tideloop::spawn() targets the runtime the task runs on;
// tideloop::yield_now() lets other tasks run.
//
// Shutdown (shutdown() or the destructor) never hangs and loses nothing: every
// task still alive is cancelled exactly once (its frame's destructors run),
// joiners see TaskCancelled, queued notifications are dropped, threads joined.
// A task that never returns from a single poll (a busy loop without await) is
// the one thing shutdown cannot cut short: it waits for that poll to end.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>

#include "tideloop/join_handle.hpp"
#include "tideloop/task.hpp"

namespace tideloop {

// Counters for tests and benchmarks (relaxed snapshots).
struct RuntimeMetrics {
  std::size_t workers = 0;
  std::uint64_t spawned = 0;
  std::uint64_t polls = 0;
  std::uint64_t steals = 0;  // steal operations that moved tasks
  std::uint64_t stolen_tasks = 0;
  std::uint64_t parks = 0;
  std::uint64_t unparks = 0;  // wake-ups sent to parked workers
  std::uint64_t injector_pops = 0;
  std::uint64_t overflows = 0;  // local-queue overflows to the injector
  std::uint64_t lifo_polls = 0;
  std::uint64_t live_tasks = 0;  // spawned and not yet complete
};

struct RuntimeConfig {
  bool multi_thread = true;
  std::size_t worker_threads = 0;  // 0: one per core
  std::string thread_name = "tl-worker";
  std::function<void()> on_thread_start;
  std::function<void()> on_thread_stop;
  // Every this many polls a worker checks the global injector first, so remote
  // spawns and overflowed tasks cannot starve behind a busy local queue.
  std::uint32_t global_queue_interval = 31;
  // Every this many polls a worker polls timers/I/O without blocking.
  std::uint32_t event_interval = 61;
  bool lifo_slot = true;
  // How long the last awake worker keeps looking for new work before it
  // sleeps. 0 (the default, as Tokio): sleep at once. See Builder::idle_linger.
  std::chrono::microseconds idle_linger{0};
  // [time/io] Timers (tideloop/time.hpp) and the I/O reactor (tideloop/net.hpp,
  // io.hpp). On by default; a runtime without them cannot sleep or do I/O.
  bool enable_time = true;
  bool enable_io = true;
  // [time/io] Upper bound on spawn_blocking / name-resolution threads.
  std::size_t max_blocking_threads = 512;
};

namespace internal {

class EventDriver;  // [time/io] runtime/src/io/event_driver.hpp

// The scheduler side a task is spawned onto (multi-thread or current-thread).
class RuntimeCore : public Scheduler {
 public:
  virtual ~RuntimeCore() = default;
  // Binds t to the owner set and queues its first poll; a closed runtime
  // cancels it instead (its JoinHandle then reports TaskCancelled).
  virtual void spawn_task(TaskHeader* t) = 0;
  // Drives `root` (a block_on root, not owned) on the calling thread until it
  // completes. Current-thread runtimes also run their queue meanwhile.
  virtual void block_on(TaskHeader* root) = 0;
  virtual void shutdown() = 0;
  virtual RuntimeMetrics metrics() const = 0;
  // For Handle::current().
  std::weak_ptr<RuntimeCore> self;
  // [time/io] Timers, reactor and blocking pool of this runtime; installed by
  // the scheduler's constructor, lives as long as the core.
  EventDriver* event_driver = nullptr;
};

// The runtime whose task or block_on is running on this thread.
inline thread_local RuntimeCore* tl_runtime = nullptr;

std::shared_ptr<RuntimeCore> make_multi_thread(RuntimeConfig cfg);
std::shared_ptr<RuntimeCore> make_current_thread(RuntimeConfig cfg);

template <class T>
JoinHandle<T> spawn_on(RuntimeCore* core, Task<T> task) {
  auto h = task.release();
  if (!h) throw std::invalid_argument("tideloop: spawn of an empty Task");
  auto* cell = CoroCell<T>::make(core, h);
  core->spawn_task(cell);
  return JoinHandle<T>(cell);
}

template <class F>
auto spawn_fn_on(RuntimeCore* core, F&& f) {
  using Fn = std::decay_t<F>;
  using R = std::invoke_result_t<Fn&>;
  if constexpr (IsTask<R>::value) {
    // A callable returning a Task (e.g. a coroutine lambda): spawn the task,
    // and keep the callable (its captures) alive inside the coroutine frame.
    struct Owner {
      static R run(Fn fn) { co_return co_await fn(); }
    };
    return spawn_on(core, Owner::run(std::forward<F>(f)));
  } else {
    auto* cell = new FnCell<Fn, R>(core, Fn(std::forward<F>(f)));
    core->spawn_task(cell);
    return JoinHandle<R>(cell);
  }
}

inline RuntimeCore* current_core_or_throw() {
  if (tl_runtime == nullptr)
    throw std::logic_error("tideloop: spawn() called outside a tideloop runtime");
  return tl_runtime;
}

}  // namespace internal

// A cheap, copyable reference to a runtime, usable from any thread to spawn.
// Spawning after the runtime shut down yields a handle that reports
// TaskCancelled.
class Handle {
 public:
  Handle() = default;
  // The runtime of the calling task/worker; throws std::logic_error outside one.
  static Handle current() { return Handle(internal::current_core_or_throw()->self.lock()); }
  template <class T>
  JoinHandle<T> spawn(Task<T> task) const {
    return internal::spawn_on(core_.get(), std::move(task));
  }
  template <class F>
  requires(!internal::IsTask<std::decay_t<F>>::value) &&
      std::is_invocable_v<std::decay_t<F>&> auto spawn(F&& f) const {
    return internal::spawn_fn_on(core_.get(), std::forward<F>(f));
  }
  bool valid() const { return static_cast<bool>(core_); }

 private:
  friend class Runtime;
  explicit Handle(std::shared_ptr<internal::RuntimeCore> c) : core_(std::move(c)) {}
  std::shared_ptr<internal::RuntimeCore> core_;
};

class Runtime {
 public:
  class Builder {
   public:
    static Builder multi_thread() { return Builder(true); }
    static Builder current_thread() { return Builder(false); }
    Builder& worker_threads(std::size_t n) {
      cfg_.worker_threads = n;
      return *this;
    }
    Builder& thread_name(std::string n) {
      cfg_.thread_name = std::move(n);
      return *this;
    }
    Builder& on_thread_start(std::function<void()> f) {
      cfg_.on_thread_start = std::move(f);
      return *this;
    }
    Builder& on_thread_stop(std::function<void()> f) {
      cfg_.on_thread_stop = std::move(f);
      return *this;
    }
    Builder& global_queue_interval(std::uint32_t n) {
      cfg_.global_queue_interval = n ? n : 1;
      return *this;
    }
    Builder& event_interval(std::uint32_t n) {
      cfg_.event_interval = n ? n : 1;
      return *this;
    }
    // Latency for CPU: when every other worker sleeps, the last one to run
    // out of work keeps looking (spinning on the global queue and its own
    // queue, polling its sockets) for up to `d` before it sleeps, so work
    // arriving from outside the runtime (block_on, other threads) meets an
    // awake worker instead of paying a wake-up (~30 us on small VMs). Costs
    // up to `d` of one core per idle episode. Measured with 50 us, see
    // docs/benchmarks.md. Timers due meanwhile fire when it ends (<= d late).
    Builder& idle_linger(std::chrono::microseconds d) {
      cfg_.idle_linger = d;
      return *this;
    }
    Builder& disable_lifo_slot() {
      cfg_.lifo_slot = false;
      return *this;
    }
    // [time/io]
    Builder& enable_time(bool on) {
      cfg_.enable_time = on;
      return *this;
    }
    Builder& enable_io(bool on) {
      cfg_.enable_io = on;
      return *this;
    }
    Builder& max_blocking_threads(std::size_t n) {
      cfg_.max_blocking_threads = n ? n : 1;
      return *this;
    }
    Runtime build() { return Runtime(cfg_); }

   private:
    explicit Builder(bool mt) { cfg_.multi_thread = mt; }
    RuntimeConfig cfg_;
  };

  explicit Runtime(RuntimeConfig cfg)
      : core_(cfg.multi_thread ? internal::make_multi_thread(std::move(cfg))
                               : internal::make_current_thread(std::move(cfg))) {}
  Runtime(Runtime&&) noexcept = default;
  Runtime& operator=(Runtime&& o) noexcept {
    if (this != &o) {
      shutdown();
      core_ = std::move(o.core_);
    }
    return *this;
  }
  ~Runtime() { shutdown(); }

  // Runs `task` to completion on the calling thread and returns its value (or
  // rethrows). Inside it, spawn() targets this runtime. Must not be called
  // from a task of any runtime (it would block a worker).
  template <class T>
  T block_on(Task<T> task) {
    // Check before taking the frame: a rejected task must still be destroyed.
    if (internal::tl_current_task != nullptr)
      throw std::logic_error("tideloop: block_on() called from inside a task");
    auto h = task.release();
    if (!h) throw std::invalid_argument("tideloop: block_on of an empty Task");
    auto* cell = internal::CoroCell<T>::make(core_.get(), h);
    internal::ref_dec(cell);  // a root has no owner-set reference
    JoinHandle<T> jh(cell);
    core_->block_on(cell);
    return jh.join();
  }
  template <class F>
  requires std::is_invocable_v < std::decay_t<F>
  & > &&internal::IsTask<std::invoke_result_t<std::decay_t<F>&>>::value auto block_on(F&& f) {
    using Fn = std::decay_t<F>;
    using R = std::invoke_result_t<Fn&>;
    struct Owner {
      static R run(Fn fn) { co_return co_await fn(); }
    };
    return block_on(Owner::run(std::forward<F>(f)));
  }

  template <class T>
  JoinHandle<T> spawn(Task<T> task) {
    return internal::spawn_on(core_.get(), std::move(task));
  }
  template <class F>
  requires(!internal::IsTask<std::decay_t<F>>::value) &&
      std::is_invocable_v<std::decay_t<F>&> auto spawn(F&& f) {
    return internal::spawn_fn_on(core_.get(), std::forward<F>(f));
  }

  Handle handle() const { return Handle(core_); }
  RuntimeMetrics metrics() const { return core_->metrics(); }

  // Cancels every live task and joins the workers. Idempotent. Must not be
  // called from one of this runtime's own threads.
  void shutdown() {
    if (core_) core_->shutdown();
  }

 private:
  std::shared_ptr<internal::RuntimeCore> core_;
};

// Spawns onto the runtime of the calling task (or block_on). Throws
// std::logic_error outside a runtime.
template <class T>
JoinHandle<T> spawn(Task<T> task) {
  return internal::spawn_on(internal::current_core_or_throw(), std::move(task));
}
template <class F>
requires(!internal::IsTask<std::decay_t<F>>::value) &&
    std::is_invocable_v<std::decay_t<F>&> auto spawn(F&& f) {
  return internal::spawn_fn_on(internal::current_core_or_throw(), std::forward<F>(f));
}

// Lets every other ready task run before this one continues (queued at the
// back of the run queue, never in the LIFO slot).
class YieldNow : public internal::LeafAwaiter<YieldNow> {
 public:
  bool poll_ready(internal::TaskHeader* self) override {
    if (yielded_) return true;
    yielded_ = true;
    internal::notify_self(self);  // re-queued behind other work after this poll
    return false;
  }
  void await_resume() noexcept {}

 private:
  bool yielded_ = false;
};
inline YieldNow yield_now() {
  return {};
}

// The index (0 .. workers-1) of the multi-thread worker running the caller,
// or -1 on any other thread (block_on callers, the blocking pool, foreign
// threads, current-thread runtimes). For metrics, logs and affinity tests.
int current_worker_index() noexcept;

}  // namespace tideloop
