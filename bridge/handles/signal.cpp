// The loop's signal wake-up: a socket pair whose write end is Python's signal.set_wakeup_fd
// target. Python's C-level handler writes the signal number there, which ends the loop's wait
// even when the signal was delivered to another thread; the loop reads the numbers and runs the
// handlers of add_signal_handler (tideloop/_loop.py) through Loop._handle_signal. A run_forever
// on the main thread installs the wake-up fd for its duration (unless someone else owns it), so
// Ctrl-C interrupts a wait promptly, as with asyncio.
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "loop/args.hpp"
#include "loop/loop.hpp"

namespace tideloop::bridge {
namespace {

int ensure_signal_socket(LoopObject* loop) {
  LoopState& st = S(loop);
  if (st.signal_rfd >= 0) return 0;
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) {
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
  }
  st.signal_watcher.ops = &kSignalWatcherOps;
  st.signal_watcher.internal = true;
  if (watcher_attach(loop, &st.signal_watcher, sv[0]) < 0 ||
      watcher_set_interest(loop, &st.signal_watcher, EPOLLIN) < 0) {
    watcher_detach(loop, &st.signal_watcher);
    ::close(sv[0]);
    ::close(sv[1]);
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

int signal_on_events(Watcher*, LoopObject* self, std::uint32_t) {
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

}  // namespace

const WatcherOps kSignalWatcherOps = {"signal", signal_on_events, nullptr, nullptr, nullptr};

// Before the first blocking wait of a run on the main thread: point Python's signal wakeup fd at
// our socket (unless someone else owns it), so a signal delivered to any thread ends the wait.
void install_wakeup_for_run(LoopObject* self, bool* checked) {
  LoopState& st = S(self);
  if (*checked) return;
  *checked = true;
  if (st.wakeup_permanent || !_PyOS_IsMainThread()) return;
  if (ensure_signal_socket(self) < 0) {
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

void close_signal_socket(LoopState& st) {
  if (st.signal_rfd >= 0) ::close(st.signal_rfd);
  if (st.signal_wfd >= 0) ::close(st.signal_wfd);
  st.signal_rfd = st.signal_wfd = -1;
}

PyObject* loop_signal_wakeup_fd(LoopObject* self, PyObject*) {
  if (check_closed(self) < 0) return nullptr;
  if (ensure_signal_socket(self) < 0) return nullptr;
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

}  // namespace tideloop::bridge
