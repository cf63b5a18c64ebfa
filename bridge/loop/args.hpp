// Argument parsing and the common checks of the loop's Python methods (every room that defines
// a method uses them). Each returns 0, or -1 with the exception asyncio raises in that case.
#pragma once

#include "loop/loop.hpp"

namespace tideloop::bridge {

// The checks on call_soon's path are inline: they ran in the same file as call_soon before the
// bridge was split into rooms, and an out-of-line call each measured on the call_soon benchmark.

// RuntimeError("Event loop is closed") once close() was called.
inline int check_closed(LoopObject* self) {
  if (self->closed) {
    PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
    return -1;
  }
  return 0;
}

// Debug mode only, as in asyncio: a non-thread-safe method called from another thread.
int check_thread(LoopObject* self);
// TypeError unless cb is callable (asyncio's debug-mode check, always on here: one pointer test);
// coroutine functions are rejected in debug mode only, as in asyncio.
int check_callback_slow(LoopObject* self, PyObject* cb, const char* method);
inline int check_callback(LoopObject* self, PyObject* cb, const char* method) {
  if (PyCallable_Check(cb) && !self->debug) return 0;
  return check_callback_slow(self, cb, method);
}
// The call_* methods' arguments: at least `min_nargs` positional ones (else TypeError
// "<fname>() missing <missing>") and the keyword-only context= (*context borrowed, or NULL).
int parse_kwnames_slow(const char* fname, PyObject* const* args, Py_ssize_t nargs,
                       PyObject* kwnames, PyObject** context);
// Parses the keyword-only `context=` of the call_* methods. *context is borrowed (or NULL).
inline int parse_context(const char* fname, PyObject* const* args, Py_ssize_t nargs,
                         PyObject* kwnames, PyObject** context) {
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

inline int parse_call_args(const char* fname, PyObject* const* args, Py_ssize_t nargs,
                           PyObject* kwnames, Py_ssize_t min_nargs, const char* missing,
                           PyObject** context) {
  if (parse_context(fname, args, nargs, kwnames, context) < 0) return -1;
  if (nargs < min_nargs) {
    PyErr_Format(PyExc_TypeError, "%s() missing %s", fname, missing);
    return -1;
  }
  return 0;
}

// TypeError "<fname>() takes no keyword arguments" when kwnames is not empty.
int no_kwargs(const char* fname, PyObject* kwnames);
// selectors' _fileobj_to_fd: an int or an object with fileno(); ValueError when invalid.
// Returns the fd or -1 with an exception.
int fileobj_to_fd(PyObject* obj);
// A float number of seconds (TypeError from PyFloat_AsDouble otherwise).
int as_seconds(PyObject* o, double* out);

}  // namespace tideloop::bridge
