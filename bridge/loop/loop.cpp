// LoopCore, the loop object: its type (creation, GC, destruction), run_forever/stop/close, and
// the table of its C methods, most of which live in the room of their handle kind (loop.hpp
// lists them). The tick itself is in loop/tick.cpp.
#include "loop/loop.hpp"

#include <sys/epoll.h>

#include <vector>

#include "loop/args.hpp"

namespace tideloop::bridge {
namespace {

int set_origin_tracking(LoopObject* self, bool enabled) {
  if (enabled == self->origin_tracking) return 0;
  PyObject* r = PyObject_CallMethodObjArgs((PyObject*)self, g.str_set_coroutine_origin_tracking,
                                           enabled ? Py_True : Py_False, nullptr);
  if (r == nullptr) return -1;
  Py_DECREF(r);
  return 0;
}

// --- Python methods -----------------------------------------------------------------------

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
  std::vector<LoopState::PhaseEnd> pending;
  pending.swap(st.phase_end);
  for (auto& e : pending) Py_DECREF(e.obj);
}

void release_os_resources(LoopObject* self) {
  LoopState& st = S(self);
  registry_close_all(self);  // transports and servers stop using the loop; watches drop handles
  st.fd_watches.clear();
  close_signal_socket(st);
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

PyObject* loop_stats(LoopObject* self, PyObject*) {
  LoopState& st = S(self);
  return Py_BuildValue("{s:n,s:n,s:L,s:n,s:L,s:K}", "ready", (Py_ssize_t)st.ready.size(),
                       "scheduled", (Py_ssize_t)st.timers.size(), "timer_cancelled_count",
                       (long long)st.timers.cancelled_pending(), "watched_fds",
                       (Py_ssize_t)st.registry.active(), "executor_in_flight",
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
  st.wake_watcher.ops = &kWakeWatcherOps;
  st.wake_watcher.internal = true;
  if (watcher_attach(self, &st.wake_watcher, st.core->event_fd()) < 0 ||
      watcher_set_interest(self, &st.wake_watcher, EPOLLIN) < 0) {
    Py_DECREF(self);
    return nullptr;
  }
  return (PyObject*)self;
}

// The one walk over every queue that holds references for the loop: the ready ring and the
// timer queue (handles, visited through visit_owned_handle since handles are not GC-tracked), the
// registry (each watcher's owner, plus what its kind reports through WatcherOps::traverse), the
// releases deferred to the end of a batch, the work deferred to the end of a phase
// (defer_to_phase_end), and the executor's idle waiter. A new handle kind needs nothing here:
// its WatcherOps is the hook.
int visit_loop_queues(LoopState& st, visitproc visit, void* arg) {
  int r;
  for (std::size_t i = 0; i < st.ready.size(); ++i) {
    if ((r = visit_owned_handle(st.ready.at(i), visit, arg)) != 0) return r;
  }
  r = 0;
  st.timers.for_each([&](TimerEntry* e) {
    if (r == 0) r = visit_owned_handle(&timer_of(e)->base, visit, arg);
  });
  if (r != 0) return r;
  st.registry.for_each([&](Watcher* w) {
    if (r != 0) return;
    if (w->ops->owner != nullptr) {
      if (PyObject* o = w->ops->owner(w)) r = visit(o, arg);
    }
    if (r == 0 && w->ops->traverse != nullptr) r = w->ops->traverse(w, visit, arg);
  });
  if (r != 0) return r;
  for (PyObject* o : st.release_after_batch) Py_VISIT(o);
  for (auto& e : st.phase_end) Py_VISIT(e.obj);
  Py_VISIT(st.executor_idle_waiter);
  return 0;
}

int loop_traverse(LoopObject* self, visitproc visit, void* arg) {
  Py_VISIT(self->current_handle);
  Py_VISIT(self->agen_firstiter);
  Py_VISIT(self->agen_finalizer);
  if (self->st != nullptr) return visit_loop_queues(*self->st, visit, arg);
  return 0;
}

int loop_clear(LoopObject* self) {
  Py_CLEAR(self->current_handle);
  Py_CLEAR(self->agen_firstiter);
  Py_CLEAR(self->agen_finalizer);
  if (self->st != nullptr) {
    clear_queues(self);
    registry_close_all(self);
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

bool loop_debug(LoopObject* loop) {
  return loop->debug;
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
  // The loop's own methods, then each room's (loop.hpp). Built once, kept for the process.
  static std::vector<PyMethodDef> methods;
  methods.clear();
  for (const PyMethodDef* table : {static_cast<const PyMethodDef*>(loop_methods),
                                   fd_watch_loop_methods(), sock_loop_methods()}) {
    for (const PyMethodDef* m = table; m->ml_name != nullptr; ++m) methods.push_back(*m);
  }
  methods.push_back({nullptr, nullptr, 0, nullptr});
  LoopCoreType.tp_methods = methods.data();
  LoopCoreType.tp_getset = loop_getset;
  return PyType_Ready(&LoopCoreType);
}

}  // namespace tideloop::bridge
