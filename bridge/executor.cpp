// The default executor of run_in_executor(None, ...): Python calls on native threads of the
// runtime's BlockingPool instead of a concurrent.futures.ThreadPoolExecutor.
//
// Shape: submit() puts an ExecutorCall into a queue (a mutex held for a push, never while Python
// runs) and, when no drainer is idle, hands a *drainer* job to the BlockingPool. A drainer takes
// the GIL once and runs queued calls back to back (at most kMaxCallsPerGilHold, then it lets the
// GIL go), so a burst of small calls pays one GIL acquisition per batch instead of per call. A
// call that releases the GIL itself (hashlib, I/O) lets another drainer start the next one, so
// up to kMaxDrainers run in parallel, the same bound as asyncio's default ThreadPoolExecutor.
//
// Results travel back through the loop's BridgeInbox as the ExecutorCall node itself; the bridge
// thread resolves the asyncio future (futures are not thread-safe). A drainer posts while it still
// holds the GIL, so it can drop a call whose loop has closed meanwhile: no native thread ever
// waits for the GIL just to release a reference.
#include <atomic>
#include <deque>
#include <mutex>
#include <thread>

#include "loop.hpp"
#include "tideloop/blocking.hpp"

namespace tideloop::bridge {

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
      gstate_ = PyGILState_Ensure();  // creates the state; the GIL is now held
      tstate_ = PyThreadState_Get();
      return;
    }
    PyEval_RestoreThread(tstate_);
  }

  void release() { PyEval_SaveThread(); }

  ~PythonThread() {
    // Runs when the pool reaps this thread, or when the pool is joined at interpreter exit
    // (atexit, before finalization). Never touch an interpreter that is going away.
    if (tstate_ == nullptr || !Py_IsInitialized() || _Py_IsFinalizing()) return;
    PyEval_RestoreThread(tstate_);
    PyGILState_Release(gstate_);  // last release: deletes the state and drops the GIL
  }

 private:
  PyThreadState* tstate_ = nullptr;
  PyGILState_STATE gstate_{};
};

class PyExecutor {
 public:
  PyExecutor()
      : max_drainers_(std::min<std::size_t>(32, std::thread::hardware_concurrency() + 4)) {}

  // GIL held. False when the pool was shut down (interpreter exit) or could not start a thread.
  bool submit(ExecutorCall* c) {
    bool spawn = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (shut_down_) return false;
      if (!pool_) {
        BlockingPool::Options opts;
        // The bound of asyncio's default ThreadPoolExecutor: min(32, cpus + 4).
        opts.max_threads = max_drainers_;
        opts.thread_name = "tl-py-executor";
        pool_ = std::make_unique<BlockingPool>(opts);
      }
      queue_.push_back(c);
      if (drainers_ - busy_ < queue_.size() && drainers_ < max_drainers_) {
        ++drainers_;
        spawn = true;
      }
    }
    if (spawn && !pool_->submit([this]() { drain(); }).ok()) {
      std::lock_guard<std::mutex> lock(mu_);
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
      std::lock_guard<std::mutex> lock(mu_);
      shut_down_ = true;
      pool = std::move(pool_);
    }
    if (pool) {
      PyThreadState* ts = PyEval_SaveThread();  // running jobs need the GIL to finish
      pool->shutdown();
      PyEval_RestoreThread(ts);
    }
    std::deque<ExecutorCall*> left;
    {
      std::lock_guard<std::mutex> lock(mu_);
      left.swap(queue_);
    }
    for (ExecutorCall* c : left) executor_discard(&c->node);
  }

  std::size_t max_drainers() const { return max_drainers_; }

 private:
  // Runs on a BlockingPool thread.
  void drain() {
    PythonThread& py = PythonThread::current();
    bool have_gil = false;
    int calls_this_hold = 0;
    for (;;) {
      ExecutorCall* c;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (queue_.empty()) {
          --drainers_;
          break;
        }
        c = queue_.front();
        queue_.pop_front();
        ++busy_;
      }
      if (!have_gil) {
        py.acquire();
        have_gil = true;
        calls_this_hold = 0;
        debug_counters().executor_gil_acquisitions.fetch_add(1, std::memory_order_relaxed);
      }
      run(c);
      {
        std::lock_guard<std::mutex> lock(mu_);
        --busy_;
      }
      if (++calls_this_hold >= kMaxCallsPerGilHold) {
        py.release();
        have_gil = false;
      }
    }
    if (have_gil) py.release();
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

  std::mutex mu_;
  std::deque<ExecutorCall*> queue_;     // guarded by mu_
  std::size_t drainers_ = 0;            // guarded by mu_: drainer jobs submitted and not finished
  std::size_t busy_ = 0;                // guarded by mu_: drainers inside a call
  bool shut_down_ = false;              // guarded by mu_
  std::unique_ptr<BlockingPool> pool_;  // created under mu_, used after
  const std::size_t max_drainers_;
};

PyExecutor& executor() {
  // Never destroyed: shut down explicitly at interpreter exit (atexit), before finalization.
  static PyExecutor* e = new PyExecutor();
  return *e;
}

}  // namespace

PyObject* executor_submit(LoopObject* loop, PyObject* func, PyObject* args) {
  PyObject* fut = PyObject_CallMethod((PyObject*)loop, "create_future", nullptr);
  if (fut == nullptr) return nullptr;
  auto* c = new ExecutorCall();
  c->node.kind = InboxNode::Kind::kExecutorDone;
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

void executor_deliver(LoopObject* loop, InboxNode* node) {
  ExecutorCall* c = call_from_node(node);
  PyObject* done = PyObject_CallMethod(c->future, "done", nullptr);
  if (done == Py_False) {
    PyObject* r;
    if (c->exc != nullptr) {
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
  return Py_BuildValue("{s:K,s:K,s:K,s:K,s:n}", "native_gil_checks",
                       (unsigned long long)c.native_gil_checks.load(), "native_gil_violations",
                       (unsigned long long)c.native_gil_violations.load(), "executor_calls",
                       (unsigned long long)c.executor_calls.load(), "executor_gil_acquisitions",
                       (unsigned long long)c.executor_gil_acquisitions.load(),
                       "executor_max_threads", (Py_ssize_t)executor().max_drainers());
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
