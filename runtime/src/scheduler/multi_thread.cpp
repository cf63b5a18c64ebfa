// The multi-threaded work-stealing scheduler. How the pieces fit:
//  - each Worker owns a LocalQueue (steal-half), a LIFO slot and a Parker;
//  - spawns/wakes on a worker go to its LIFO slot (the previous occupant to
//    the queue), from elsewhere to the Injector;
//  - a worker looks at the injector first every `global_queue_interval`
//    ticks, runs at most kMaxLifoPollsPerTick LIFO tasks in a row and counts
//    each as a tick, so neither remote spawns nor queued tasks starve behind
//    a task ping-pong or a self-respawning chain (Tokio 1.24 starves there);
//  - an idle worker searches (steals) before it parks; Idle limits searchers
//    and decides whom to wake.
#include <pthread.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>
#include <vector>

#include "io/event_driver.hpp"  // [time/io]
#include "scheduler/affinity.hpp"
#include "scheduler/block_on.hpp"
#include "scheduler/driver.hpp"
#include "scheduler/idle.hpp"
#include "scheduler/injector.hpp"
#include "scheduler/local_queue.hpp"
#include "scheduler/owned_tasks.hpp"
#include "scheduler/parker.hpp"
#include "scheduler/spinlock.hpp"
#include "tideloop/internal/annotated_mutex.hpp"
#include "tideloop/runtime.hpp"

namespace tideloop::internal {

std::shared_ptr<RuntimeCore> adopt_core(RuntimeCore* core);

namespace {

// A LIFO chain longer than this yields to the run queue: the LIFO slot speeds
// up message passing but must not let two tasks monopolise a worker.
constexpr int kMaxLifoPollsPerTick = 3;
// How many tasks one injector visit moves to the local queue at most.
constexpr std::size_t kInjectorBatch = kLocalQueueCapacity / 2;

class MultiThread;

struct alignas(64) Worker {
  MultiThread* rt = nullptr;
  std::size_t index = 0;
  LocalQueue queue;
  TaskHeader* lifo = nullptr;  // owner only
  // Tasks that yielded (yield_now, budget spent): held back until this worker
  // has looked at everything else once (local queue, injector, steals), so a
  // crowd of yielding tasks cannot starve remote work. Owner only.
  std::vector<TaskHeader*> deferred;
  Parker parker;
  // True while this worker sleeps in the driver instead of on its futex.
  std::atomic<bool> on_driver{false};

  bool is_searching = false;  // owner only
  bool parking = false;       // owner only
  std::uint32_t tick = 0;     // owner only
  // Ticks of the last injector check / maintenance (owner only). Compared by
  // distance, not `tick % interval == 0`: LIFO polls advance `tick` by more
  // than one per loop turn, so a modulo test can skip zero forever (e.g. an
  // interval of 4 against a 4-tick LIFO chain) and starve the injector.
  std::uint32_t last_global_tick = 0;
  std::uint32_t last_event_tick = 0;
  std::uint32_t rng = 0;  // owner only
  std::thread thread;
  // Written by the owner, read by metrics().
  std::atomic<std::uint64_t> polls{0}, steals{0}, stolen{0}, parks{0}, lifo_polls{0}, overflows{0},
      injector_pops{0}, spawned{0};

  std::uint32_t next_rand() {
    // xorshift32: cheap, good enough to spread steal victims.
    std::uint32_t x = rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    rng = x;
    return x;
  }
};

thread_local Worker* tl_worker = nullptr;

class MultiThread final : public RuntimeCore {
 public:
  explicit MultiThread(RuntimeConfig cfg)
      : cfg_(std::move(cfg)),
        n_(cfg_.worker_threads ? cfg_.worker_threads
                               : std::max(1u, std::thread::hardware_concurrency())),
        idle_(n_),
        owned_(n_) {
    // [time/io] timers, reactor and blocking pool (runtime/src/io/event_driver.hpp)
    driver_ = make_event_driver(this, cfg_, n_);
  }

  void start() {
    workers_.reserve(n_);
    for (std::size_t i = 0; i < n_; ++i) {
      auto w = std::make_unique<Worker>();
      w->rt = this;
      w->index = i;
      w->rng = static_cast<std::uint32_t>(0x9E3779B9u * (i + 1));
      workers_.push_back(std::move(w));
    }
    for (auto& w : workers_) {
      Worker* wp = w.get();
      w->thread = std::thread([this, wp] { worker_main(wp); });
    }
  }

  ~MultiThread() override {
    shutdown();
    // Pushes that raced with shutdown (late wake-ups) landed after its drain;
    // wake quiescence has been waited for, so nothing pushes any more.
    injector_.drain_and_drop();
  }

  // --- Scheduler ---
  void schedule(TaskHeader* t) override {
    Worker* w = tl_worker;
    if (w != nullptr && w->rt == this) {
      schedule_local(w, t, /*is_yield=*/false);
    } else {
      schedule_remote(t);
    }
  }
  void yield_task(TaskHeader* t) override {
    Worker* w = tl_worker;
    if (w != nullptr && w->rt == this) {
      w->deferred.push_back(t);
    } else {
      schedule_remote(t);
    }
  }
  bool release(TaskHeader* t) override {
    Worker* w = tl_worker;
    const long here = w != nullptr && w->rt == this ? static_cast<long>(w->index) : -1;
    switch (owned_.remove(t, here)) {
      case OwnedTasks::Removed::kYes:
        return true;
      case OwnedTasks::Removed::kDeferredWakeOwner:
        // The owner may be asleep with many finished tasks to free.
        unpark_worker(workers_[t->owner_shard - OwnedTasks::kLocalBase].get());
        return false;
      default:
        return false;
    }
  }

  // --- RuntimeCore ---
  void spawn_task(TaskHeader* t) override {
    if (Worker* w = tl_worker; w != nullptr && w->rt == this) {
      bump(w->spawned);
      owned_.bind_local(t, w->index);  // no lock: see owned_tasks.hpp
      schedule_local(w, t, /*is_yield=*/false);
      if (w->lifo == t) tl_fresh_task = t;  // only we can reach it (task_core.hpp)
      return;
    }
    spawned_.fetch_add(1, std::memory_order_relaxed);
    const std::size_t shard =
        OwnedTasks::kShards - 1 - (remote_shard_.fetch_add(1, std::memory_order_relaxed) & 15);
    if (!owned_.bind(t, shard)) {
      reject_task(t);
      return;
    }
    schedule_remote(t);
  }

  void block_on(TaskHeader* root) override {
    SharedParker* p = current_thread_parker();
    BlockOnScheduler drv(p);
    root->scheduler = &drv;
    RuntimeCore* saved_rt = tl_runtime;
    tl_runtime = this;
    tl_budget = kInitialBudget;
    run_task(root);
    while (!is_complete(root)) {
      if (drv.take_notified()) {
        tl_budget = kInitialBudget;
        run_task(root);
        continue;
      }
      p->parker.park();
    }
    tl_runtime = saved_rt;
  }

  void shutdown() override {
    // Recursive: a task destroyed during shutdown may drop the last Handle,
    // which calls shutdown() again on this thread. Other threads wait here.
    LockGuard<StdRecursiveMutex> g(shutdown_mu_);
    if (shutdown_started_) return;
    shutdown_started_ = true;
    if (tl_worker != nullptr && tl_worker->rt == this) {
      std::fprintf(stderr, "tideloop: Runtime shut down from one of its own workers\n");
      std::abort();
    }
    injector_.close();
    for (auto& w : workers_) unpark_worker(w.get());
    for (auto& w : workers_)
      if (w->thread.joinable()) w->thread.join();
    if (driver_) driver_->shutdown();
    // No worker runs now: every live task is idle and gets cancelled here.
    owned_.close_and_shutdown_all();
    injector_.drain_and_drop();
  }

  RuntimeMetrics metrics() const override {
    RuntimeMetrics m;
    m.workers = n_;
    m.spawned = spawned_.load(std::memory_order_relaxed);
    m.unparks = unparks_.load(std::memory_order_relaxed);
    for (const auto& w : workers_) {
      m.polls += w->polls.load(std::memory_order_relaxed);
      m.spawned += w->spawned.load(std::memory_order_relaxed);
      m.steals += w->steals.load(std::memory_order_relaxed);
      m.stolen_tasks += w->stolen.load(std::memory_order_relaxed);
      m.parks += w->parks.load(std::memory_order_relaxed);
      m.lifo_polls += w->lifo_polls.load(std::memory_order_relaxed);
      m.overflows += w->overflows.load(std::memory_order_relaxed);
      m.injector_pops += w->injector_pops.load(std::memory_order_relaxed);
    }
    m.live_tasks = const_cast<OwnedTasks&>(owned_).live();
    return m;
  }

 private:
  static void bump(std::atomic<std::uint64_t>& c, std::uint64_t n = 1) {
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }

  void schedule_local(Worker* w, TaskHeader* t, bool is_yield) {
    tl_fresh_task = nullptr;  // the slot's occupant may move to the queue
    bool should_notify;
    if (is_yield || !cfg_.lifo_slot) {
      push_back(w, t);
      should_notify = true;
    } else {
      TaskHeader* prev = w->lifo;
      w->lifo = t;
      should_notify = prev != nullptr;
      if (prev) push_back(w, prev);
    }
    // While parking (I/O dispatch) the worker will run them itself.
    if (should_notify && !w->parking) notify_parked_local();
  }

  void push_back(Worker* w, TaskHeader* t) {
    if (w->queue.push_back(t, injector_)) bump(w->overflows);
  }

  void schedule_remote(TaskHeader* t) {
    if (injector_.push(t)) notify_parked();
  }

  // After a push to our own queue: wake a sleeper to steal, if there is one.
  // The pusher runs its queue itself, so a missed wake-up costs parallelism
  // for a moment, never liveness; that allows a plain load first instead of
  // notify_parked()'s RMW on the shared idle word, which drains the store
  // buffer full of the new task's initialising stores (measured: 77% of
  // spawn_task's cycles on spawn_many_local/1). With one worker nobody
  // else could run it at all.
  void notify_parked_local() {
    if (n_ == 1 || !idle_.maybe_sleeping()) return;
    notify_parked();
  }

  void notify_parked() {
    const long i = idle_.worker_to_notify();
    if (i >= 0) {
      unparks_.fetch_add(1, std::memory_order_relaxed);
      unpark_worker(workers_[static_cast<std::size_t>(i)].get());
    }
  }

  // Wakes w wherever it sleeps. Dekker pairing with park_worker(): the
  // futex token is set before on_driver is read, and the worker publishes
  // on_driver before it reads the token, so one side always sees the other.
  void unpark_worker(Worker* w) {
    w->parker.unpark();
    if (driver_ && w->on_driver.load(std::memory_order_seq_cst)) driver_->unpark();
  }

  // Sleeps until unparked: in the driver if it is free, else on the futex.
  void park_worker(Worker* w) {
    if (driver_ && driver_mu_.try_lock()) {
      w->on_driver.store(true, std::memory_order_seq_cst);
      if (!w->parker.is_notified()) driver_->park(std::nullopt);
      w->on_driver.store(false, std::memory_order_seq_cst);
      driver_mu_.unlock();
      w->parker.park_timeout(std::chrono::nanoseconds(0));  // consume a token
      // [time/io] Tasks the driver woke (timers, I/O) were scheduled here
      // without notifying (w->parking): move a LIFO-slot task to the queue so
      // park() sees it, and let a sleeping worker help when there is more
      // than one (Tokio's should_notify_others after a driver park).
      if (TaskHeader* l = std::exchange(w->lifo, nullptr)) push_back(w, l);
      if (w->queue.len() > 1) notify_parked();
      return;
    }
    if (!driver_) {
      w->parker.park();
      return;
    }
    // Our descriptors are watched by the driver while we sleep here.
    if (driver_->begin_sleep()) w->parker.park();
    driver_->end_sleep();
    if (TaskHeader* l = std::exchange(w->lifo, nullptr)) push_back(w, l);
    if (w->queue.len() > 1) notify_parked();
  }

  // Every event_interval ticks: let timers and I/O make progress even when
  // the run queues never empty.
  void maintenance(Worker* w) {
    owned_.drain_removed(w->index);
    // Yielded tasks go back behind the queued work here too (as Tokio's
    // maintenance wakes its defer list), not only when the worker runs dry:
    // under sustained load (a ping-pong that never empties the queue) a task
    // that called yield_now() or spent its budget never ran again.
    if (!w->deferred.empty()) requeue_deferred(w);
    if (!driver_) return;
    if (driver_mu_.try_lock()) {
      driver_->park(std::chrono::nanoseconds(0));  // our set, timers, sleepers' sets
      driver_mu_.unlock();
    } else {
      driver_->poll_io();
    }
  }

  void notify_if_work_pending() {
    for (auto& w : workers_) {
      if (!w->queue.is_empty()) {
        notify_parked();
        return;
      }
    }
    if (!injector_.is_empty()) notify_parked();
  }

  void worker_main(Worker* w) {
    tl_worker = w;
    tl_worker_index = static_cast<int>(w->index);
    tl_runtime = this;
    {
      std::string name = cfg_.thread_name + "-" + std::to_string(w->index);
      if (name.size() > 15) name.resize(15);
      pthread_setname_np(pthread_self(), name.c_str());
    }
    if (cfg_.on_thread_start) cfg_.on_thread_start();
    run(w);
    // Drop whatever is still queued here; shutdown() cancels the tasks.
    if (w->lifo) drop_notified(std::exchange(w->lifo, nullptr));
    for (TaskHeader* t : w->deferred) drop_notified(t);
    w->deferred.clear();
    while (TaskHeader* t = w->queue.pop()) drop_notified(t);
    if (cfg_.on_thread_stop) cfg_.on_thread_stop();
    tl_runtime = nullptr;
    tl_worker_index = kNoHome;
    tl_worker = nullptr;
  }

  void run(Worker* w) {
    while (!injector_.is_closed()) {
      ++w->tick;
      if (w->tick - w->last_event_tick >= cfg_.event_interval) {
        w->last_event_tick = w->tick;
        maintenance(w);
      }
      if (TaskHeader* t = next_task(w)) {
        run_task_on(w, t);
        continue;
      }
      // Our own yielders before stealing: a worker with deferred tasks is
      // not idle, and stealing then only bounces tasks (and their cache
      // lines) between workers every round (measured: yield_many/2 ran each
      // yield at twice the single-worker cost).
      if (!w->deferred.empty()) {
        requeue_deferred(w);
        continue;
      }
      // Out of tasks: ready I/O first (our own connections, most likely),
      // rather than stealing or sleeping while the driver's holder sleeps.
      if (driver_) {
        driver_->poll_io();
        if (w->lifo != nullptr || w->queue.has_tasks()) continue;
      }
      if (TaskHeader* t = steal_work(w)) {
        run_task_on(w, t);
        continue;
      }
      if (linger(w)) continue;
      park(w);
    }
  }

  void run_task_on(Worker* w, TaskHeader* t) {
    transition_from_searching(w);
    tl_budget = kInitialBudget;
    run_task(t);
    std::uint64_t polls = 1;
    int lifo_polls = 0;
    while (TaskHeader* l = w->lifo) {
      w->lifo = nullptr;
      if (tl_budget == 0 || lifo_polls >= kMaxLifoPollsPerTick) {
        // Out of budget: queue it behind the others. Wake a sleeper to steal
        // only if there is more than this task: we run it next ourselves,
        // and waking another worker for a lone task (a spawn chain) only
        // moves the chain between cores (measured: chained_spawn/2 woke a
        // worker 12-24 times per 1,000 spawns).
        push_back(w, l);
        if (w->queue.len() > 1) notify_parked_local();
        break;
      }
      ++lifo_polls;
      ++w->tick;
      run_task(l);
      ++polls;
    }
    bump(w->polls, polls);
    if (lifo_polls) bump(w->lifo_polls, static_cast<std::uint64_t>(lifo_polls));
  }

  TaskHeader* next_task(Worker* w) {
    if (w->tick - w->last_global_tick >= cfg_.global_queue_interval) {
      w->last_global_tick = w->tick;
      // Fairness: remote work first now and then. Take a batch, not one task:
      // with busy local tasks, one task per interval lets a remote burst
      // trickle in at interval x (poll time).
      if (TaskHeader* t = pop_injector_batch(w)) return t;
    }
    if (TaskHeader* t = std::exchange(w->lifo, nullptr)) return t;
    // With one worker nobody steals (steal_work only visits other workers).
    if (TaskHeader* t = n_ == 1 ? w->queue.pop_unshared() : w->queue.pop()) return t;
    return pop_injector_batch(w);
  }

  // Takes a batch from the injector: one to run now, the rest into the local
  // queue (where other workers can steal them).
  TaskHeader* pop_injector_batch(Worker* w) {
    if (injector_.is_empty()) return nullptr;
    const std::size_t room = kLocalQueueCapacity - w->queue.len();
    std::size_t want = injector_.len() / n_ + 1;
    if (want > kInjectorBatch) want = kInjectorBatch;
    if (want > room / 2 + 1) want = room / 2 + 1;
    TaskHeader* batch[kInjectorBatch + 1];
    const std::size_t got = injector_.pop_n(batch, want);
    if (got == 0) return nullptr;
    bump(w->injector_pops, got);
    for (std::size_t i = 1; i < got; ++i) push_back(w, batch[i]);
    return batch[0];
  }

  TaskHeader* steal_work(Worker* w) {
    if (!w->is_searching) {
      if (!idle_.transition_worker_to_searching()) return nullptr;
      w->is_searching = true;
    }
    const std::size_t start = n_ > 1 ? w->next_rand() % n_ : 0;
    for (std::size_t i = 0; i < n_; ++i) {
      const std::size_t idx = (start + i) % n_;
      if (idx == w->index) continue;
      std::uint32_t moved = 0;
      if (TaskHeader* t = workers_[idx]->queue.steal_into(w->queue, &moved)) {
        bump(w->steals);
        bump(w->stolen, moved);
        return t;
      }
    }
    return pop_injector_batch(w);
  }

  void requeue_deferred(Worker* w) {
    for (TaskHeader* t : w->deferred) push_back(w, t);
    w->deferred.clear();
    if (w->queue.len() > 1) notify_parked_local();
  }

  void transition_from_searching(Worker* w) {
    if (!w->is_searching) return;
    w->is_searching = false;
    // The last searcher found work: wake another to look for more, if there
    // is more to see. A lone task (one remote spawn starting a chain) would
    // only pull the other worker in to steal the chain's next link and move
    // it between cores. Later pushes wake sleepers (nobody searches now).
    if (idle_.transition_worker_from_searching() && (w->queue.has_tasks() || !injector_.is_empty()))
      notify_parked();
  }

  // Builder::idle_linger: the last awake worker, out of work, keeps looking
  // before it sleeps. Only one worker, only when all others sleep, so it never
  // takes a core from a busy worker. It looks only at the injector and its
  // own queue (stealing a lone task would move a spawn chain between cores),
  // and it still counts as searching, so a remote push wakes nobody.
  bool linger(Worker* w) {
    if (cfg_.idle_linger.count() <= 0 || !w->is_searching || !idle_.others_asleep()) return false;
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    const auto until = start + cfg_.idle_linger;
    for (unsigned i = 1;; ++i) {
      if (w->queue.has_tasks() || w->lifo != nullptr) return true;
      if (!injector_.is_empty()) {
        // Coalesce: a producer may be pushing a burst under the injector
        // lock; taking it task by task makes both sides slow. Wait until
        // the length holds still for ~2 us, at most 10 us.
        const auto seen = Clock::now();
        std::size_t n = injector_.len();
        auto stable_since = seen;
        for (;;) {
          for (int j = 0; j < 32; ++j) cpu_relax();
          const auto now = Clock::now();
          const std::size_t m = injector_.len();
          if (m != n) {
            n = m;
            stable_since = now;
          }
          if (now - stable_since >= std::chrono::microseconds(2) ||
              now - seen >= std::chrono::microseconds(10))
            return true;
        }
      }
      if (injector_.is_closed()) return false;
      if ((i & 63) == 0) {
        if (Clock::now() >= until) return false;
        if (driver_) {
          driver_->poll_io();
          if (w->lifo != nullptr || w->queue.has_tasks()) return true;
        }
      }
      cpu_relax();
    }
  }

  void park(Worker* w) {
    if (w->lifo != nullptr || w->queue.has_tasks()) return;
    idle_.transition_worker_to_parked(w->index, w->is_searching);
    w->is_searching = false;
    // Every parking worker (not only the last searcher, as in Tokio) looks
    // once more: a push that happened while we still counted as unparked did
    // not wake anyone, and its task would wait until its owner next looks at
    // its queue (seconds, if the owner runs a long task).
    notify_if_work_pending();
    w->parking = true;
    while (!injector_.is_closed()) {
      owned_.drain_removed(w->index);
      bump(w->parks);
      park_worker(w);
      if (w->queue.has_tasks()) {
        w->is_searching = !idle_.unpark_worker_by_id(w->index);
        break;
      }
      if (idle_.is_parked(w->index)) continue;  // spurious: still a sleeper
      w->is_searching = true;                   // woken by notify_parked
      break;
    }
    w->parking = false;
  }

  const RuntimeConfig cfg_;
  const std::size_t n_;
  Idle idle_;
  Injector injector_;
  OwnedTasks owned_;
  std::vector<std::unique_ptr<Worker>> workers_;
  // Time and I/O; null until a driver is installed (see driver.hpp).
  std::unique_ptr<Driver> driver_;
  StdMutex driver_mu_;  // held by the worker inside driver_->park()
  std::atomic<std::uint64_t> spawned_{0};
  std::atomic<std::uint64_t> unparks_{0};
  // Spreads remote spawns over a few shards (racy increments are fine).
  // Spawns from outside any worker (block_on threads, foreign threads) pick
  // an owner shard round-robin; those threads run concurrently, hence atomic.
  std::atomic<std::uint32_t> remote_shard_{0};
  StdRecursiveMutex shutdown_mu_;
  bool shutdown_started_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

}  // namespace

std::shared_ptr<RuntimeCore> make_multi_thread(RuntimeConfig cfg) {
  auto* mt = new MultiThread(std::move(cfg));
  auto sp = adopt_core(mt);
  mt->start();
  return sp;
}

}  // namespace tideloop::internal

int tideloop::current_worker_index() noexcept {
  return tideloop::internal::tl_worker_index;
}
