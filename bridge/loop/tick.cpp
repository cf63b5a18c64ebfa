// The tick of the bridge thread: drain the inbox, wait, dispatch readiness, run ready handles.
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
#include <sys/epoll.h>

#include <vector>

#include "loop/loop.hpp"

namespace tideloop::bridge {
namespace {

constexpr int kMaxEventsPerWait = 256;

int process_events(LoopObject* self, epoll_event* events, int n) {
  LoopState& st = S(self);
  st.dispatching = true;
  int r = 0;
  for (int i = 0; i < n && r == 0; ++i) {
    // The tag is the Watcher's address (engine/poller.hpp).
    auto* w = reinterpret_cast<Watcher*>(events[i].data.u64);  // NOLINT(performance-no-int-to-ptr)
    // Detached earlier in this batch (its memory is kept until the batch ends): skip.
    if (!w->registered) continue;
    r = w->ops->on_events(w, self, events[i].events);
  }
  st.dispatching = false;
  if (!st.release_after_batch.empty()) flush_batch_releases(st);
  return r;
}

int wake_on_events(Watcher*, LoopObject* self, std::uint32_t) {
  if (S(self).core) S(self).core->drain_wake();
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

}  // namespace

const WatcherOps kWakeWatcherOps = {"wake", wake_on_events, nullptr, nullptr, nullptr};

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
    nodes[i]->deliver(nodes[i], self);
  }
  nodes.clear();
}

void discard_inbox(LoopObject* self) {
  LoopState& st = S(self);
  if (!st.core) return;
  InboxNode* n = st.core->take_all();
  while (n != nullptr) {
    InboxNode* next = n->next;
    n->discard(n);
    n = next;
  }
}

void defer_to_phase_end(LoopObject* loop, PyObject* obj, int (*run)(PyObject*)) {
  S(loop).phase_end.push_back({Py_NewRef(obj), run});
}

int run_phase_end(LoopObject* loop) {
  LoopState& st = S(loop);
  // An entry's run may defer more work (a flush that resumes a protocol which writes again):
  // that goes into the next round of this loop, still before the loop blocks.
  int r = 0;
  while (!st.phase_end.empty() && r == 0) {
    std::vector<LoopState::PhaseEnd> batch;
    batch.swap(st.phase_end);
    std::size_t i = 0;
    for (; i < batch.size() && r == 0; ++i) {
      r = batch[i].run(batch[i].obj);
      Py_DECREF(batch[i].obj);
    }
    // An exception stops the loop: the rest runs at the next phase end.
    for (; i < batch.size(); ++i) st.phase_end.push_back(batch[i]);
  }
  return r;
}

int loop_tick(LoopObject* self, bool* wakeup_checked) {
  LoopState& st = S(self);
  drain_inbox(self);

  epoll_event events[kMaxEventsPerWait];
  int n = 0;
  if (!st.ready.empty() || self->stopping) {
    if (st.registry.active() > 0) n = st.poller.wait(events, kMaxEventsPerWait, 0);
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
      } else if (st.registry.active() > 0) {
        n = st.poller.wait(events, kMaxEventsPerWait, 0);
      }
    } else if (st.registry.active() > 0) {
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
  if (!st.phase_end.empty() && run_phase_end(self) < 0) return -1;
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
  if (!st.phase_end.empty() && run_phase_end(self) < 0) return -1;
  return 0;
}

}  // namespace tideloop::bridge
