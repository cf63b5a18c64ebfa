// The fd registry with Python ownership (loop/loop.hpp declares these): which watcher owns an
// fd, the strong reference the loop keeps to a watcher's Python owner while it is attached, and
// the deferred release that keeps a Watcher pointer valid for the rest of a batch of events.
#include <sys/epoll.h>

#include "loop/loop.hpp"

namespace tideloop::bridge {

void release_after_batch(LoopState& st, PyObject* obj) {
  if (obj == nullptr) return;
  if (st.dispatching) {
    st.release_after_batch.push_back(obj);
  } else {
    Py_DECREF(obj);
  }
}

void flush_batch_releases(LoopState& st) {
  // A release may run Python code (__del__, weakref callbacks) that detaches more watchers; with
  // `dispatching` false those release at once.
  std::vector<PyObject*> objs;
  objs.swap(st.release_after_batch);
  for (PyObject* o : objs) Py_DECREF(o);
}

int watcher_attach(LoopObject* loop, Watcher* w, int fd) {
  LoopState& st = S(loop);
  Watcher* cur = st.registry.owner(fd);
  if (cur != nullptr && cur != w) {
    if (cur->ops != &kFdWatchOps) {
      PyObject* o = fd_owner_object(loop, fd);
      if (o != nullptr) {
        PyErr_Format(PyExc_RuntimeError, "File descriptor %d is used by transport %R", fd, o);
      } else {
        PyErr_Format(PyExc_RuntimeError, "File descriptor %d is used by the loop itself", fd);
      }
      return -1;
    }
    // A stale add_reader/add_writer record (its fd was closed without remove_reader and the
    // number reused): the new owner replaces it, as a selector re-registration would.
    auto* fw = reinterpret_cast<FdWatch*>(cur);
    st.registry.detach(cur);
    fd_watch_clear(fw);
  }
  int err = st.registry.attach(w, fd);
  if (err != 0) {
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
  }
  if (PyObject* o = w->ops->owner ? w->ops->owner(w) : nullptr) Py_INCREF(o);
  return 0;
}

int watcher_set_interest(LoopObject* loop, Watcher* w, std::uint32_t events) {
  int err = S(loop).registry.set_interest(w, events);
  if (err != 0) {
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
  }
  return 0;
}

void watcher_detach(LoopObject* loop, Watcher* w) {
  if (!w->registered) return;
  LoopState& st = S(loop);
  st.registry.detach(w);
  if (PyObject* o = w->ops->owner ? w->ops->owner(w) : nullptr) release_after_batch(st, o);
}

void registry_close_all(LoopObject* loop) {
  LoopState& st = S(loop);
  std::vector<PyObject*> owners;
  st.registry.drain([&](Watcher* w) {
    if (w->ops->loop_closing != nullptr) w->ops->loop_closing(w, loop);
    if (PyObject* o = w->ops->owner ? w->ops->owner(w) : nullptr) owners.push_back(o);
  });
  for (PyObject* o : owners) Py_DECREF(o);
  flush_batch_releases(st);
}

PyObject* fd_owner_object(LoopObject* loop, int fd) {
  Watcher* w = S(loop).registry.owner(fd);
  if (w == nullptr) return nullptr;
  if (w->ops->object != nullptr) return w->ops->object(w);
  return w->ops->owner != nullptr ? w->ops->owner(w) : nullptr;
}

}  // namespace tideloop::bridge
