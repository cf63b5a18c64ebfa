// LoopCore: scheduling methods and the tick of the bridge thread.
//
// One tick (asyncio's _run_once, same order and the same batch rule):
//   1. take what other threads posted to the inbox;
//   2. if nothing is ready: release the GIL and block in the poller until the next timer
//      deadline, a post, a signal or fd readiness; otherwise make no syscall at all (an
//      epoll_wait(0) only when fds are watched, like asyncio's select(0));
//   3. move expired timers to the ready queue (TimerQueue: the runtime's timer wheel; cancelled
//      timers left it at cancel() time, in O(1));
//   4. run exactly the handles that are ready now; what they schedule runs next tick.
// The GIL is held for the whole tick except the blocking wait.
#include "loop.hpp"

#include <sys/socket.h>
#include <time.h>

#include <cmath>
#include <vector>

namespace tideloop::bridge {
namespace {

// asyncio's constants (base_events.py), kept so that behaviour matches.
constexpr double kMaximumSelectTimeout = 24 * 3600;
// time.get_clock_info('monotonic').resolution on Linux: timers due within it count as expired.
constexpr double kClockResolution = 1e-9;
constexpr int kMaxEventsPerWait = 256;

// epoll tags: user fds use the fd itself; internal fds set a high bit.
constexpr std::uint64_t kTagWake = (1ULL << 40) | 1;
constexpr std::uint64_t kTagSignal = (1ULL << 40) | 2;

inline LoopState& S(LoopObject* self) {
  return *self->st;
}

int check_closed(LoopObject* self) {
  if (self->closed) {
    PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
    return -1;
  }
  return 0;
}

// Debug mode only, as in asyncio: non-thread-safe methods called from another thread.
int check_thread(LoopObject* self) {
  if (!self->running) return 0;
  if (PyThread_get_thread_ident() != self->thread_id) {
    PyErr_SetString(
        PyExc_RuntimeError,
        "Non-thread-safe operation invoked on an event loop other than the current one");
    return -1;
  }
  return 0;
}

// Unlike asyncio (which checks only in debug mode and otherwise fails later inside the exception
// handler), non-callables are rejected up front with asyncio's debug-mode TypeError: the check is
// one pointer test. Coroutine *functions* are detected in debug mode only, as in asyncio.
int check_callback(LoopObject* self, PyObject* cb, const char* method) {
  if (PyCallable_Check(cb) && !self->debug) return 0;
  if (g.h_check_callback != nullptr) {
    PyObject* m = PyUnicode_FromString(method);
    if (m == nullptr) return -1;
    PyObject* r = PyObject_CallFunctionObjArgs(g.h_check_callback, cb, m, nullptr);
    Py_DECREF(m);
    if (r == nullptr) return -1;
    Py_DECREF(r);
  }
  if (!PyCallable_Check(cb)) {
    PyErr_Format(PyExc_TypeError, "a callable object was expected by %s(), got %R", method, cb);
    return -1;
  }
  return 0;
}

int parse_kwnames_slow(const char* fname, PyObject* const* args, Py_ssize_t nargs,
                       PyObject* kwnames, PyObject** context);

// Parses the keyword-only `context=` of the call_* methods. *context is borrowed (or NULL).
int parse_context(const char* fname, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames,
                  PyObject** context) {
  *context = nullptr;
  if (kwnames == nullptr) return 0;
  // asyncio's C Task and Future pass the same ("context",) tuple object on every call_soon;
  // recognising it by identity skips the string comparison on the task-switch path.
  static PyObject* known_context_kwnames = nullptr;
  if (kwnames == known_context_kwnames) {
    *context = args[nargs];
  } else {
    if (parse_kwnames_slow(fname, args, nargs, kwnames, context) < 0) return -1;
    if (*context != nullptr && PyTuple_GET_SIZE(kwnames) == 1) {
      Py_XSETREF(known_context_kwnames, Py_NewRef(kwnames));
    }
  }
  if (*context != nullptr && *context != Py_None && !PyContext_CheckExact(*context)) {
    PyErr_Format(PyExc_TypeError, "%s(): context must be a contextvars.Context, got %R", fname,
                 *context);
    return -1;
  }
  return 0;
}

// The call_* methods' arguments: at least `min_nargs` positional ones (else TypeError
// "<fname>() missing <missing>") and the keyword-only context=.
int parse_call_args(const char* fname, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames,
                    Py_ssize_t min_nargs, const char* missing, PyObject** context) {
  if (parse_context(fname, args, nargs, kwnames, context) < 0) return -1;
  if (nargs < min_nargs) {
    PyErr_Format(PyExc_TypeError, "%s() missing %s", fname, missing);
    return -1;
  }
  return 0;
}

int parse_kwnames_slow(const char* fname, PyObject* const* args, Py_ssize_t nargs,
                       PyObject* kwnames, PyObject** context) {
  Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
  for (Py_ssize_t i = 0; i < nkw; ++i) {
    PyObject* key = PyTuple_GET_ITEM(kwnames, i);
    if (key == g.str_context || PyUnicode_CompareWithASCIIString(key, "context") == 0) {
      *context = args[nargs + i];
    } else {
      PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname, key);
      return -1;
    }
  }
  return 0;
}

int no_kwargs(const char* fname, PyObject* kwnames) {
  if (kwnames != nullptr && PyTuple_GET_SIZE(kwnames) > 0) {
    PyErr_Format(PyExc_TypeError, "%s() takes no keyword arguments", fname);
    return -1;
  }
  return 0;
}

// --- timers -------------------------------------------------------------------------------

inline TimerHandleObject* timer_of(TimerEntry* e) {
  return reinterpret_cast<TimerHandleObject*>(reinterpret_cast<char*>(e) -
                                              offsetof(TimerHandleObject, timer));
}

// Drops the queue's reference to a timer that left it without running (cancelled).
void drop_timer(TimerEntry* e) {
  Py_DECREF(timer_of(e));
}

void move_expired_timers(LoopObject* self) {
  LoopState& st = S(self);
  if (st.timers.empty()) return;
  double end_time = monotonic_now() + kClockResolution;
  st.timers.collect_due(
      end_time,
      [&](TimerEntry* e) {
        st.ready.push(&timer_of(e)->base);  // the queue's reference moves to the ready queue
      },
      drop_timer);
}

// Nanoseconds until the earliest timer (-1: none), asyncio's clamp to MAXIMUM_SELECT_TIMEOUT.
// Only before a blocking wait: kept out of the tick's hot code.
[[gnu::noinline]] std::int64_t timer_timeout_ns(LoopState& st) {
  if (st.timers.empty()) return -1;
  double dt = st.timers.next_wait(monotonic_now(), drop_timer);
  if (dt < 0) return -1;
  if (dt > kMaximumSelectTimeout) dt = kMaximumSelectTimeout;
  return static_cast<std::int64_t>(std::ceil(dt * 1e9));
}

// --- inbox --------------------------------------------------------------------------------

void drain_inbox(LoopObject* self) {
  LoopState& st = S(self);
  if (!st.core) return;
  InboxNode* n = st.core->take_all_newest_first();
  if (n == nullptr) return;
  // One pass over the list (each node is a cache miss when a burst piled up), then the pointers
  // are replayed oldest-first from the contiguous scratch array.
  std::vector<InboxNode*>& nodes = st.inbox_scratch;
  nodes.clear();
  for (; n != nullptr; n = n->next) nodes.push_back(n);
  for (std::size_t i = nodes.size(); i-- > 0;) {
    executor_deliver(self, nodes[i]);  // the only kind of node so far
  }
  nodes.clear();
}

void discard_inbox(LoopObject* self) {
  LoopState& st = S(self);
  if (!st.core) return;
  InboxNode* n = st.core->take_all();
  while (n != nullptr) {
    InboxNode* next = n->next;
    executor_discard(n);
    n = next;
  }
}

// --- fd watching --------------------------------------------------------------------------

FdWatch* fd_watch(LoopState& st, int fd) {
  if (fd < 0 || static_cast<std::size_t>(fd) >= st.fds.size()) return nullptr;
  return &st.fds[fd];
}

// Re-registers fd in epoll with the events its handles want. Returns 0 or an errno.
int fd_sync(LoopState& st, int fd) {
  FdWatch& w = st.fds[fd];
  std::uint32_t events = (w.reader ? EPOLLIN : 0u) | (w.writer ? EPOLLOUT : 0u);
  if (events == 0) {
    if (w.registered) {
      st.poller.remove(fd);  // EBADF/ENOENT: the fd was closed meanwhile; nothing to undo
      w.registered = false;
      --st.watched_fds;
    }
    return 0;
  }
  if (w.registered) {
    int err = st.poller.modify(fd, events, static_cast<std::uint64_t>(fd));
    if (err != ENOENT) return err;
    // The fd was closed and its number reused without remove_reader(): register afresh.
    w.registered = false;
    --st.watched_fds;
  }
  int err = st.poller.add(fd, events, static_cast<std::uint64_t>(fd));
  if (err == 0) {
    w.registered = true;
    ++st.watched_fds;
  }
  return err;
}

int fileobj_to_fd(PyObject* obj) {
  long fd;
  if (PyLong_Check(obj)) {
    fd = PyLong_AsLong(obj);
    if (fd == -1 && PyErr_Occurred()) return -1;
  } else {
    PyObject* r = PyObject_CallMethod(obj, "fileno", nullptr);
    if (r == nullptr) {
      if (!PyErr_ExceptionMatches(PyExc_AttributeError) &&
          !PyErr_ExceptionMatches(PyExc_TypeError) && !PyErr_ExceptionMatches(PyExc_ValueError)) {
        return -1;
      }
      PyErr_Clear();
      PyErr_Format(PyExc_ValueError, "Invalid file object: %R", obj);
      return -1;
    }
    fd = PyLong_Check(r) ? PyLong_AsLong(r) : -1;
    Py_DECREF(r);
    if (fd == -1 && PyErr_Occurred()) return -1;
  }
  if (fd < 0 || fd > INT32_MAX) {
    PyErr_Format(PyExc_ValueError, "Invalid file descriptor: %ld", fd);
    return -1;
  }
  return static_cast<int>(fd);
}

PyObject* add_watch(LoopObject* self, PyObject* const* args, Py_ssize_t nargsf, PyObject* kwnames,
                    bool writer, const char* fname) {
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  if (no_kwargs(fname, kwnames) < 0) return nullptr;
  if (nargs < 2) {
    PyErr_Format(PyExc_TypeError, "%s() missing required arguments 'fd' and 'callback'", fname);
    return nullptr;
  }
  int fd = fileobj_to_fd(args[0]);
  if (fd < 0) return nullptr;
  if (check_closed(self) < 0 || check_callback(self, args[1], fname) < 0) return nullptr;
  LoopState& st = S(self);
  HandleObject* h = handle_new(args[1], args + 2, nargs - 2, nullptr, self);
  if (h == nullptr) return nullptr;
  h->repeating = true;
  if (static_cast<std::size_t>(fd) >= st.fds.size()) st.fds.resize(fd + 1);
  FdWatch& w = st.fds[fd];
  HandleObject*& slot = writer ? w.writer : w.reader;
  HandleObject* old = slot;
  slot = h;
  int err = fd_sync(st, fd);
  if (err != 0) {
    slot = old;
    fd_sync(st, fd);
    Py_DECREF(h);
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
  }
  if (old != nullptr) {
    PyObject* r = PyObject_CallMethod((PyObject*)old, "cancel", nullptr);
    Py_XDECREF(r);
    Py_DECREF(old);
    if (r == nullptr) return nullptr;
  }
  Py_RETURN_NONE;
}

PyObject* remove_watch(LoopObject* self, PyObject* fdobj, bool writer) {
  int fd = fileobj_to_fd(fdobj);
  if (fd < 0) return nullptr;
  if (self->closed) Py_RETURN_FALSE;
  LoopState& st = S(self);
  FdWatch* w = fd_watch(st, fd);
  if (w == nullptr) Py_RETURN_FALSE;
  HandleObject*& slot = writer ? w->writer : w->reader;
  HandleObject* old = slot;
  if (old == nullptr) Py_RETURN_FALSE;
  slot = nullptr;
  fd_sync(st, fd);
  PyObject* r = PyObject_CallMethod((PyObject*)old, "cancel", nullptr);
  Py_DECREF(old);
  if (r == nullptr) return nullptr;
  Py_DECREF(r);
  Py_RETURN_TRUE;
}

void clear_watches(LoopState& st) {
  std::vector<FdWatch> fds;
  fds.swap(st.fds);
  st.watched_fds = 0;
  for (auto& w : fds) {
    Py_XDECREF(w.reader);
    Py_XDECREF(w.writer);
  }
}

// --- signals ------------------------------------------------------------------------------

int ensure_signal_socket(LoopState& st) {
  if (st.signal_rfd >= 0) return 0;
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) {
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
  }
  int err = st.poller.add(sv[0], EPOLLIN, kTagSignal);
  if (err != 0) {
    ::close(sv[0]);
    ::close(sv[1]);
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
  }
  st.signal_rfd = sv[0];
  st.signal_wfd = sv[1];
  return 0;
}

// Calls signal.set_wakeup_fd(fd, warn_on_full_buffer=False); returns the previous fd or -2 on
// error (the error is cleared: the wakeup fd is an optimisation, EINTR still ends the wait).
int set_wakeup_fd(int fd) {
  PyObject* fdo = PyLong_FromLong(fd);
  if (fdo == nullptr) {
    PyErr_Clear();
    return -2;
  }
  PyObject* argv[2] = {fdo, Py_False};
  PyObject* r = PyObject_Vectorcall(g.signal_set_wakeup_fd, argv, 1, g.kwnames_wakeup);
  Py_DECREF(fdo);
  if (r == nullptr) {
    PyErr_Clear();
    return -2;
  }
  long old = PyLong_AsLong(r);
  Py_DECREF(r);
  if (old == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return -2;
  }
  return static_cast<int>(old);
}

// Before the first blocking wait of a run on the main thread: point Python's signal wakeup fd at
// our socket (unless someone else owns it), so a signal delivered to any thread ends the wait.
void install_wakeup_for_run(LoopObject* self, bool* checked) {
  LoopState& st = S(self);
  if (*checked) return;
  *checked = true;
  if (st.wakeup_permanent || !_PyOS_IsMainThread()) return;
  if (ensure_signal_socket(st) < 0) {
    PyErr_Clear();
    return;
  }
  int old = set_wakeup_fd(st.signal_wfd);
  if (old == -1) {
    st.wakeup_installed_for_run = true;
  } else if (old >= 0 && old != st.signal_wfd) {
    set_wakeup_fd(old);  // owned by someone else: leave it alone
  }
}

void restore_wakeup_after_run(LoopObject* self) {
  LoopState& st = S(self);
  if (!st.wakeup_installed_for_run) return;
  st.wakeup_installed_for_run = false;
  if (st.wakeup_permanent) return;
  int cur = set_wakeup_fd(-1);
  if (cur >= 0 && cur != st.signal_wfd) set_wakeup_fd(cur);  // changed meanwhile: put it back
}

int read_signal_socket(LoopObject* self) {
  LoopState& st = S(self);
  unsigned char buf[256];
  for (;;) {
    ssize_t n = ::read(st.signal_rfd, buf, sizeof buf);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      break;
    }
    if (!st.has_signal_handlers) continue;
    for (ssize_t i = 0; i < n; ++i) {
      if (buf[i] == 0) continue;
      PyObject* signum = PyLong_FromLong(buf[i]);
      if (signum == nullptr) return -1;
      PyObject* r =
          PyObject_CallMethodObjArgs((PyObject*)self, g.str_handle_signal, signum, nullptr);
      Py_DECREF(signum);
      if (r == nullptr) return -1;
      Py_DECREF(r);
    }
  }
  return 0;
}

// --- the tick -----------------------------------------------------------------------------

int process_events(LoopObject* self, epoll_event* events, int n) {
  LoopState& st = S(self);
  for (int i = 0; i < n; ++i) {
    std::uint64_t tag = events[i].data.u64;
    std::uint32_t ev = events[i].events;
    if (tag == kTagWake) {
      if (st.core) st.core->drain_wake();
      continue;
    }
    if (tag == kTagSignal) {
      if (read_signal_socket(self) < 0) return -1;
      continue;
    }
    int fd = static_cast<int>(tag);
    FdWatch* w = fd_watch(st, fd);
    if (w == nullptr) continue;
    // Like selectors.EpollSelector: an error or hang-up wakes both directions.
    if ((ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) && w->reader != nullptr) {
      if (w->reader->cancelled) {
        HandleObject* old = w->reader;
        w->reader = nullptr;
        fd_sync(st, fd);
        Py_DECREF(old);
      } else {
        Py_INCREF(w->reader);
        st.ready.push(w->reader);
      }
    }
    w = fd_watch(st, fd);
    if ((ev & (EPOLLOUT | EPOLLHUP | EPOLLERR)) && w->writer != nullptr) {
      if (w->writer->cancelled) {
        HandleObject* old = w->writer;
        w->writer = nullptr;
        fd_sync(st, fd);
        Py_DECREF(old);
      } else {
        Py_INCREF(w->writer);
        st.ready.push(w->writer);
      }
    }
  }
  return 0;
}

int run_handle_debug(LoopObject* self, HandleObject* h) {
  Py_XSETREF(self->current_handle, Py_NewRef((PyObject*)h));
  double t0 = monotonic_now();
  int r = handle_run(h);
  double dt = monotonic_now() - t0;
  Py_CLEAR(self->current_handle);
  if (r < 0) return -1;
  PyObject* slow = PyObject_GetAttr((PyObject*)self, g.str_slow_callback_duration);
  if (slow == nullptr) return -1;
  double limit = PyFloat_AsDouble(slow);
  Py_DECREF(slow);
  if (limit == -1.0 && PyErr_Occurred()) return -1;
  if (dt >= limit && g.h_log_slow_callback != nullptr) {
    PyObject* d = PyFloat_FromDouble(dt);
    PyObject* res =
        d ? PyObject_CallFunctionObjArgs(g.h_log_slow_callback, (PyObject*)h, d, nullptr) : nullptr;
    Py_XDECREF(d);
    if (res == nullptr) return -1;
    Py_DECREF(res);
  }
  return 0;
}

int loop_tick(LoopObject* self, bool* wakeup_checked) {
  LoopState& st = S(self);
  drain_inbox(self);

  epoll_event events[kMaxEventsPerWait];
  int n = 0;
  if (!st.ready.empty() || self->stopping) {
    if (st.watched_fds > 0) n = st.poller.wait(events, kMaxEventsPerWait, 0);
  } else {
    std::int64_t timeout_ns = timer_timeout_ns(st);
    if (timeout_ns != 0) {
      install_wakeup_for_run(self, wakeup_checked);
      // prepare_sleep() stores kSleeping, then re-checks the inbox; the ready queue is
      // re-checked after that store too (call_soon_threadsafe pushes onto it under the GIL).
      if (st.core->prepare_sleep([&] { return st.ready.empty(); })) {
        PyThreadState* ts = PyEval_SaveThread();  // other Python threads run while we wait
        n = st.poller.wait(events, kMaxEventsPerWait, timeout_ns);
        int err = errno;
        PyEval_RestoreThread(ts);
        st.core->finish_sleep();
        errno = err;
      } else if (st.watched_fds > 0) {
        n = st.poller.wait(events, kMaxEventsPerWait, 0);
      }
    } else if (st.watched_fds > 0) {
      n = st.poller.wait(events, kMaxEventsPerWait, 0);
    }
  }
  if (n < 0) {
    if (errno != EINTR) {
      PyErr_SetFromErrno(PyExc_OSError);
      return -1;
    }
    n = 0;
  }
  if (n > 0 && process_events(self, events, n) < 0) return -1;
  // Runs Python-level signal handlers (KeyboardInterrupt from SIGINT surfaces here when the signal
  // arrived during the wait). One atomic load when no signal is pending.
  if (PyErr_CheckSignals() < 0) return -1;
  drain_inbox(self);
  move_expired_timers(self);

  std::size_t ntodo = st.ready.size();
  for (std::size_t i = 0; i < ntodo && !st.ready.empty(); ++i) {
    HandleObject* h = st.ready.pop();
    if (h->cancelled) {
      Py_DECREF(h);
      continue;
    }
    int r = self->debug ? run_handle_debug(self, h) : handle_run(h);
    // A one-shot handle that someone still holds lets go of its callback: handles are not
    // GC-tracked, so this is what keeps `obj -> handle -> obj.method` from outliving the run.
    if (!h->repeating && Py_REFCNT(h) > 1) handle_release_callback(h);
    Py_DECREF(h);
    if (r < 0) return -1;
  }
  return 0;
}

int set_origin_tracking(LoopObject* self, bool enabled) {
  if (enabled == self->origin_tracking) return 0;
  PyObject* r = PyObject_CallMethodObjArgs((PyObject*)self, g.str_set_coroutine_origin_tracking,
                                           enabled ? Py_True : Py_False, nullptr);
  if (r == nullptr) return -1;
  Py_DECREF(r);
  return 0;
}

// --- Python methods -----------------------------------------------------------------------

// call_soon and call_soon_threadsafe: the same handle onto the same ready queue. Every Python
// caller holds the GIL, and so does the bridge whenever it touches the ready queue, so a
// threadsafe call appends directly too (as asyncio appends to _ready); only native threads,
// which run without the GIL, use the lock-free inbox. A threadsafe call then wakes the bridge
// if it sleeps (one load when it is awake or already notified).
inline PyObject* call_soon_impl(LoopObject* self, PyObject* const* args, Py_ssize_t nargsf,
                                PyObject* kwnames, bool threadsafe) {
  const char* fname = threadsafe ? "call_soon_threadsafe" : "call_soon";
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  PyObject* context;
  if (parse_call_args(fname, args, nargs, kwnames, 1, "1 required positional argument: 'callback'",
                      &context) < 0)
    return nullptr;
  if (check_closed(self) < 0) return nullptr;
  if (!threadsafe && self->debug && check_thread(self) < 0) return nullptr;
  if (check_callback(self, args[0], fname) < 0) return nullptr;
  HandleObject* h = handle_new(args[0], args + 1, nargs - 1, context, self);
  if (h == nullptr) return nullptr;
  // In debug mode the two calls above ran Python code (callback check, traceback capture),
  // where another thread may have taken the GIL and closed the loop: a threadsafe call checks
  // again, right before the push, with no Python code in between.
  if (threadsafe && self->closed) {
    Py_DECREF(h);
    check_closed(self);  // sets "Event loop is closed"
    return nullptr;
  }
  Py_INCREF(h);
  LoopState& st = S(self);
  st.ready.push(h);
  if (threadsafe) st.core->wake_if_sleeping();
  return (PyObject*)h;
}

PyObject* loop_call_soon(LoopObject* self, PyObject* const* args, Py_ssize_t nargsf,
                         PyObject* kwnames) {
  return call_soon_impl(self, args, nargsf, kwnames, /*threadsafe=*/false);
}

PyObject* loop_call_soon_threadsafe(LoopObject* self, PyObject* const* args, Py_ssize_t nargsf,
                                    PyObject* kwnames) {
  return call_soon_impl(self, args, nargsf, kwnames, /*threadsafe=*/true);
}

PyObject* schedule_timer(LoopObject* self, double when, PyObject* const* args, Py_ssize_t nargs,
                         PyObject* context, const char* method) {
  if (check_closed(self) < 0) return nullptr;
  if (self->debug && check_thread(self) < 0) return nullptr;
  if (check_callback(self, args[0], method) < 0) return nullptr;
  TimerHandleObject* t = timer_handle_new(when, args[0], args + 1, nargs - 1, context, self);
  if (t == nullptr) return nullptr;
  Py_INCREF(t);
  S(self).timers.insert(&t->timer, when);
  return (PyObject*)t;
}

int as_seconds(PyObject* o, double* out) {
  double d = PyFloat_AsDouble(o);
  if (d == -1.0 && PyErr_Occurred()) return -1;
  *out = d;
  return 0;
}

PyObject* loop_call_later(LoopObject* self, PyObject* const* args, Py_ssize_t nargsf,
                          PyObject* kwnames) {
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  PyObject* context;
  if (parse_call_args("call_later", args, nargs, kwnames, 2,
                      "required arguments 'delay' and 'callback'", &context) < 0)
    return nullptr;
  if (args[0] == Py_None) {
    PyErr_SetString(PyExc_TypeError, "delay must not be None");
    return nullptr;
  }
  double delay;
  if (as_seconds(args[0], &delay) < 0) return nullptr;
  return schedule_timer(self, monotonic_now() + delay, args + 1, nargs - 1, context, "call_later");
}

PyObject* loop_call_at(LoopObject* self, PyObject* const* args, Py_ssize_t nargsf,
                       PyObject* kwnames) {
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  PyObject* context;
  if (parse_call_args("call_at", args, nargs, kwnames, 2,
                      "required arguments 'when' and 'callback'", &context) < 0)
    return nullptr;
  if (args[0] == Py_None) {
    PyErr_SetString(PyExc_TypeError, "when cannot be None");
    return nullptr;
  }
  double when;
  if (as_seconds(args[0], &when) < 0) return nullptr;
  return schedule_timer(self, when, args + 1, nargs - 1, context, "call_at");
}

PyObject* loop_time(LoopObject*, PyObject*) {
  return PyFloat_FromDouble(monotonic_now());
}

PyObject* loop_create_future(LoopObject* self, PyObject*) {
  PyObject* argv[1] = {(PyObject*)self};
  return PyObject_Vectorcall(g.future_type, argv, 0, g.kwnames_loop);
}

PyObject* loop_get_debug(LoopObject* self, PyObject*) {
  return PyBool_FromLong(self->debug);
}
PyObject* loop_is_running(LoopObject* self, PyObject*) {
  return PyBool_FromLong(self->running);
}
PyObject* loop_is_closed(LoopObject* self, PyObject*) {
  return PyBool_FromLong(self->closed);
}
PyObject* loop_stop(LoopObject* self, PyObject*) {
  self->stopping = true;
  Py_RETURN_NONE;
}

PyObject* loop_run_forever(LoopObject* self, PyObject*) {
  if (check_closed(self) < 0) return nullptr;
  if (self->running) {
    PyErr_SetString(PyExc_RuntimeError, "This event loop is already running");
    return nullptr;
  }
  PyObject* other = PyObject_CallNoArgs(g.get_running_loop);
  if (other == nullptr) return nullptr;
  Py_DECREF(other);
  if (other != Py_None) {
    PyErr_SetString(PyExc_RuntimeError, "Cannot run the event loop while another loop is running");
    return nullptr;
  }
  if (set_origin_tracking(self, self->debug) < 0) return nullptr;
  if (self->agen_firstiter == nullptr) {
    self->agen_firstiter = PyObject_GetAttr((PyObject*)self, g.str_asyncgen_firstiter_hook);
    if (self->agen_firstiter == nullptr) return nullptr;
  }
  if (self->agen_finalizer == nullptr) {
    self->agen_finalizer = PyObject_GetAttr((PyObject*)self, g.str_asyncgen_finalizer_hook);
    if (self->agen_finalizer == nullptr) return nullptr;
  }
  PyObject* old_hooks = PyObject_CallNoArgs(g.sys_get_asyncgen_hooks);
  if (old_hooks == nullptr) return nullptr;

  bool ok = false;
  bool wakeup_checked = false;
  self->thread_id = PyThread_get_thread_ident();
  self->running = true;
  {
    PyObject* hooks[2] = {self->agen_firstiter, self->agen_finalizer};
    PyObject* r = PyObject_Vectorcall(g.sys_set_asyncgen_hooks, hooks, 0, g.kwnames_agen_hooks);
    if (r != nullptr) {
      Py_DECREF(r);
      PyObject* me = (PyObject*)self;
      r = PyObject_Vectorcall(g.set_running_loop, &me, 1, nullptr);
    }
    if (r != nullptr) {
      Py_DECREF(r);
      ok = true;
      for (;;) {
        if (loop_tick(self, &wakeup_checked) < 0) {
          ok = false;
          break;
        }
        if (self->stopping) break;
      }
    }
  }

  // finally: (keeps a pending exception)
  PyObject *et, *ev, *etb;
  PyErr_Fetch(&et, &ev, &etb);
  self->stopping = false;
  self->running = false;
  self->thread_id = 0;
  restore_wakeup_after_run(self);
  PyObject* none = Py_None;
  PyObject* r = PyObject_Vectorcall(g.set_running_loop, &none, 1, nullptr);
  if (r == nullptr) {
    PyErr_WriteUnraisable((PyObject*)self);
  } else {
    Py_DECREF(r);
  }
  if (set_origin_tracking(self, false) < 0) PyErr_WriteUnraisable((PyObject*)self);
  r = PyObject_Call(g.sys_set_asyncgen_hooks, old_hooks, nullptr);
  if (r == nullptr) {
    PyErr_WriteUnraisable((PyObject*)self);
  } else {
    Py_DECREF(r);
  }
  Py_DECREF(old_hooks);
  PyErr_Restore(et, ev, etb);
  if (!ok) return nullptr;
  Py_RETURN_NONE;
}

void clear_queues(LoopObject* self) {
  LoopState& st = S(self);
  while (!st.ready.empty()) Py_DECREF(st.ready.pop());
  st.timers.clear(drop_timer);
}

void release_os_resources(LoopObject* self) {
  LoopState& st = S(self);
  clear_watches(st);
  if (st.signal_rfd >= 0) ::close(st.signal_rfd);
  if (st.signal_wfd >= 0) ::close(st.signal_wfd);
  st.signal_rfd = st.signal_wfd = -1;
  st.poller.close();
  st.core.reset();  // closes the eventfd unless a native job still holds the core
}

PyObject* loop_close_core(LoopObject* self, PyObject*) {
  if (self->running) {
    PyErr_SetString(PyExc_RuntimeError, "Cannot close a running event loop");
    return nullptr;
  }
  if (self->closed) Py_RETURN_NONE;
  self->closed = true;
  clear_queues(self);
  discard_inbox(self);
  release_os_resources(self);
  Py_RETURN_NONE;
}

PyObject* loop_add_reader(LoopObject* self, PyObject* const* args, Py_ssize_t nargsf,
                          PyObject* kwnames) {
  return add_watch(self, args, nargsf, kwnames, false, "add_reader");
}
PyObject* loop_add_writer(LoopObject* self, PyObject* const* args, Py_ssize_t nargsf,
                          PyObject* kwnames) {
  return add_watch(self, args, nargsf, kwnames, true, "add_writer");
}
PyObject* loop_remove_reader(LoopObject* self, PyObject* fd) {
  return remove_watch(self, fd, false);
}
PyObject* loop_remove_writer(LoopObject* self, PyObject* fd) {
  return remove_watch(self, fd, true);
}

PyObject* loop_run_in_native_pool(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2 || !PyTuple_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "_run_in_native_pool(func, args_tuple)");
    return nullptr;
  }
  if (check_closed(self) < 0) return nullptr;
  return executor_submit(self, args[0], args[1]);
}

PyObject* loop_native_pool_idle(LoopObject* self, PyObject*) {
  LoopState& st = S(self);
  if (st.executor_in_flight == 0) Py_RETURN_NONE;
  if (st.executor_idle_waiter == nullptr) {
    st.executor_idle_waiter = loop_create_future(self, nullptr);
    if (st.executor_idle_waiter == nullptr) return nullptr;
  }
  return Py_NewRef(st.executor_idle_waiter);
}

PyObject* loop_signal_wakeup_fd(LoopObject* self, PyObject*) {
  if (check_closed(self) < 0) return nullptr;
  if (ensure_signal_socket(S(self)) < 0) return nullptr;
  return PyLong_FromLong(S(self).signal_wfd);
}

PyObject* loop_set_signal_state(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "_set_signal_state(has_handlers, wakeup_permanent)");
    return nullptr;
  }
  int a = PyObject_IsTrue(args[0]);
  int b = PyObject_IsTrue(args[1]);
  if (a < 0 || b < 0) return nullptr;
  S(self).has_signal_handlers = a;
  S(self).wakeup_permanent = b;
  if (b) S(self).wakeup_installed_for_run = false;
  Py_RETURN_NONE;
}

PyObject* loop_stats(LoopObject* self, PyObject*) {
  LoopState& st = S(self);
  return Py_BuildValue("{s:n,s:n,s:L,s:n,s:L,s:K}", "ready", (Py_ssize_t)st.ready.size(),
                       "scheduled", (Py_ssize_t)st.timers.size(), "timer_cancelled_count",
                       (long long)st.timers.cancelled_pending(), "watched_fds",
                       (Py_ssize_t)st.watched_fds, "executor_in_flight",
                       (long long)st.executor_in_flight, "wake_writes",
                       (unsigned long long)(st.core ? st.core->wake_writes() : 0));
}

// --- getset -------------------------------------------------------------------------------

PyObject* get_debug_attr(LoopObject* self, void*) {
  return PyBool_FromLong(self->debug);
}
int set_debug_attr(LoopObject* self, PyObject* v, void*) {
  if (v == nullptr) {
    PyErr_SetString(PyExc_AttributeError, "cannot delete _debug");
    return -1;
  }
  int b = PyObject_IsTrue(v);
  if (b < 0) return -1;
  self->debug = b;
  return 0;
}
PyObject* get_stopping(LoopObject* self, void*) {
  return PyBool_FromLong(self->stopping);
}
PyObject* get_closed(LoopObject* self, void*) {
  return PyBool_FromLong(self->closed);
}
PyObject* get_thread_id(LoopObject* self, void*) {
  if (!self->running) Py_RETURN_NONE;
  return PyLong_FromUnsignedLong(self->thread_id);
}
PyObject* get_current_handle(LoopObject* self, void*) {
  return Py_NewRef(self->current_handle ? self->current_handle : Py_None);
}
PyObject* get_origin_tracking(LoopObject* self, void*) {
  return PyBool_FromLong(self->origin_tracking);
}
int set_origin_tracking_attr(LoopObject* self, PyObject* v, void*) {
  int b = v ? PyObject_IsTrue(v) : 0;
  if (b < 0) return -1;
  self->origin_tracking = b;
  return 0;
}

// --- type slots ---------------------------------------------------------------------------

PyObject* loop_new(PyTypeObject* type, PyObject*, PyObject*) {
  auto* self = reinterpret_cast<LoopObject*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  try {
    self->st = new LoopState();
  } catch (...) {
    self->st = nullptr;
    Py_DECREF(self);
    return PyErr_NoMemory();
  }
  self->thread_id = 0;
  self->running = self->stopping = self->closed = self->debug = self->origin_tracking = false;
  self->current_handle = self->agen_firstiter = self->agen_finalizer = nullptr;
  LoopState& st = *self->st;
  if (!st.poller.ok() || st.core->event_fd() < 0) {
    PyErr_SetFromErrno(PyExc_OSError);
    Py_DECREF(self);
    return nullptr;
  }
  int err = st.poller.add(st.core->event_fd(), EPOLLIN, kTagWake);
  if (err != 0) {
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    Py_DECREF(self);
    return nullptr;
  }
  return (PyObject*)self;
}

// Handles are not GC-tracked (handle.cpp). A handle that only the loop references is part of
// the loop as far as the GC is concerned: visiting its references here is visiting references
// the loop owns through it. A handle with other owners is left alone (its referents then look
// externally referenced: a possible leak, never a premature free).
int visit_owned_handle(HandleObject* h, visitproc visit, void* arg) {
  if (h == nullptr || Py_REFCNT(h) != 1) return 0;
  Py_VISIT(h->callback);
  Py_VISIT(h->arg1);
  Py_VISIT(h->args);
  Py_VISIT(h->context);
  Py_VISIT((PyObject*)h->loop);
  Py_VISIT(h->repr);
  Py_VISIT(h->source_traceback);
  return 0;
}

int loop_traverse(LoopObject* self, visitproc visit, void* arg) {
  Py_VISIT(self->current_handle);
  Py_VISIT(self->agen_firstiter);
  Py_VISIT(self->agen_finalizer);
  if (self->st != nullptr) {
    LoopState& st = *self->st;
    int r;
    for (std::size_t i = 0; i < st.ready.size(); ++i) {
      if ((r = visit_owned_handle(st.ready.at(i), visit, arg)) != 0) return r;
    }
    r = 0;
    st.timers.for_each([&](TimerEntry* e) {
      if (r == 0) r = visit_owned_handle(&timer_of(e)->base, visit, arg);
    });
    if (r != 0) return r;
    for (auto& w : st.fds) {
      if ((r = visit_owned_handle(w.reader, visit, arg)) != 0) return r;
      if ((r = visit_owned_handle(w.writer, visit, arg)) != 0) return r;
    }
    Py_VISIT(st.executor_idle_waiter);
  }
  return 0;
}

int loop_clear(LoopObject* self) {
  Py_CLEAR(self->current_handle);
  Py_CLEAR(self->agen_firstiter);
  Py_CLEAR(self->agen_finalizer);
  if (self->st != nullptr) {
    clear_queues(self);
    clear_watches(*self->st);
    Py_CLEAR(self->st->executor_idle_waiter);
  }
  return 0;
}

void loop_dealloc(LoopObject* self) {
  PyObject_GC_UnTrack(self);
  loop_clear(self);
  if (self->st != nullptr) {
    discard_inbox(self);
    release_os_resources(self);
    delete self->st;
    self->st = nullptr;
  }
  Py_TYPE(self)->tp_free((PyObject*)self);
}

PyMethodDef loop_methods[] = {
    {"call_soon", (PyCFunction)(void (*)(void))loop_call_soon, METH_FASTCALL | METH_KEYWORDS,
     "call_soon(callback, *args, context=None) -> Handle"},
    {"call_soon_threadsafe", (PyCFunction)(void (*)(void))loop_call_soon_threadsafe,
     METH_FASTCALL | METH_KEYWORDS,
     "call_soon_threadsafe(callback, *args, context=None) -> Handle"},
    {"call_later", (PyCFunction)(void (*)(void))loop_call_later, METH_FASTCALL | METH_KEYWORDS,
     "call_later(delay, callback, *args, context=None) -> TimerHandle"},
    {"call_at", (PyCFunction)(void (*)(void))loop_call_at, METH_FASTCALL | METH_KEYWORDS,
     "call_at(when, callback, *args, context=None) -> TimerHandle"},
    {"time", (PyCFunction)loop_time, METH_NOARGS, "The loop's clock (time.monotonic())."},
    {"create_future", (PyCFunction)loop_create_future, METH_NOARGS,
     "Create an asyncio.Future attached to the loop."},
    {"get_debug", (PyCFunction)loop_get_debug, METH_NOARGS, "True in debug mode."},
    {"is_running", (PyCFunction)loop_is_running, METH_NOARGS, "True while run_forever runs."},
    {"is_closed", (PyCFunction)loop_is_closed, METH_NOARGS, "True once close() was called."},
    {"stop", (PyCFunction)loop_stop, METH_NOARGS, "Stop after the current tick."},
    {"run_forever", (PyCFunction)loop_run_forever, METH_NOARGS, "Run until stop() is called."},
    {"add_reader", (PyCFunction)(void (*)(void))loop_add_reader, METH_FASTCALL | METH_KEYWORDS,
     "add_reader(fd, callback, *args)"},
    {"add_writer", (PyCFunction)(void (*)(void))loop_add_writer, METH_FASTCALL | METH_KEYWORDS,
     "add_writer(fd, callback, *args)"},
    {"remove_reader", (PyCFunction)loop_remove_reader, METH_O, "remove_reader(fd) -> bool"},
    {"remove_writer", (PyCFunction)loop_remove_writer, METH_O, "remove_writer(fd) -> bool"},
    {"_close_core", (PyCFunction)loop_close_core, METH_NOARGS, nullptr},
    {"_run_in_native_pool", (PyCFunction)(void (*)(void))loop_run_in_native_pool, METH_FASTCALL,
     nullptr},
    {"_native_pool_idle", (PyCFunction)loop_native_pool_idle, METH_NOARGS, nullptr},
    {"_signal_wakeup_fd", (PyCFunction)loop_signal_wakeup_fd, METH_NOARGS, nullptr},
    {"_set_signal_state", (PyCFunction)(void (*)(void))loop_set_signal_state, METH_FASTCALL,
     nullptr},
    {"_stats", (PyCFunction)loop_stats, METH_NOARGS, nullptr},
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef loop_getset[] = {
    {"_debug", (getter)get_debug_attr, (setter)set_debug_attr, nullptr, nullptr},
    {"_stopping", (getter)get_stopping, nullptr, nullptr, nullptr},
    {"_closed", (getter)get_closed, nullptr, nullptr, nullptr},
    {"_thread_id", (getter)get_thread_id, nullptr, nullptr, nullptr},
    {"_current_handle", (getter)get_current_handle, nullptr, nullptr, nullptr},
    {"_coroutine_origin_tracking_enabled", (getter)get_origin_tracking,
     (setter)set_origin_tracking_attr, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

}  // namespace

PyTypeObject LoopCoreType = {PyVarObject_HEAD_INIT(nullptr, 0)};

namespace {
// Test hook (_tideloop._debug_clock_offset): moves every loop's clock, so that tests can check
// days-long timers without waiting for them. Always 0 outside tests. GIL-protected.
std::int64_t g_clock_offset_ns = 0;
}  // namespace

std::int64_t clock_offset_ns() {
  return g_clock_offset_ns;
}
void set_clock_offset_ns(std::int64_t ns) {
  g_clock_offset_ns = ns;
}

double monotonic_now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  std::int64_t ns =
      static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec + g_clock_offset_ns;
  // Same rounding as time.monotonic() (_PyTime_AsSecondsDouble), so loop.time() == monotonic().
  if (ns % 1000000000 == 0) return static_cast<double>(ns / 1000000000);
  volatile double d = static_cast<double>(ns);
  d = d / 1e9;
  return d;
}

bool loop_debug(LoopObject* loop) {
  return loop->debug;
}

void loop_timer_forget(LoopObject* loop, TimerHandleObject* t) {
  if (loop->st != nullptr) loop->st->timers.forget(&t->timer);
}

void loop_timer_cancelled(LoopObject* loop, TimerHandleObject* t) {
  if (loop->st == nullptr) return;
  if (loop->st->timers.cancel(&t->timer)) drop_timer(&t->timer);
}

int loop_type_ready() {
  LoopCoreType.tp_name = "tideloop._tideloop.LoopCore";
  LoopCoreType.tp_basicsize = sizeof(LoopObject);
  LoopCoreType.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE;
  LoopCoreType.tp_doc = "C core of tideloop.Loop: ready queue, timers, poller, inbox.";
  LoopCoreType.tp_new = loop_new;
  LoopCoreType.tp_dealloc = (destructor)loop_dealloc;
  LoopCoreType.tp_traverse = (traverseproc)loop_traverse;
  LoopCoreType.tp_clear = (inquiry)loop_clear;
  LoopCoreType.tp_methods = loop_methods;
  LoopCoreType.tp_getset = loop_getset;
  return PyType_Ready(&LoopCoreType);
}

}  // namespace tideloop::bridge
