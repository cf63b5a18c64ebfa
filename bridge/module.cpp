// Module `tideloop._tideloop`: registers the types, caches asyncio's C callables and interned
// names, and receives the Python helpers of tideloop/_loop.py (formatting, logging, debug-mode
// checks: the cold paths that are better written in Python).
#include "engine/poller.hpp"
#include "internal.hpp"
#include "loop/loop.hpp"

#ifndef TIDELOOP_VERSION
#define TIDELOOP_VERSION "0.0.0"
#endif

namespace tideloop::bridge {

ModuleState g;

// Shared by every room's init (internal.hpp).
PyObject* import_attr(const char* module, const char* name) {
  PyObject* m = PyImport_ImportModule(module);
  if (m == nullptr) return nullptr;
  PyObject* a = PyObject_GetAttrString(m, name);
  Py_DECREF(m);
  return a;
}

int intern(PyObject** slot, const char* s) {
  *slot = PyUnicode_InternFromString(s);
  return *slot == nullptr ? -1 : 0;
}

namespace {

int init_state() {
  if (intern(&g.str_context, "context") < 0 || intern(&g.str_loop, "loop") < 0 ||
      intern(&g.str_call_exception_handler, "call_exception_handler") < 0 ||
      intern(&g.str_firstiter, "firstiter") < 0 || intern(&g.str_finalizer, "finalizer") < 0 ||
      intern(&g.str_asyncgen_firstiter_hook, "_asyncgen_firstiter_hook") < 0 ||
      intern(&g.str_asyncgen_finalizer_hook, "_asyncgen_finalizer_hook") < 0 ||
      intern(&g.str_set_coroutine_origin_tracking, "_set_coroutine_origin_tracking") < 0 ||
      intern(&g.str_slow_callback_duration, "slow_callback_duration") < 0 ||
      intern(&g.str_handle_signal, "_handle_signal") < 0 ||
      intern(&g.str_warn_on_full_buffer, "warn_on_full_buffer") < 0 ||
      intern(&g.str_cancelled, "cancelled") < 0 || intern(&g.str_set_result, "set_result") < 0 ||
      intern(&g.str_set_exception, "set_exception") < 0) {
    return -1;
  }
  g.kwnames_context = PyTuple_Pack(1, g.str_context);
  g.kwnames_loop = PyTuple_Pack(1, g.str_loop);
  g.kwnames_agen_hooks = PyTuple_Pack(2, g.str_firstiter, g.str_finalizer);
  g.kwnames_wakeup = PyTuple_Pack(1, g.str_warn_on_full_buffer);
  if (!g.kwnames_context || !g.kwnames_loop || !g.kwnames_agen_hooks || !g.kwnames_wakeup)
    return -1;
  // asyncio's C accelerator: futures and tasks are asyncio's own (what uvloop does too).
  g.future_type = import_attr("_asyncio", "Future");
  g.get_running_loop = import_attr("_asyncio", "_get_running_loop");
  g.set_running_loop = import_attr("_asyncio", "_set_running_loop");
  g.sys_get_asyncgen_hooks = import_attr("sys", "get_asyncgen_hooks");
  g.sys_set_asyncgen_hooks = import_attr("sys", "set_asyncgen_hooks");
  g.signal_set_wakeup_fd = import_attr("signal", "set_wakeup_fd");
  if (!g.future_type || !g.get_running_loop || !g.set_running_loop || !g.sys_get_asyncgen_hooks ||
      !g.sys_set_asyncgen_hooks || !g.signal_set_wakeup_fd) {
    return -1;
  }
  return 0;
}

PyObject* init_helpers(PyObject*, PyObject* args, PyObject* kwargs) {
  static const char* kwlist[] = {"callback_exception", "handle_repr",       "extract_stack",
                                 "check_callback",     "log_slow_callback", nullptr};
  PyObject *a, *b, *c, *d, *e;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO:_init_helpers", (char**)kwlist, &a, &b, &c,
                                   &d, &e)) {
    return nullptr;
  }
  for (PyObject* f : {a, b, c, d, e}) {
    if (!PyCallable_Check(f)) {
      PyErr_SetString(PyExc_TypeError, "helpers must be callable");
      return nullptr;
    }
  }
  Py_XSETREF(g.h_callback_exception, Py_NewRef(a));
  Py_XSETREF(g.h_handle_repr, Py_NewRef(b));
  Py_XSETREF(g.h_extract_stack, Py_NewRef(c));
  Py_XSETREF(g.h_check_callback, Py_NewRef(d));
  Py_XSETREF(g.h_log_slow_callback, Py_NewRef(e));
  Py_RETURN_NONE;
}

PyObject* debug_stats(PyObject*, PyObject*) {
  return executor_debug_stats();
}
PyObject* debug_reset(PyObject*, PyObject*) {
  executor_debug_reset();
  Py_RETURN_NONE;
}
PyObject* probe(PyObject*, PyObject*) {
  return debug_probe_native_without_gil();
}
PyObject* clock_offset(PyObject*, PyObject* arg) {
  double sec = PyFloat_AsDouble(arg);
  if (sec == -1.0 && PyErr_Occurred()) return nullptr;
  double old = static_cast<double>(clock_offset_ns()) / 1e9;
  set_clock_offset_ns(static_cast<std::int64_t>(sec * 1e9));
  return PyFloat_FromDouble(old);
}
PyObject* executor_keep_alive(PyObject*, PyObject* arg) {
  long ms = PyLong_AsLong(arg);
  if (ms == -1 && PyErr_Occurred()) return nullptr;
  return PyBool_FromLong(executor_set_keep_alive_ms(ms));
}
PyObject* shutdown_pool(PyObject*, PyObject*) {
  executor_shutdown_pool();
  Py_RETURN_NONE;
}

PyMethodDef module_methods[] = {
    {"_init_helpers", (PyCFunction)(void (*)(void))init_helpers, METH_VARARGS | METH_KEYWORDS,
     "Install the Python helpers used on cold paths (tideloop/_loop.py calls this)."},
    {"_debug_stats", debug_stats, METH_NOARGS,
     "Counters for tests: native-thread GIL checks and violations, executor activity."},
    {"_debug_reset", debug_reset, METH_NOARGS, "Reset the _debug_stats counters."},
    {"_debug_probe_native_without_gil", probe, METH_NOARGS,
     "Test hook: run the native GIL check on a thread without the GIL (counts a violation)."},
    {"_debug_clock_offset", clock_offset, METH_O,
     "Test hook: shift loop.time() of every loop by this many seconds (0 restores the real "
     "clock); returns the previous offset."},
    {"_debug_executor_keep_alive", executor_keep_alive, METH_O,
     "Test hook: how long (ms) an idle native executor thread lives; only before the pool's "
     "first use. Returns False if the pool already exists."},
    {"_shutdown_native_pool", shutdown_pool, METH_NOARGS,
     "Join the native executor threads (registered with atexit)."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "_tideloop",
    "tideloop's event loop core: LoopCore, Handle, TimerHandle (see tideloop/_tideloop.pyi).",
    -1,
    module_methods,
};

}  // namespace
}  // namespace tideloop::bridge

extern "C" __attribute__((visibility("default"))) PyObject* PyInit__tideloop() {
  using namespace tideloop::bridge;
  if (init_state() < 0) return nullptr;
  if (handle_types_ready() < 0 || loop_type_ready() < 0) return nullptr;
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
  if (stream_types_ready(m) < 0 || udp_types_ready(m) < 0 ||
      PyModule_AddObjectRef(m, "Handle", (PyObject*)&HandleType) < 0 ||
      PyModule_AddObjectRef(m, "TimerHandle", (PyObject*)&TimerHandleType) < 0 ||
      PyModule_AddObjectRef(m, "LoopCore", (PyObject*)&LoopCoreType) < 0 ||
      PyModule_AddStringConstant(m, "__version__", TIDELOOP_VERSION) < 0 ||
      PyModule_AddStringConstant(m, "_reactor", kReactorName) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
