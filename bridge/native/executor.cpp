// The default executor of run_in_executor(None, ...): Python calls on native threads of the
// runtime's BlockingPool instead of a concurrent.futures.ThreadPoolExecutor.
//
// Shape: submit() puts an ExecutorCall into a queue (a mutex held for a push, never while Python
// runs) and, when there are more queued calls than drainers free to take them, wakes a parked
// drainer or hands a new *drainer* job to the BlockingPool. A drainer takes the GIL once and
// runs queued calls back to back (at most kMaxCallsPerGilHold, then it lets the GIL go), so a
// burst of small calls pays one GIL acquisition per batch instead of per call; with the queue
// empty it releases the GIL and parks (see drain()). A call that releases the GIL itself
// (hashlib, I/O) lets another drainer start the next one, so up to min(32, cpus + 4) run in
// parallel, the bound of asyncio's default ThreadPoolExecutor.
//
// Results travel back through the loop's BridgeInbox as the ExecutorCall node itself; the bridge
// thread resolves the asyncio future (futures are not thread-safe). A drainer posts while it still
// holds the GIL, so it can drop a call whose loop has closed meanwhile: no native thread ever
// waits for the GIL just to release a reference.
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <thread>
#include <vector>

#include "loop/loop.hpp"
#include "tideloop/blocking.hpp"
#include "tideloop/internal/annotated_mutex.hpp"

namespace tideloop::bridge {

// The inbox node functions of a finished call (engine/inbox.hpp): resolve its future on the
// bridge thread, or drop it undelivered when the loop closed. GIL held for both.
void executor_deliver(InboxNode* node, LoopObject* loop);
void executor_discard(InboxNode* node);

struct DebugCounters {
  // Entries into Python from native threads, and how many of them lacked the GIL (must stay 0).
  std::atomic<std::uint64_t> native_gil_checks{0};
  std::atomic<std::uint64_t> native_gil_violations{0};
  std::atomic<std::uint64_t> executor_calls{0};
  std::atomic<std::uint64_t> executor_gil_acquisitions{0};
};

DebugCounters& debug_counters() {
  static DebugCounters counters;
  return counters;
}

namespace {

// A drainer that holds the GIL through this many calls lets it go so the bridge can deliver.
constexpr int kMaxCallsPerGilHold = 32;

// Every place where a native thread is about to touch Python objects calls this.
void check_native_thread_holds_gil() {
  auto& c = debug_counters();
  c.native_gil_checks.fetch_add(1, std::memory_order_relaxed);
  if (!PyGILState_Check()) c.native_gil_violations.fetch_add(1, std::memory_order_relaxed);
}

struct ExecutorCall {
  InboxNode node;  // first member: the node pointer is the call pointer
  LoopObject* loop;
  PyObject* func;
  PyObject* args;
  PyObject* future;
  PyObject* result = nullptr;
  PyObject* exc = nullptr;
};

ExecutorCall* call_from_node(InboxNode* n) {
  return reinterpret_cast<ExecutorCall*>(n);
}

// GIL held.
void free_call(ExecutorCall* c) {
  Py_XDECREF(c->func);
  Py_XDECREF(c->args);
  Py_XDECREF(c->future);
  Py_XDECREF(c->result);
  Py_XDECREF(c->exc);
  Py_XDECREF(c->loop);
  delete c;
}

// GIL held, on the bridge thread or (loop closed) on a drainer.
void finish_in_flight(LoopObject* loop) {
  LoopState& st = *loop->st;
  if (--st.executor_in_flight != 0 || st.executor_idle_waiter == nullptr) return;
  PyObject* waiter = st.executor_idle_waiter;
  st.executor_idle_waiter = nullptr;
  if (loop->closed) {  // nobody can await it any more; resolving would call into a closed loop
    Py_DECREF(waiter);
    return;
  }
  PyObject* done = PyObject_CallMethod(waiter, "done", nullptr);
  if (done != nullptr && done == Py_False) {
    PyObject* r = PyObject_CallMethodOneArg(waiter, g.str_set_result, Py_None);
    if (r == nullptr) PyErr_WriteUnraisable(waiter);
    Py_XDECREF(r);
  } else if (done == nullptr) {
    PyErr_WriteUnraisable(waiter);
  }
  Py_XDECREF(done);
  Py_DECREF(waiter);
}

// Thread states of pool threads that have exited, waiting for a thread that holds the GIL to
// delete them. A pool thread that idles out must not take the GIL on its way out: the
// BlockingPool joins finished threads inside submit(), which the bridge calls with the GIL held,
// so an exiting thread waiting for the GIL and the loop thread joining it would wait for each
// other forever (seen: tests/python/test_executor_reaping.py).
class DeadThreadStates {
 public:
  static DeadThreadStates& get() { return *instance(); }

  // fork() child (see after_fork_child): the states listed belong to threads the child does
  // not have, and CPython's own after-fork clean-up frees them; the lock may be held by one of
  // those threads. Start a new list and leave the old one allocated.
  static void reset_in_child() { instance() = new DeadThreadStates(); }

  // Any thread, without the GIL.
  void add(PyThreadState* ts) {
    internal::LockGuard<internal::StdMutex> lock(mu_);
    states_.push_back(ts);
    pending_.store(true, std::memory_order_release);
  }

  // GIL held.
  void delete_all() {
    if (!pending_.load(std::memory_order_acquire)) return;
    std::vector<PyThreadState*> dead;
    {
      internal::LockGuard<internal::StdMutex> lock(mu_);
      dead.swap(states_);
      pending_.store(false, std::memory_order_relaxed);
    }
    for (PyThreadState* ts : dead) {
      PyThreadState_Clear(ts);
      PyThreadState_Delete(ts);
    }
  }

 private:
  static DeadThreadStates*& instance() {
    static DeadThreadStates* d = new DeadThreadStates();  // never destroyed: threads may exit late
    return d;
  }

  internal::StdMutex mu_;
  std::vector<PyThreadState*> states_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> pending_{false};
};

// A pool thread's Python thread state, created at its first Python call and kept until the
// thread exits: PyGILState_Ensure/Release on a thread without a state would create and destroy
// one per call (an allocation and the interpreter's thread-list lock each time).
class PythonThread {
 public:
  static PythonThread& current() {
    thread_local PythonThread t;
    return t;
  }

  void acquire() {
    if (tstate_ == nullptr) {
      PyGILState_Ensure();  // creates the state; the GIL is now held
      tstate_ = PyThreadState_Get();
      return;
    }
    PyEval_RestoreThread(tstate_);
  }

  void release() { PyEval_SaveThread(); }

  ~PythonThread() {
    // Runs when the pool reaps this thread, or when the pool is joined at interpreter exit
    // (atexit, before finalization), always with the state detached (drain() released it).
    // The state is handed over, not deleted here: see DeadThreadStates. Never touch an
    // interpreter that is going away.
    if (tstate_ == nullptr || !Py_IsInitialized() || _Py_IsFinalizing()) return;
    DeadThreadStates::get().add(tstate_);
  }

 private:
  PyThreadState* tstate_ = nullptr;
};

class PyExecutor {
 public:
  PyExecutor()
      : max_drainers_(std::min<std::size_t>(32, std::thread::hardware_concurrency() + 4)) {}

  // GIL held. False when the pool was shut down (interpreter exit) or could not start a thread.
  bool submit(ExecutorCall* c) {
    DeadThreadStates::get().delete_all();
    bool spawn = false;
    {
      internal::LockGuard<internal::StdMutex> lock(mu_);
      if (shut_down_) return false;
      if (!pool_) {
        BlockingPool::Options opts;
        // The bound of asyncio's default ThreadPoolExecutor: min(32, cpus + 4).
        opts.max_threads = max_drainers_;
        opts.thread_name = "tl-py-executor";
        // A pool thread only idles in the pool once its drainer retired (parked for
        // park_timeout() without work): let it go soon after.
        opts.keep_alive = keep_alive_ms_ > 0 ? std::chrono::milliseconds(keep_alive_ms_)
                                             : std::chrono::milliseconds(1000);
        pool_ = std::make_unique<BlockingPool>(opts);
      }
      queue_.push_back(c);
      spawn = ensure_standby();
    }
    if (spawn && !pool_->submit([this]() { drain(); }).ok()) {
      internal::LockGuard<internal::StdMutex> lock(mu_);
      --drainers_;
      if (drainers_ == 0) {
        // Nobody will run it: take it back.
        for (auto it = queue_.begin(); it != queue_.end(); ++it) {
          if (*it == c) {
            queue_.erase(it);
            return false;
          }
        }
      }
    }
    return true;
  }

  // GIL held; releases it while joining the threads.
  void shutdown() {
    std::unique_ptr<BlockingPool> pool;
    {
      internal::LockGuard<internal::StdMutex> lock(mu_);
      shut_down_ = true;
      pool = std::move(pool_);
      cv_.notify_all();  // parked drainers leave
    }
    if (pool) {
      PyThreadState* ts = PyEval_SaveThread();  // running jobs need the GIL to finish
      pool->shutdown();
      PyEval_RestoreThread(ts);
    }
    DeadThreadStates::get().delete_all();
    std::deque<ExecutorCall*> left;
    {
      internal::LockGuard<internal::StdMutex> lock(mu_);
      left.swap(queue_);
    }
    for (ExecutorCall* c : left) executor_discard(&c->node);
  }

  std::size_t max_drainers() const { return max_drainers_; }

  // For _debug_stats(): drainer jobs alive, drainers inside a call, queued calls; the pool's
  // live, idle threads and queued jobs.
  void snapshot(std::size_t out[6]) {
    internal::LockGuard<internal::StdMutex> lock(mu_);
    out[0] = drainers_;
    out[1] = busy_;
    out[2] = queue_.size();
    out[3] = pool_ ? pool_->num_threads() : 0;
    out[4] = pool_ ? pool_->num_idle() : 0;
    out[5] = pool_ ? pool_->num_queued() : 0;
  }

  bool set_keep_alive_ms(long ms) {
    internal::LockGuard<internal::StdMutex> lock(mu_);
    if (pool_) return false;
    keep_alive_ms_ = ms;
    return true;
  }

 private:
  // Runs on a BlockingPool thread. Takes queued calls until there are none, then parks (without
  // the GIL) for park_timeout() waiting for more before it gives the thread back to the pool.
  //
  // Parking here rather than idling in the BlockingPool: a drainer woken by submit() is counted
  // exactly (parked_/woken_), and a sequence of single calls (await run_in_executor(...) one
  // after the other) reuses one warm thread. Relying on the pool's idle threads instead lost
  // parallelism: after such a sequence the pool woke one thread for six queued drainer jobs
  // (its count of notified idle threads drifted upwards whenever a busy thread took the job an
  // idle one had been woken for), so 16 GIL-releasing sha256 calls ran one at a time (89 ms
  // instead of 50 ms in the full benchmark suite; docs/python-api.md).
  void drain() {
    PythonThread& py = PythonThread::current();
    bool have_gil = false;
    int calls_this_hold = 0;
    internal::UniqueLock lock(mu_);
    for (;;) {
      if (queue_.empty()) {
        if (have_gil) {  // never park holding the GIL; look again once it is released
          lock.unlock();
          py.release();
          have_gil = false;
          lock.lock();
          continue;
        }
        if (shut_down_ || !park(lock)) break;
        continue;
      }
      if (!have_gil) {
        // The GIL first, the call second: a drainer waiting for the GIL still counts as the
        // standby (awake, not inside a call), so no further drainer is woken meanwhile.
        lock.unlock();
        py.acquire();
        have_gil = true;
        calls_this_hold = 0;
        debug_counters().executor_gil_acquisitions.fetch_add(1, std::memory_order_relaxed);
        lock.lock();
        continue;  // the queue may have been emptied meanwhile
      }
      ExecutorCall* c = queue_.front();
      queue_.pop_front();
      ++busy_;
      // If this call lets the GIL go (hashlib, I/O, sleep), the standby takes the GIL and the
      // next call: calls that release the GIL run in parallel, one more drainer at a time.
      const bool spawn = !queue_.empty() && ensure_standby();
      lock.unlock();
      if (spawn) start_drainer();
      run(c);
      if (++calls_this_hold >= kMaxCallsPerGilHold) {
        py.release();
        have_gil = false;
      }
      lock.lock();
      --busy_;
    }
    --drainers_;
  }

  // Calls are queued: make sure a drainer that is awake and not inside a call (a
  // standby) will take the next one, by waking a parked drainer or, returning true, asking the
  // caller to start a new one with start_drainer() once mu_ is released. Only one standby at a
  // time: a drainer running calls back to back under the GIL gains nothing from more threads
  // waiting for the GIL (they only make it change hands), and one that releases the GIL in a
  // call hands it to the standby, which then provides the next standby.
  bool ensure_standby() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const auto active_free =
        static_cast<std::ptrdiff_t>(drainers_) - static_cast<std::ptrdiff_t>(busy_) -
        (static_cast<std::ptrdiff_t>(parked_) - static_cast<std::ptrdiff_t>(woken_));
    if (active_free > 0) return false;
    if (parked_ > woken_) {
      ++woken_;
      cv_.notify_one();
      return false;
    }
    if (drainers_ < max_drainers_ && !shut_down_ && pool_) {
      ++drainers_;
      return true;
    }
    return false;
  }

  // Without mu_, GIL held (so the pool cannot be shut down meanwhile: shutdown() runs with the
  // GIL until it has taken pool_). Starts the drainer ensure_standby() counted.
  void start_drainer() ABSL_LOCKS_EXCLUDED(mu_) {
    if (pool_->submit([this]() { drain(); }).ok()) return;
    internal::LockGuard<internal::StdMutex> lock(mu_);
    --drainers_;  // the queued calls stay with the drainers that exist
  }

  // Waits until a call is queued (true) or the park time ran out / shutdown (false).
  bool park(internal::UniqueLock& lock) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ++parked_;
    const auto deadline = std::chrono::steady_clock::now() + park_timeout();
    bool timed_out = false;
    while (queue_.empty() && !shut_down_ && !timed_out) {
      timed_out = cv_.wait_until(lock.native(), deadline) == std::cv_status::timeout;
      if (woken_ > 0) --woken_;  // this wake-up used a notification (or was spurious)
    }
    --parked_;
    return !queue_.empty();
  }

  std::chrono::milliseconds park_timeout() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return keep_alive_ms_ > 0 ? std::chrono::milliseconds(keep_alive_ms_)
                              : std::chrono::milliseconds(10000);
  }

  // GIL held, on a drainer thread.
  static void run(ExecutorCall* c) {
    check_native_thread_holds_gil();
    debug_counters().executor_calls.fetch_add(1, std::memory_order_relaxed);
    // Like concurrent.futures: a call whose future was cancelled before it started never runs.
    PyObject* cancelled = PyObject_CallMethodNoArgs(c->future, g.str_cancelled);
    bool skip = cancelled == Py_True;
    Py_XDECREF(cancelled);
    if (cancelled == nullptr) PyErr_Clear();
    if (!skip) {
      c->result = PyObject_Call(c->func, c->args, nullptr);
      if (c->result == nullptr) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (value != nullptr && tb != nullptr) PyException_SetTraceback(value, tb);
        Py_XDECREF(type);
        Py_XDECREF(tb);
        c->exc = value;
      }
    }
    LoopObject* loop = c->loop;
    if (loop->closed || !loop->st->core) {
      executor_discard(&c->node);
    } else {
      loop->st->core->post(&c->node);
    }
  }

  internal::StdMutex mu_;
  std::deque<ExecutorCall*> queue_ ABSL_GUARDED_BY(mu_);
  std::size_t drainers_ ABSL_GUARDED_BY(mu_) = 0;  // drainer jobs submitted and not finished
  std::size_t busy_ ABSL_GUARDED_BY(mu_) = 0;      // drainers inside a call
  std::size_t parked_ ABSL_GUARDED_BY(mu_) = 0;    // drainers waiting in park()
  std::size_t woken_ ABSL_GUARDED_BY(mu_) = 0;     // notifications not yet consumed
  std::condition_variable cv_;                     // a call was queued, or shutdown
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  // Created under mu_, used after without it (start_drainer: the GIL keeps shutdown() out).
  std::unique_ptr<BlockingPool> pool_;
  long keep_alive_ms_ ABSL_GUARDED_BY(mu_) = 0;  // test hook, 0: the defaults
  const std::size_t max_drainers_;
};

// The process's executor. Never destroyed: shut down explicitly at interpreter exit (atexit),
// before finalization. Created and replaced with the GIL held (or in the fork child, where only
// the forking thread exists).
PyExecutor* g_executor = nullptr;

// fork(): the child has none of the pool's threads, but the executor still counts them: its
// first submit() woke a parked drainer that does not exist and the job never ran, and when a
// pool thread held the executor's lock at the instant of fork() the child's submit() blocked on
// it forever (tests/python/test_reliability_fork.py). The child starts a new executor on its
// first run_in_executor; the parent's is left allocated (its lock may be held, its pool refers
// to threads that are gone) and its queued calls, which belong to the parent's futures, never
// run in the child. asyncio's default executor belongs to its loop, so a new loop in the child
// gets a new one too.
void after_fork_child() {
  g_executor = nullptr;
  DeadThreadStates::reset_in_child();
}

PyExecutor& executor() {
  if (g_executor == nullptr) {
    static const int registered = pthread_atfork(nullptr, nullptr, after_fork_child);
    (void)registered;
    g_executor = new PyExecutor();
  }
  return *g_executor;
}

}  // namespace

PyObject* executor_submit(LoopObject* loop, PyObject* func, PyObject* args) {
  PyObject* fut = PyObject_CallMethod((PyObject*)loop, "create_future", nullptr);
  if (fut == nullptr) return nullptr;
  auto* c = new ExecutorCall();
  c->node.deliver = executor_deliver;
  c->node.discard = executor_discard;
  c->loop = (LoopObject*)Py_NewRef((PyObject*)loop);
  c->func = Py_NewRef(func);
  c->args = Py_NewRef(args);
  c->future = Py_NewRef(fut);
  ++loop->st->executor_in_flight;
  if (!executor().submit(c)) {
    --loop->st->executor_in_flight;
    free_call(c);
    Py_DECREF(fut);
    PyErr_SetString(PyExc_RuntimeError, "cannot schedule new futures after interpreter shutdown");
    return nullptr;
  }
  return fut;
}

void executor_deliver(InboxNode* node, LoopObject* loop) {
  ExecutorCall* c = call_from_node(node);
  PyObject* done = PyObject_CallMethod(c->future, "done", nullptr);
  if (done == Py_False) {
    PyObject* r;
    if (c->exc != nullptr) {
      // As asyncio copies a concurrent future's state (futures._convert_future_exc):
      // concurrent.futures' CancelledError/InvalidStateError become asyncio's, so a job that
      // raised concurrent.futures.CancelledError reaches the awaiting task as
      // asyncio.CancelledError. The exception path only: a Python call is cheap enough here.
      static PyObject* convert = nullptr;
      if (convert == nullptr) {
        convert = import_attr("asyncio.futures", "_convert_future_exc");
        if (convert == nullptr) PyErr_WriteUnraisable(c->future);
      }
      if (convert != nullptr) {
        PyObject* converted = PyObject_CallOneArg(convert, c->exc);
        if (converted != nullptr) {
          Py_SETREF(c->exc, converted);
        } else {
          PyErr_WriteUnraisable(c->future);
        }
      }
      r = PyObject_CallMethodOneArg(c->future, g.str_set_exception, c->exc);
      if (r == nullptr && PyErr_ExceptionMatches(PyExc_TypeError)) {
        // e.g. StopIteration cannot be set on a future: fail the future instead of hanging it.
        PyErr_Clear();
        PyObject* wrapped =
            PyObject_CallFunction(PyExc_RuntimeError, "sO", "executor function raised", c->exc);
        if (wrapped != nullptr) {
          PyException_SetCause(wrapped, Py_NewRef(c->exc));
          r = PyObject_CallMethodOneArg(c->future, g.str_set_exception, wrapped);
          Py_DECREF(wrapped);
        }
      }
    } else if (c->result != nullptr) {
      r = PyObject_CallMethodOneArg(c->future, g.str_set_result, c->result);
    } else {
      r = PyObject_CallMethod(c->future, "cancel", nullptr);
    }
    if (r == nullptr) PyErr_WriteUnraisable(c->future);
    Py_XDECREF(r);
  } else if (done == nullptr) {
    PyErr_WriteUnraisable(c->future);
  }
  Py_XDECREF(done);
  finish_in_flight(loop);
  free_call(c);
}

void executor_discard(InboxNode* node) {
  ExecutorCall* c = call_from_node(node);
  if (c->loop != nullptr && c->loop->st != nullptr) finish_in_flight(c->loop);
  free_call(c);
}

void executor_shutdown_pool() {
  executor().shutdown();
}

PyObject* executor_debug_stats() {
  auto& c = debug_counters();
  std::size_t e[6];
  executor().snapshot(e);
  return Py_BuildValue("{s:n,s:n,s:n,s:n,s:n,s:n,s:K,s:K,s:K,s:K,s:n}", "executor_drainers",
                       (Py_ssize_t)e[0], "executor_busy", (Py_ssize_t)e[1], "executor_queued",
                       (Py_ssize_t)e[2], "pool_threads", (Py_ssize_t)e[3], "pool_idle",
                       (Py_ssize_t)e[4], "pool_queued", (Py_ssize_t)e[5], "native_gil_checks",
                       (unsigned long long)c.native_gil_checks.load(), "native_gil_violations",
                       (unsigned long long)c.native_gil_violations.load(), "executor_calls",
                       (unsigned long long)c.executor_calls.load(), "executor_gil_acquisitions",
                       (unsigned long long)c.executor_gil_acquisitions.load(),
                       "executor_max_threads", (Py_ssize_t)executor().max_drainers());
}

bool executor_set_keep_alive_ms(long ms) {
  return executor().set_keep_alive_ms(ms);
}

void executor_debug_reset() {
  auto& c = debug_counters();
  c.native_gil_checks = 0;
  c.native_gil_violations = 0;
  c.executor_calls = 0;
  c.executor_gil_acquisitions = 0;
}

// Test hook: a native thread runs the GIL check *without* the GIL, proving the check detects it.
PyObject* debug_probe_native_without_gil() {
  PyThreadState* ts = PyEval_SaveThread();
  std::thread t([] { check_native_thread_holds_gil(); });
  t.join();
  PyEval_RestoreThread(ts);
  Py_RETURN_NONE;
}

}  // namespace tideloop::bridge
