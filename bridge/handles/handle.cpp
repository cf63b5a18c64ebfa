// Handle and TimerHandle: the objects returned by call_soon/call_later/call_at, and the unit of
// work in the loop's ready queue and timer queue.
//
// They follow asyncio.Handle/TimerHandle (cancel() drops callback and args, TimerHandle orders and
// hashes by `when`, debug mode keeps a source traceback and freezes the repr at cancel time), but
// are C objects allocated from a free list: call_soon is the hottest path of an event loop and a
// Python-level Handle costs an allocation plus several attribute stores per callback.
//
// Handles are deliberately *not* GC-tracked containers: under load (a burst of
// call_soon_threadsafe, thousands of pending timers) tracked handles made the cyclic GC walk and
// promote every pending callback, which cost ~40% of the run time. Cycles are still found:
//  * a pending handle that only the loop references is traversed by the loop itself
//    (loop/loop.cpp, visit_loop_queues visits its callback, arguments, context and loop), which is
//    exactly the set of references the loop owns through it;
//  * a one-shot handle that someone else still holds after it ran drops its callback and
//    arguments (loop/tick.cpp, run phase), so `self._timer = loop.call_later(..., self._cb)` does
//    not leave an uncollectable cycle behind once the timer fired;
//  * cancel() drops callback and arguments, as in asyncio.
// What is not found: a cycle through a pending handle that user code *also* holds, in a loop
// that is dropped without close() (asyncio warns about such loops with a ResourceWarning).
#include "loop/args.hpp"
#include "loop/loop.hpp"

namespace tideloop::bridge {
namespace {

// Enough recycled objects to cover a burst of a few thousand pending callbacks; beyond that the
// allocator is cheap relative to the burst. One list per exact type (sizes differ).
constexpr int kMaxFreeHandles = 4096;
HandleObject* g_handle_free[kMaxFreeHandles];
int g_handle_numfree = 0;
TimerHandleObject* g_timer_free[kMaxFreeHandles];
int g_timer_numfree = 0;

lenfunc g_context_len = nullptr;  // PyContext_Type's mp_length: the number of variables set

// The context a new handle runs in when none was given: a copy of the caller's current context,
// as asyncio's Handle does with contextvars.copy_context(). When the current context holds no
// variable at all (a thread that never set one: call_soon_threadsafe producers, most plain
// callbacks) the copy would be a new *empty* Context, which is created later, on the bridge
// thread, when the handle runs or someone asks for it (context_of): no allocation and no
// GC-tracked object on the producer's side. Measured: call_soon_threadsafe from one thread,
// 100k calls, 19.3 -> 11.6 ms (the copies were also what triggered the cyclic GC, which then
// walked every pending handle). Sets *out to a new reference, or to NULL for "an empty context,
// not created yet"; -1 with an exception.
int snapshot_current_context(PyObject** out) {
  PyObject* cur = PyThreadState_Get()->context;
  if (cur == nullptr || (g_context_len != nullptr && g_context_len(cur) == 0)) {
    *out = nullptr;
    return 0;
  }
  *out = PyContext_CopyCurrent();
  return *out == nullptr ? -1 : 0;
}

int init_fields(HandleObject* h, PyObject* callback, PyObject* const* args, Py_ssize_t nargs,
                PyObject* context, LoopObject* loop) {
  h->arg1 = nullptr;
  h->args = nullptr;
  h->nargs = nargs;
  h->repr = nullptr;
  h->source_traceback = nullptr;
  h->weakreflist = nullptr;
  h->cancelled = false;
  h->repeating = false;
  Py_INCREF(callback);
  h->callback = callback;
  Py_INCREF(loop);
  h->loop = loop;
  if (nargs == 1) {
    Py_INCREF(args[0]);
    h->arg1 = args[0];
  } else if (nargs > 1) {
    PyObject* t = PyTuple_New(nargs);
    if (t == nullptr) return -1;
    for (Py_ssize_t i = 0; i < nargs; ++i) {
      Py_INCREF(args[i]);
      PyTuple_SET_ITEM(t, i, args[i]);
    }
    h->args = t;
  }
  if (context == nullptr || context == Py_None) {
    if (snapshot_current_context(&h->context) < 0) return -1;
  } else {
    Py_INCREF(context);
    h->context = context;
  }
  if (loop_debug(loop) && g.h_extract_stack != nullptr) {
    h->source_traceback = PyObject_CallNoArgs(g.h_extract_stack);
    if (h->source_traceback == nullptr) return -1;
  }
  return 0;
}

// One empty Context kept for the next handle whose context is created lazily: a handle that
// dies owning the only reference to a context that is (still or again) empty and weakly
// unreferenced gives it back instead of freeing it. Such a context cannot be told apart from a
// new one (nothing else can reach it), and each context is used by one handle at a time.
PyObject* g_spare_context = nullptr;

void release_context(HandleObject* h) {
  PyObject* ctx = h->context;
  if (ctx == nullptr) return;
  h->context = nullptr;
  if (g_spare_context == nullptr && Py_REFCNT(ctx) == 1 && PyContext_CheckExact(ctx) &&
      g_context_len != nullptr && g_context_len(ctx) == 0 && PyContext_Type.tp_weaklistoffset > 0 &&
      *reinterpret_cast<PyObject**>(reinterpret_cast<char*>(ctx) +
                                    PyContext_Type.tp_weaklistoffset) == nullptr) {
    g_spare_context = ctx;  // the reference moves to the spare slot
    return;
  }
  Py_DECREF(ctx);
}

void clear_fields(HandleObject* h) {
  Py_CLEAR(h->callback);
  Py_CLEAR(h->arg1);
  Py_CLEAR(h->args);
  release_context(h);
  Py_CLEAR(h->loop);
  Py_CLEAR(h->repr);
  Py_CLEAR(h->source_traceback);
}

void handle_dealloc(HandleObject* h) {
  if (h->weakreflist != nullptr) PyObject_ClearWeakRefs(reinterpret_cast<PyObject*>(h));
  if (h->is_timer) {
    auto* t = reinterpret_cast<TimerHandleObject*>(h);
    if (t->timer.index != TimerEntry::kNoIndex && h->loop != nullptr) loop_timer_forget(h->loop, t);
  }
  clear_fields(h);
  PyTypeObject* tp = Py_TYPE(h);
  if (tp == &HandleType && g_handle_numfree < kMaxFreeHandles) {
    g_handle_free[g_handle_numfree++] = h;
  } else if (tp == &TimerHandleType && g_timer_numfree < kMaxFreeHandles) {
    g_timer_free[g_timer_numfree++] = reinterpret_cast<TimerHandleObject*>(h);
  } else {
    tp->tp_free(h);
  }
}

PyObject* handle_repr(HandleObject* h) {
  if (h->repr != nullptr) return Py_NewRef(h->repr);
  if (g.h_handle_repr != nullptr) return PyObject_CallOneArg(g.h_handle_repr, (PyObject*)h);
  return PyUnicode_FromFormat("<%s object at %p>", Py_TYPE(h)->tp_name, h);
}

PyObject* handle_cancel(HandleObject* h, PyObject*) {
  if (!h->cancelled) {
    h->cancelled = true;
    if (h->loop != nullptr && loop_debug(h->loop)) {
      // Keep callback and arguments visible in "Executing <Handle...> took..." warnings.
      PyObject* r = handle_repr(h);
      if (r == nullptr) return nullptr;
      Py_XSETREF(h->repr, r);
    }
    Py_CLEAR(h->callback);
    Py_CLEAR(h->arg1);
    Py_CLEAR(h->args);
    if (h->is_timer) {
      // Last: the loop may drop its reference (the caller still holds one).
      auto* t = reinterpret_cast<TimerHandleObject*>(h);
      if (t->timer.where != TimerQueue::kNone && h->loop != nullptr) {
        loop_timer_cancelled(h->loop, t);
      }
    }
  }
  Py_RETURN_NONE;
}

PyObject* handle_cancelled(HandleObject* h, PyObject*) {
  return PyBool_FromLong(h->cancelled);
}

PyObject* handle_get_context(HandleObject* h, PyObject*) {
  return Py_XNewRef(context_of(h));
}

PyObject* handle_py_run(HandleObject* h, PyObject*) {
  if (h->callback == nullptr) Py_RETURN_NONE;  // cancelled: asyncio would raise TypeError
  if (handle_run(h) < 0) return nullptr;
  Py_RETURN_NONE;
}

PyObject* get_callback(HandleObject* h, void*) {
  return Py_NewRef(h->callback != nullptr ? h->callback : Py_None);
}
PyObject* get_args(HandleObject* h, void*) {
  if (h->callback == nullptr) Py_RETURN_NONE;
  if (h->nargs == 0) return PyTuple_New(0);
  if (h->nargs == 1) return PyTuple_Pack(1, h->arg1);
  return Py_NewRef(h->args);
}
PyObject* get_cancelled(HandleObject* h, void*) {
  return PyBool_FromLong(h->cancelled);
}
PyObject* get_loop(HandleObject* h, void*) {
  return Py_NewRef(h->loop != nullptr ? (PyObject*)h->loop : Py_None);
}
PyObject* get_context(HandleObject* h, void*) {
  return Py_XNewRef(context_of(h));
}
PyObject* get_repr(HandleObject* h, void*) {
  return Py_NewRef(h->repr != nullptr ? h->repr : Py_None);
}
PyObject* get_source_traceback(HandleObject* h, void*) {
  return Py_NewRef(h->source_traceback != nullptr ? h->source_traceback : Py_None);
}
int set_source_traceback(HandleObject* h, PyObject* v, void*) {
  if (v == Py_None) v = nullptr;
  Py_XINCREF(v);
  Py_XSETREF(h->source_traceback, v);
  return 0;
}

PyMethodDef handle_methods[] = {
    {"cancel", (PyCFunction)handle_cancel, METH_NOARGS, "Cancel the callback."},
    {"cancelled", (PyCFunction)handle_cancelled, METH_NOARGS, "True if cancelled."},
    {"get_context", (PyCFunction)handle_get_context, METH_NOARGS, "The callback's context."},
    {"_run", (PyCFunction)handle_py_run, METH_NOARGS, "Run the callback now (asyncio internal)."},
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef handle_getset[] = {
    {"_callback", (getter)get_callback, nullptr, nullptr, nullptr},
    {"_args", (getter)get_args, nullptr, nullptr, nullptr},
    {"_cancelled", (getter)get_cancelled, nullptr, nullptr, nullptr},
    {"_loop", (getter)get_loop, nullptr, nullptr, nullptr},
    {"_context", (getter)get_context, nullptr, nullptr, nullptr},
    {"_repr", (getter)get_repr, nullptr, nullptr, nullptr},
    {"_source_traceback", (getter)get_source_traceback, (setter)set_source_traceback, nullptr,
     nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

// --- TimerHandle --------------------------------------------------------------------------

PyObject* timer_when(TimerHandleObject* t, PyObject*) {
  return PyFloat_FromDouble(t->timer.when);
}
PyObject* get_when(TimerHandleObject* t, void*) {
  return PyFloat_FromDouble(t->timer.when);
}
PyObject* get_scheduled(TimerHandleObject* t, void*) {
  return PyBool_FromLong(t->timer.where != TimerQueue::kNone);  // the loop's queue holds it
}

Py_hash_t timer_hash(TimerHandleObject* t) {
  PyObject* f = PyFloat_FromDouble(t->timer.when);
  if (f == nullptr) return -1;
  Py_hash_t hv = PyObject_Hash(f);
  Py_DECREF(f);
  return hv;
}

PyObject* timer_richcompare(PyObject* a, PyObject* b, int op) {
  if (!PyObject_TypeCheck(a, &TimerHandleType) || !PyObject_TypeCheck(b, &TimerHandleType)) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  auto* x = reinterpret_cast<TimerHandleObject*>(a);
  auto* y = reinterpret_cast<TimerHandleObject*>(b);
  auto equal = [&]() -> int {  // asyncio: when, callback, args and cancelled all equal
    if (x->timer.when != y->timer.when || x->base.cancelled != y->base.cancelled) return 0;
    if (a == b) return 1;
    PyObject* xa = get_args(&x->base, nullptr);
    PyObject* ya = get_args(&y->base, nullptr);
    PyObject* xc = get_callback(&x->base, nullptr);
    PyObject* yc = get_callback(&y->base, nullptr);
    int r = -1;
    if (xa && ya && xc && yc) {
      r = PyObject_RichCompareBool(xc, yc, Py_EQ);
      if (r == 1) r = PyObject_RichCompareBool(xa, ya, Py_EQ);
    }
    Py_XDECREF(xa);
    Py_XDECREF(ya);
    Py_XDECREF(xc);
    Py_XDECREF(yc);
    return r;
  };
  int r;
  switch (op) {
    case Py_LT:
      return PyBool_FromLong(x->timer.when < y->timer.when);
    case Py_GT:
      return PyBool_FromLong(x->timer.when > y->timer.when);
    case Py_LE:
      if (x->timer.when < y->timer.when) Py_RETURN_TRUE;
      r = equal();
      return r < 0 ? nullptr : PyBool_FromLong(r);
    case Py_GE:
      if (x->timer.when > y->timer.when) Py_RETURN_TRUE;
      r = equal();
      return r < 0 ? nullptr : PyBool_FromLong(r);
    case Py_EQ:
      r = equal();
      return r < 0 ? nullptr : PyBool_FromLong(r);
    case Py_NE:
      r = equal();
      return r < 0 ? nullptr : PyBool_FromLong(!r);
  }
  Py_RETURN_NOTIMPLEMENTED;
}

PyMethodDef timer_methods[] = {
    {"when", (PyCFunction)timer_when, METH_NOARGS, "The absolute deadline, in loop.time() units."},
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef timer_getset[] = {
    {"_when", (getter)get_when, nullptr, nullptr, nullptr},
    {"_scheduled", (getter)get_scheduled, nullptr, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

}  // namespace

PyTypeObject HandleType = {PyVarObject_HEAD_INIT(nullptr, 0)};
PyTypeObject TimerHandleType = {PyVarObject_HEAD_INIT(nullptr, 0)};

int handle_types_ready() {
  HandleType.tp_name = "tideloop._tideloop.Handle";
  HandleType.tp_basicsize = sizeof(HandleObject);
  HandleType.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE;
  HandleType.tp_doc = "Object returned by callback registration methods (asyncio.Handle API).";
  HandleType.tp_dealloc = (destructor)handle_dealloc;
  HandleType.tp_repr = (reprfunc)handle_repr;
  HandleType.tp_methods = handle_methods;
  HandleType.tp_getset = handle_getset;
  HandleType.tp_weaklistoffset = offsetof(HandleObject, weakreflist);
  if (PyType_Ready(&HandleType) < 0) return -1;
  if (PyContext_Type.tp_as_mapping != nullptr)
    g_context_len = PyContext_Type.tp_as_mapping->mp_length;

  TimerHandleType.tp_name = "tideloop._tideloop.TimerHandle";
  TimerHandleType.tp_basicsize = sizeof(TimerHandleObject);
  TimerHandleType.tp_flags = Py_TPFLAGS_DEFAULT;
  TimerHandleType.tp_doc = "Object returned by call_later/call_at (asyncio.TimerHandle API).";
  TimerHandleType.tp_base = &HandleType;
  TimerHandleType.tp_dealloc = (destructor)handle_dealloc;
  TimerHandleType.tp_repr = (reprfunc)handle_repr;
  TimerHandleType.tp_hash = (hashfunc)timer_hash;
  TimerHandleType.tp_richcompare = timer_richcompare;
  TimerHandleType.tp_methods = timer_methods;
  TimerHandleType.tp_getset = timer_getset;
  return PyType_Ready(&TimerHandleType);
}

HandleObject* handle_new(PyObject* callback, PyObject* const* args, Py_ssize_t nargs,
                         PyObject* context, LoopObject* loop) {
  HandleObject* h;
  if (g_handle_numfree > 0) {
    h = g_handle_free[--g_handle_numfree];
    // safety: the object came from PyObject_New and was cleared by dealloc; PyObject_Init
    // resets the refcount and type as a fresh allocation would.
    PyObject_Init(reinterpret_cast<PyObject*>(h), &HandleType);
  } else {
    h = PyObject_New(HandleObject, &HandleType);
    if (h == nullptr) return nullptr;
  }
  h->is_timer = false;
  // Fields must be valid before any early return: dealloc clears them.
  h->callback = h->arg1 = h->args = h->context = h->repr = h->source_traceback = nullptr;
  h->loop = nullptr;
  h->weakreflist = nullptr;
  if (init_fields(h, callback, args, nargs, context, loop) < 0) {
    Py_DECREF(h);
    return nullptr;
  }
  return h;
}

TimerHandleObject* timer_handle_new(double when, PyObject* callback, PyObject* const* args,
                                    Py_ssize_t nargs, PyObject* context, LoopObject* loop) {
  TimerHandleObject* t;
  if (g_timer_numfree > 0) {
    t = g_timer_free[--g_timer_numfree];
    PyObject_Init(reinterpret_cast<PyObject*>(t), &TimerHandleType);
  } else {
    t = PyObject_New(TimerHandleObject, &TimerHandleType);
    if (t == nullptr) return nullptr;
  }
  HandleObject* h = &t->base;
  h->is_timer = true;
  t->timer.when = when;
  t->timer.where = TimerQueue::kNone;
  t->timer.index = TimerEntry::kNoIndex;
  t->timer.cancelled = false;
  h->callback = h->arg1 = h->args = h->context = h->repr = h->source_traceback = nullptr;
  h->loop = nullptr;
  h->weakreflist = nullptr;
  if (init_fields(h, callback, args, nargs, context, loop) < 0) {
    Py_DECREF(t);
    return nullptr;
  }
  return t;
}

void handle_release_callback(HandleObject* h) {
  Py_CLEAR(h->callback);
  Py_CLEAR(h->arg1);
  Py_CLEAR(h->args);
}

PyObject* context_of(HandleObject* h) {
  if (h->context == nullptr) {
    if (g_spare_context != nullptr) {
      h->context = g_spare_context;
      g_spare_context = nullptr;
    } else {
      h->context = PyContext_New();
    }
  }
  return h->context;
}

int handle_run(HandleObject* h) {
  PyObject* ctx = context_of(h);
  PyObject* res = nullptr;
  if (ctx != nullptr && PyContext_Enter(ctx) == 0) {
    // Hold our own references: the callback may cancel its own handle, which clears the fields.
    PyObject* cb = Py_NewRef(h->callback);
    if (h->nargs <= 1) {
      PyObject* stack[2] = {nullptr, h->arg1};
      Py_XINCREF(stack[1]);
      res = PyObject_Vectorcall(cb, stack + 1, h->nargs | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
      Py_XDECREF(stack[1]);
    } else {
      PyObject* args = Py_NewRef(h->args);
      res = PyObject_Vectorcall(cb, &PyTuple_GET_ITEM(args, 0), h->nargs, nullptr);
      Py_DECREF(args);
    }
    Py_DECREF(cb);
    if (PyContext_Exit(ctx) < 0) Py_CLEAR(res);
  }
  if (res != nullptr) {
    Py_DECREF(res);
    return 0;
  }
  if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
    return -1;
  }
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyErr_NormalizeException(&type, &value, &tb);
  if (tb != nullptr && value != nullptr) PyException_SetTraceback(value, tb);
  Py_XDECREF(type);
  Py_XDECREF(tb);
  if (value == nullptr) return 0;
  PyObject* r = nullptr;
  if (g.h_callback_exception != nullptr) {
    r = PyObject_CallFunctionObjArgs(g.h_callback_exception, (PyObject*)h, value, nullptr);
  } else {
    PyErr_SetObject((PyObject*)Py_TYPE(value), value);
    PyErr_WriteUnraisable((PyObject*)h);
    r = Py_NewRef(Py_None);
  }
  Py_DECREF(value);
  if (r == nullptr) return -1;
  Py_DECREF(r);
  return 0;
}

// --- scheduling: call_soon, call_soon_threadsafe --------------------------------------

// call_soon and call_soon_threadsafe: the same handle onto the same ready queue. Every Python
// caller holds the GIL, and so does the bridge whenever it touches the ready queue, so a
// threadsafe call appends directly too (as asyncio appends to _ready); only native threads,
// which run without the GIL, use the lock-free inbox. A threadsafe call then wakes the bridge
// if it sleeps (one load when it is awake or already notified).
namespace {

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

}  // namespace

PyObject* loop_call_soon(LoopObject* self, PyObject* const* args, Py_ssize_t nargsf,
                         PyObject* kwnames) {
  return call_soon_impl(self, args, nargsf, kwnames, /*threadsafe=*/false);
}

PyObject* loop_call_soon_threadsafe(LoopObject* self, PyObject* const* args, Py_ssize_t nargsf,
                                    PyObject* kwnames) {
  return call_soon_impl(self, args, nargsf, kwnames, /*threadsafe=*/true);
}

// Handles are not GC-tracked (see the top of this file). A handle that only the loop references is
// part of the loop as far as the GC is concerned: visiting its references here is visiting
// references the loop owns through it. A handle with other owners is left alone (its referents then
// look externally referenced: a possible leak, never a premature free).
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

}  // namespace tideloop::bridge
