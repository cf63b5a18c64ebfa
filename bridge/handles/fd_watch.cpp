// add_reader/add_writer/remove_reader/remove_writer: asyncio's fd watching with level-triggered
// readiness (an fd that stays readable runs its reader every tick, as with selectors). One FdWatch
// record per fd number (loop/loop.hpp) holds the two handles; readiness pushes them onto the
// ready queue, so they run in the tick's ready batch exactly like asyncio's selector callbacks.
#include <sys/epoll.h>

#include "loop/args.hpp"
#include "loop/loop.hpp"

namespace tideloop::bridge {
namespace {

FdWatch* watch_of(Watcher* w) {
  return reinterpret_cast<FdWatch*>(w);
}

// Brings the poller's interest for fd in line with the record's handles: attached with the
// events wanted, detached when none. Returns 0 or -1 with an exception.
int fd_sync(LoopObject* loop, FdWatch* fw, int fd) {
  std::uint32_t events = (fw->reader ? EPOLLIN : 0u) | (fw->writer ? EPOLLOUT : 0u);
  if (events == 0) {
    watcher_detach(loop, &fw->watcher);
    return 0;
  }
  if (!fw->watcher.registered && watcher_attach(loop, &fw->watcher, fd) < 0) return -1;
  if (watcher_set_interest(loop, &fw->watcher, events) < 0) return -1;
  return 0;
}

// Readiness: like selectors.EpollSelector, an error or hang-up wakes both directions. A handle
// cancelled by its owner (Handle.cancel()) is dropped here, at its next readiness.
int fd_on_events(Watcher* w, LoopObject* loop, std::uint32_t ev) {
  FdWatch* fw = watch_of(w);
  LoopState& st = S(loop);
  const int fd = w->fd;
  if ((ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) && fw->reader != nullptr) {
    if (fw->reader->cancelled) {
      HandleObject* old = fw->reader;
      fw->reader = nullptr;
      if (fd_sync(loop, fw, fd) < 0) PyErr_Clear();
      Py_DECREF(old);
    } else {
      Py_INCREF(fw->reader);
      st.ready.push(fw->reader);
    }
  }
  if ((ev & (EPOLLOUT | EPOLLHUP | EPOLLERR)) && fw->writer != nullptr) {
    if (fw->writer->cancelled) {
      HandleObject* old = fw->writer;
      fw->writer = nullptr;
      if (fd_sync(loop, fw, fd) < 0) PyErr_Clear();
      Py_DECREF(old);
    } else {
      Py_INCREF(fw->writer);
      st.ready.push(fw->writer);
    }
  }
  return 0;
}

int fd_traverse(Watcher* w, visitproc visit, void* arg) {
  int r = visit_owned_handle(watch_of(w)->reader, visit, arg);
  return r != 0 ? r : visit_owned_handle(watch_of(w)->writer, visit, arg);
}

void fd_loop_closing(Watcher* w, LoopObject*) {
  FdWatch* fw = watch_of(w);
  Py_CLEAR(fw->reader);
  Py_CLEAR(fw->writer);
}

FdWatch* fd_watch_for(LoopState& st, int fd) {
  if (static_cast<std::size_t>(fd) >= st.fd_watches.size()) st.fd_watches.resize(fd + 1);
  auto& slot = st.fd_watches[fd];
  if (!slot) {
    slot = std::make_unique<FdWatch>();
    slot->watcher.ops = &kFdWatchOps;
  }
  return slot.get();
}

// asyncio's _ensure_fd_no_transport: a transport's fd is not the user's to watch.
int ensure_fd_no_transport(LoopObject* self, int fd) {
  PyObject* owner = fd_owner_object(self, fd);
  if (owner == nullptr) return 0;
  PyErr_Format(PyExc_RuntimeError, "File descriptor %d is used by transport %R", fd, owner);
  return -1;
}

// `internal`: asyncio's _add_reader/_add_writer, called by asyncio's own sock_* and accept code
// (tideloop/_net.py): no transport check (the caller made it) and the handle is returned.
PyObject* add_watch(LoopObject* self, PyObject* const* args, Py_ssize_t nargsf, PyObject* kwnames,
                    bool writer, const char* fname, bool internal = false) {
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  if (no_kwargs(fname, kwnames) < 0) return nullptr;
  if (nargs < 2) {
    PyErr_Format(PyExc_TypeError, "%s() missing required arguments 'fd' and 'callback'", fname);
    return nullptr;
  }
  int fd = fileobj_to_fd(args[0]);
  if (fd < 0) return nullptr;
  if (check_closed(self) < 0 || check_callback(self, args[1], fname) < 0) return nullptr;
  if (!internal && ensure_fd_no_transport(self, fd) < 0) return nullptr;
  LoopState& st = S(self);
  HandleObject* h = handle_new(args[1], args + 2, nargs - 2, nullptr, self);
  if (h == nullptr) return nullptr;
  h->repeating = true;
  FdWatch* fw = fd_watch_for(st, fd);
  HandleObject*& slot = writer ? fw->writer : fw->reader;
  HandleObject* old = slot;
  slot = h;
  if (fd_sync(self, fw, fd) < 0) {
    slot = old;
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    if (fd_sync(self, fw, fd) < 0) PyErr_Clear();
    PyErr_Restore(et, ev, etb);
    Py_DECREF(h);
    return nullptr;
  }
  if (old != nullptr) {
    PyObject* r = PyObject_CallMethod((PyObject*)old, "cancel", nullptr);
    Py_XDECREF(r);
    Py_DECREF(old);
    if (r == nullptr) return nullptr;
  }
  if (internal) return Py_NewRef((PyObject*)h);
  Py_RETURN_NONE;
}

PyObject* remove_watch(LoopObject* self, PyObject* fdobj, bool writer, bool internal = false) {
  int fd = fileobj_to_fd(fdobj);
  if (fd < 0) return nullptr;
  if (self->closed) Py_RETURN_FALSE;
  if (!internal && ensure_fd_no_transport(self, fd) < 0) return nullptr;
  LoopState& st = S(self);
  if (static_cast<std::size_t>(fd) >= st.fd_watches.size() || !st.fd_watches[fd]) Py_RETURN_FALSE;
  FdWatch* fw = st.fd_watches[fd].get();
  HandleObject*& slot = writer ? fw->writer : fw->reader;
  HandleObject* old = slot;
  if (old == nullptr) Py_RETURN_FALSE;
  slot = nullptr;
  if (fd_sync(self, fw, fd) < 0) PyErr_Clear();
  PyObject* r = PyObject_CallMethod((PyObject*)old, "cancel", nullptr);
  Py_DECREF(old);
  if (r == nullptr) return nullptr;
  Py_DECREF(r);
  Py_RETURN_TRUE;
}

}  // namespace

const WatcherOps kFdWatchOps = {"fd", fd_on_events, nullptr, fd_traverse, fd_loop_closing};

void fd_watch_clear(FdWatch* fw) {
  for (HandleObject** slot : {&fw->reader, &fw->writer}) {
    HandleObject* h = *slot;
    *slot = nullptr;
    if (h == nullptr) continue;
    PyObject* r = PyObject_CallMethod((PyObject*)h, "cancel", nullptr);
    if (r == nullptr) PyErr_WriteUnraisable((PyObject*)h);
    Py_XDECREF(r);
    Py_DECREF(h);
  }
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

namespace {

PyObject* loop_add_reader_internal(LoopObject* self, PyObject* const* args, Py_ssize_t nargsf,
                                   PyObject* kwnames) {
  return add_watch(self, args, nargsf, kwnames, false, "_add_reader", true);
}
PyObject* loop_add_writer_internal(LoopObject* self, PyObject* const* args, Py_ssize_t nargsf,
                                   PyObject* kwnames) {
  return add_watch(self, args, nargsf, kwnames, true, "_add_writer", true);
}
PyObject* loop_remove_reader_internal(LoopObject* self, PyObject* fd) {
  return remove_watch(self, fd, false, true);
}
PyObject* loop_remove_writer_internal(LoopObject* self, PyObject* fd) {
  return remove_watch(self, fd, true, true);
}
// The transport (or other Python owner) of fd, or None: asyncio's loop._transports[fd].
PyObject* loop_fd_owner(LoopObject* self, PyObject* fdobj) {
  int fd = fileobj_to_fd(fdobj);
  if (fd < 0) return nullptr;
  if (self->closed) Py_RETURN_NONE;
  PyObject* o = fd_owner_object(self, fd);
  return Py_NewRef(o != nullptr ? o : Py_None);
}

PyMethodDef fd_watch_methods[] = {
    {"_add_reader", (PyCFunction)(void (*)(void))loop_add_reader_internal,
     METH_FASTCALL | METH_KEYWORDS,
     "asyncio's _add_reader: no transport check, returns the handle"},
    {"_add_writer", (PyCFunction)(void (*)(void))loop_add_writer_internal,
     METH_FASTCALL | METH_KEYWORDS,
     "asyncio's _add_writer: no transport check, returns the handle"},
    {"_remove_reader", (PyCFunction)loop_remove_reader_internal, METH_O, nullptr},
    {"_remove_writer", (PyCFunction)loop_remove_writer_internal, METH_O, nullptr},
    {"_fd_owner", (PyCFunction)loop_fd_owner, METH_O,
     "_fd_owner(fd): the transport that owns fd, or None"},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

const PyMethodDef* fd_watch_loop_methods() {
  return fd_watch_methods;
}

}  // namespace tideloop::bridge
