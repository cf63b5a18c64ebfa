// Argument parsing and checks shared by the loop's Python methods (loop/args.hpp).
#include "loop/args.hpp"

#include "loop/loop.hpp"

namespace tideloop::bridge {

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
// handler), non-callables are rejected up front with asyncio's debug-mode TypeError.
int check_callback_slow(LoopObject*, PyObject* cb, const char* method) {
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

int no_kwargs(const char* fname, PyObject* kwnames) {
  if (kwnames != nullptr && PyTuple_GET_SIZE(kwnames) > 0) {
    PyErr_Format(PyExc_TypeError, "%s() takes no keyword arguments", fname);
    return -1;
  }
  return 0;
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

int as_seconds(PyObject* o, double* out) {
  double d = PyFloat_AsDouble(o);
  if (d == -1.0 && PyErr_Occurred()) return -1;
  *out = d;
  return 0;
}

}  // namespace tideloop::bridge
