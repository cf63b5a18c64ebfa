// DatagramTransport: the transport of create_datagram_endpoint (UDP, Unix datagram sockets), with
// the behaviour of asyncio 3.11's selector_events._SelectorDatagramTransport (and of the
// _SelectorTransport and transports._FlowControlMixin it inherits from): the same call order
// (connection_made, then reading, then the waiter, each through call_soon), the same except
// clauses around every socket call, the same messages, the same flow-control marks.
//
// What differs is where the work happens. The socket is a Watcher in the loop's FdRegistry, and
// readiness is handled inside the tick (datagram_on_events): a readable socket is read with
// recvfrom(2) straight into a shared buffer and protocol.datagram_received runs there, with no
// Handle, no bound-method call and no socket-module round trip. Sending tries sendto(2) at once and
// queues (bytes, address) pairs only on EAGAIN, as asyncio does.
//
// The direct syscalls are used only where they give exactly what the socket module would:
//  * an exact socket.socket (a subclass may override recvfrom/sendto: its methods are called);
//  * reading, and sending to an explicit address, for AF_INET/AF_INET6 only, with the address
//    tuples built and parsed here; an address that is not a numeric (host, port...) tuple goes
//    to socket.sendto, which resolves names and raises the socket module's errors;
//  * send(2) on a connected socket of any family.
// Everything else (AF_UNIX paths, other families) calls the Python socket's methods.
//
// Lifetime: the loop holds a reference while the watcher is attached (from construction until
// nothing more is waited for after close(), or until _call_connection_lost). Loop close detaches
// it and closes the socket without calling the protocol (datagram_loop_closing).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <deque>
#include <new>

#include "loop/args.hpp"
#include "loop/loop.hpp"
// clang-format off
#include <structmember.h>  // needs Python.h first (T_INT, READONLY...)
// clang-format on

namespace tideloop::bridge {
namespace {

// asyncio's _SelectorTransport.max_size: the largest datagram read at once (a longer one is
// truncated by the kernel, as with socket.recvfrom(max_size)).
constexpr Py_ssize_t kMaxSize = 256 * 1024;
// transports._FlowControlMixin's default high-water mark (low = high // 4).
constexpr Py_ssize_t kDefaultHighWater = 64 * 1024;

// One datagram waiting for the socket to become writable: exactly what asyncio queues.
struct Queued {
  PyObject* data;  // bytes (an immutable copy of what sendto was given)
  PyObject* addr;  // the address passed to socket.sendto, or None
};

struct DatagramObject {
  PyObject_HEAD
      // The __slots__ of the Python base class, asyncio.transports._FlowControlMixin (the base of
      // asyncio's own _SelectorDatagramTransport): BaseTransport's `_extra` first, which is this
      // field, then the mixin's _loop, _protocol_paused, _high_water and _low_water, which this
      // type shadows with its own getters, so they stay NULL. udp_types_ready checks the layout.
      PyObject* extra;
  PyObject* unused_mixin_slots[4];
  Watcher watcher;
  LoopObject* loop;    // NULL once _call_connection_lost ran (asyncio sets _loop = None)
  PyObject* sock;      // socket.socket; NULL once closed
  PyObject* protocol;  // NULL once _call_connection_lost ran
  PyObject* address;   // create_datagram_endpoint's remote address, or None
  PyObject* context;   // readiness callbacks run in it: a copy of the creator's context
  PyObject* weakreflist;
  // The address object of the last datagram read and its raw form: a peer that keeps sending
  // (the usual case) gets the same immutable tuple back instead of a new str and tuple each time.
  PyObject* last_addr;
  sockaddr_storage last_sa;
  socklen_t last_salen;
  std::deque<Queued> queue;  // placement-constructed in tp_new, destroyed in tp_dealloc
  Py_ssize_t buffer_size;    // bytes in `queue`
  Py_ssize_t high_water;
  Py_ssize_t low_water;
  Py_ssize_t conn_lost;  // asyncio's _conn_lost: connection_lost scheduled, then dropped sends
  int fd;                // asyncio's _sock_fd: kept after close, for repr
  int family;
  bool closing;
  bool protocol_paused;
  bool protocol_connected;
  // asyncio's selector registrations of this fd (_add_reader/_add_writer ... _remove_*): the
  // interest in the poller follows them.
  bool reader_on;
  bool writer_on;
  bool connected;    // extra['peername'] was true: send() instead of sendto(addr)
  bool has_address;  // bool(address)
  bool native;       // an exact socket.socket: send(2) when connected
  bool native_inet;  // and AF_INET/AF_INET6: recvfrom(2)/sendto(2) with our own address code
};

// Interned names and asyncio objects, set once by udp_types_ready.
struct Names {
  PyObject *datagram_received, *error_received, *connection_made, *connection_lost;
  PyObject *pause_writing, *resume_writing, *send, *sendto, *recvfrom, *close, *fileno, *family;
  PyObject *getsockname, *getpeername, *call_soon, *get, *warning, *debug, *exc_info;
  PyObject *start_reading, *call_connection_lost;
  PyObject *k_socket, *k_sockname, *k_peername, *k_message, *k_exception, *k_transport, *k_protocol;
  PyObject* transport_socket;             // asyncio.trsock.TransportSocket
  PyObject* set_result_unless_cancelled;  // asyncio.futures._set_result_unless_cancelled
  PyObject* socket_type;                  // socket.socket
  PyObject* logger;                       // asyncio.log.logger
  long connlost_warn_threshold;           // asyncio.constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES
};
Names n;

PyTypeObject* g_type = nullptr;

// Shared by every transport: the datagram is copied into a bytes object before any Python code
// runs, and every reader holds the GIL, so one buffer serves all loops.
char g_recv_buffer[kMaxSize];

DatagramObject* of_watcher(Watcher* w) {
  return reinterpret_cast<DatagramObject*>(reinterpret_cast<char*>(w) -
                                           offsetof(DatagramObject, watcher));
}

PyObject* datagram_owner(Watcher* w) {
  return reinterpret_cast<PyObject*>(of_watcher(w));
}

// --- exceptions ---------------------------------------------------------------------------

// Which of asyncio's except clauses catches the pending exception.
enum class Caught {
  kAgain,      // BlockingIOError, InterruptedError (cleared): try again at the next readiness
  kOSError,    // other OSError: protocol.error_received(exc)
  kFatal,      // anything else: _fatal_error
  kPropagate,  // SystemExit, KeyboardInterrupt: re-raised
};

Caught classify_pending() {
  if (PyErr_ExceptionMatches(PyExc_BlockingIOError) ||
      PyErr_ExceptionMatches(PyExc_InterruptedError)) {
    PyErr_Clear();
    return Caught::kAgain;
  }
  if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
    return Caught::kPropagate;
  if (PyErr_ExceptionMatches(PyExc_OSError)) return Caught::kOSError;
  return Caught::kFatal;
}

// The pending exception as a normalized value with its traceback (new reference).
PyObject* take_exception() {
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyErr_NormalizeException(&type, &value, &tb);
  if (tb != nullptr && value != nullptr) PyException_SetTraceback(value, tb);
  Py_XDECREF(type);
  Py_XDECREF(tb);
  if (value == nullptr) value = Py_NewRef(Py_None);
  return value;
}

bool is_exit_exception() {
  return PyErr_ExceptionMatches(PyExc_SystemExit) ||
         PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
}

// loop.call_exception_handler({'message': message, 'exception': exc, 'transport': t,
// 'protocol': t._protocol}). Returns 0, or -1 if the handler itself raised.
int report_to_handler(DatagramObject* t, LoopObject* loop, PyObject* message, PyObject* exc) {
  PyObject* ctx = PyDict_New();
  if (ctx == nullptr) return -1;
  if (PyDict_SetItem(ctx, n.k_message, message) < 0 ||
      PyDict_SetItem(ctx, n.k_exception, exc) < 0 ||
      PyDict_SetItem(ctx, n.k_transport, (PyObject*)t) < 0 ||
      PyDict_SetItem(ctx, n.k_protocol, t->protocol ? t->protocol : Py_None) < 0) {
    Py_DECREF(ctx);
    return -1;
  }
  PyObject* r = PyObject_CallMethodOneArg((PyObject*)loop, g.str_call_exception_handler, ctx);
  Py_DECREF(ctx);
  if (r == nullptr) return -1;
  Py_DECREF(r);
  return 0;
}

int report_to_handler(DatagramObject* t, LoopObject* loop, const char* message, PyObject* exc) {
  PyObject* m = PyUnicode_FromString(message);
  if (m == nullptr) return -1;
  int r = report_to_handler(t, loop, m, exc);
  Py_DECREF(m);
  return r;
}

// A protocol callback raised inside a readiness callback: asyncio runs _read_ready and
// _sendto_ready as Handles, whose _run gives the exception to the handler ('Exception in callback
// ...'), except SystemExit and KeyboardInterrupt, which stop the loop. Returns 0 or -1.
int callback_failed(DatagramObject* t, LoopObject* loop, const char* method) {
  if (is_exit_exception()) return -1;
  PyObject* exc = take_exception();
  PyObject* name = PyType_GetName(Py_TYPE((PyObject*)t));
  PyObject* m =
      name ? PyUnicode_FromFormat("Exception in callback %U.%s()", name, method) : nullptr;
  int r = m != nullptr ? report_to_handler(t, loop, m, exc) : -1;
  Py_XDECREF(name);
  Py_XDECREF(m);
  Py_DECREF(exc);
  return r;
}

// --- loop interaction ---------------------------------------------------------------------

// loop.call_soon(callback, *args); 0 or -1.
int call_soon(LoopObject* loop, PyObject* callback, PyObject* a1 = nullptr,
              PyObject* a2 = nullptr) {
  PyObject* stack[4] = {(PyObject*)loop, callback, a1, a2};
  size_t nargs = 2 + (a1 != nullptr) + (a2 != nullptr);
  PyObject* h = PyObject_VectorcallMethod(n.call_soon, stack, nargs, nullptr);
  if (h == nullptr) return -1;
  Py_DECREF(h);
  return 0;
}

// loop.call_soon(getattr(t, method), *args)
int call_soon_method(DatagramObject* t, PyObject* method, PyObject* a1 = nullptr) {
  PyObject* bound = PyObject_GetAttr((PyObject*)t, method);
  if (bound == nullptr) return -1;
  int r = call_soon(t->loop, bound, a1);
  Py_DECREF(bound);
  return r;
}

// Brings the poller in line with reader_on/writer_on. A closing transport that waits for
// nothing leaves the registry (asyncio's selector forgets the fd at that point too), which also
// releases the loop's reference to it (after the batch when dispatching). 0 or -1 (OSError).
int sync_interest(DatagramObject* t, LoopObject* loop) {
  if (loop == nullptr || !t->watcher.registered) return 0;
  std::uint32_t want = (t->reader_on ? EPOLLIN : 0u) | (t->writer_on ? EPOLLOUT : 0u);
  if (want == 0 && t->closing) {
    watcher_detach(loop, &t->watcher);
    return 0;
  }
  return watcher_set_interest(loop, &t->watcher, want);
}

void clear_queue(DatagramObject* t) {
  std::deque<Queued> q;
  q.swap(t->queue);
  t->buffer_size = 0;
  for (Queued& e : q) {
    Py_DECREF(e.data);
    Py_DECREF(e.addr);
  }
}

// asyncio's _force_close(exc). 0 or -1.
int force_close(DatagramObject* t, PyObject* exc) {
  if (t->conn_lost || t->loop == nullptr) return 0;
  if (!t->queue.empty()) {
    // asyncio clears the deque but leaves _buffer_size as it was; here the size follows the
    // queue, so get_write_buffer_size() says 0 once the queued datagrams are dropped.
    clear_queue(t);
    t->writer_on = false;
  }
  if (!t->closing) {
    t->closing = true;
    t->reader_on = false;
  }
  t->conn_lost += 1;
  LoopObject* loop = t->loop;
  // Scheduled before the watcher is detached: the handle keeps the transport alive.
  int r = call_soon_method(t, n.call_connection_lost, exc);
  if (sync_interest(t, loop) < 0) {
    if (r == 0) return -1;
    PyErr_Clear();
  }
  return r;
}

// asyncio's _fatal_error(exc, message): an OSError is only logged in debug mode, anything else
// goes to the exception handler; then the transport is closed without flushing. Takes `exc`.
int fatal_error(DatagramObject* t, PyObject* exc, const char* message) {
  LoopObject* loop = t->loop;
  int r = 0;
  if (loop != nullptr) {
    if (PyObject_TypeCheck(exc, (PyTypeObject*)PyExc_OSError)) {
      if (loop_debug(loop)) {
        // logger.debug("%r: %s", self, message, exc_info=exc)
        PyObject* fmt = PyUnicode_FromString("%r: %s");
        PyObject* msg = PyUnicode_FromString(message);
        PyObject* kw = PyTuple_Pack(1, n.exc_info);
        if (fmt && msg && kw) {
          PyObject* stack[5] = {n.logger, fmt, (PyObject*)t, msg, exc};
          PyObject* res = PyObject_VectorcallMethod(n.debug, stack, 4, kw);
          if (res == nullptr) PyErr_WriteUnraisable((PyObject*)t);
          Py_XDECREF(res);
        } else {
          PyErr_Clear();
        }
        Py_XDECREF(fmt);
        Py_XDECREF(msg);
        Py_XDECREF(kw);
      }
    } else {
      r = report_to_handler(t, loop, message, exc);
    }
  }
  if (r == 0) r = force_close(t, exc);
  Py_DECREF(exc);
  return r;
}

// _FlowControlMixin._maybe_pause_protocol / _maybe_resume_protocol. 0 or -1.
int flow_callback_failed(DatagramObject* t, const char* message) {
  if (is_exit_exception() || t->loop == nullptr) return -1;
  PyObject* exc = take_exception();
  int r = report_to_handler(t, t->loop, message, exc);
  Py_DECREF(exc);
  return r;
}

int maybe_pause_protocol(DatagramObject* t) {
  if (t->buffer_size <= t->high_water || t->protocol_paused) return 0;
  t->protocol_paused = true;
  if (t->protocol == nullptr) return 0;
  PyObject* r = PyObject_CallMethodNoArgs(t->protocol, n.pause_writing);
  if (r != nullptr) {
    Py_DECREF(r);
    return 0;
  }
  return flow_callback_failed(t, "protocol.pause_writing() failed");
}

int maybe_resume_protocol(DatagramObject* t) {
  if (!t->protocol_paused || t->buffer_size > t->low_water) return 0;
  t->protocol_paused = false;
  if (t->protocol == nullptr) return 0;
  PyObject* r = PyObject_CallMethodNoArgs(t->protocol, n.resume_writing);
  if (r != nullptr) {
    Py_DECREF(r);
    return 0;
  }
  return flow_callback_failed(t, "protocol.resume_writing() failed");
}

// --- addresses (AF_INET, AF_INET6) --------------------------------------------------------

// The address tuple socket.recvfrom would return: (host, port) or (host, port, flowinfo,
// scope_id), the host as inet_ntop writes it (as the socket module makes it).
PyObject* make_inet_address(const sockaddr_storage& sa, socklen_t len) {
  char host[INET6_ADDRSTRLEN];
  if (sa.ss_family == AF_INET) {
    const auto& a = reinterpret_cast<const sockaddr_in&>(sa);
    if (inet_ntop(AF_INET, &a.sin_addr, host, sizeof host) == nullptr) {
      return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(si)", host, (int)ntohs(a.sin_port));
  }
  if (sa.ss_family == AF_INET6) {
    const auto& a = reinterpret_cast<const sockaddr_in6&>(sa);
    // No "%scope" suffix: the scope is the tuple's fourth item (the socket module's form).
    if (inet_ntop(AF_INET6, &a.sin6_addr, host, sizeof host) == nullptr) {
      return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(siII)", host, (int)ntohs(a.sin6_port),
                         (unsigned int)ntohl(a.sin6_flowinfo), (unsigned int)a.sin6_scope_id);
  }
  // Not expected on an inet socket: the socket module's form for an unknown family.
  return Py_BuildValue("(iy#)", (int)sa.ss_family, reinterpret_cast<const char*>(&sa),
                       (Py_ssize_t)len);
}

PyObject* address_of(DatagramObject* t, const sockaddr_storage& sa, socklen_t len) {
  if (len == 0) Py_RETURN_NONE;
  if (t->last_addr != nullptr && len == t->last_salen && std::memcmp(&sa, &t->last_sa, len) == 0) {
    return Py_NewRef(t->last_addr);
  }
  PyObject* a = make_inet_address(sa, len);
  if (a == nullptr) return nullptr;
  Py_XSETREF(t->last_addr, Py_NewRef(a));
  std::memcpy(&t->last_sa, &sa, len);
  t->last_salen = len;
  return a;
}

// A numeric host of an address tuple, as a NUL-free ASCII C string; nullptr otherwise (a name
// to resolve, bytes, "<broadcast>"... are left to the socket module).
const char* numeric_host(PyObject* host) {
  if (!PyUnicode_Check(host) || !PyUnicode_IS_ASCII(host)) return nullptr;
  Py_ssize_t size;
  const char* s = PyUnicode_AsUTF8AndSize(host, &size);
  if (s == nullptr) {
    PyErr_Clear();
    return nullptr;
  }
  if (static_cast<Py_ssize_t>(std::strlen(s)) != size) return nullptr;
  return s;
}

bool small_int(PyObject* o, unsigned long max, unsigned long* out) {
  if (!PyLong_Check(o)) return false;
  unsigned long v = PyLong_AsUnsignedLong(o);
  if (v == (unsigned long)-1 && PyErr_Occurred()) {
    PyErr_Clear();
    return false;
  }
  if (v > max) return false;
  *out = v;
  return true;
}

// Parses what socket.sendto would accept without resolving anything: (numeric-host, port) on
// AF_INET, (numeric-host, port[, flowinfo[, scope_id]]) on AF_INET6 (no "%scope": that needs
// getaddrinfo). false: not such an address; the socket module takes it (and raises its errors).
bool parse_inet_address(int family, PyObject* addr, sockaddr_storage* sa, socklen_t* len) {
  if (!PyTuple_Check(addr)) return false;
  Py_ssize_t size = PyTuple_GET_SIZE(addr);
  unsigned long port;
  std::memset(sa, 0, sizeof *sa);
  if (family == AF_INET) {
    if (size != 2) return false;
    const char* host = numeric_host(PyTuple_GET_ITEM(addr, 0));
    if (host == nullptr || !small_int(PyTuple_GET_ITEM(addr, 1), 0xffff, &port)) return false;
    auto* a = reinterpret_cast<sockaddr_in*>(sa);
    if (inet_pton(AF_INET, host, &a->sin_addr) != 1) return false;
    a->sin_family = AF_INET;
    a->sin_port = htons(static_cast<std::uint16_t>(port));
    *len = sizeof(sockaddr_in);
    return true;
  }
  if (family == AF_INET6) {
    if (size < 2 || size > 4) return false;
    const char* host = numeric_host(PyTuple_GET_ITEM(addr, 0));
    unsigned long flowinfo = 0, scope_id = 0;
    if (host == nullptr || !small_int(PyTuple_GET_ITEM(addr, 1), 0xffff, &port)) return false;
    if (size > 2 && !small_int(PyTuple_GET_ITEM(addr, 2), 0xfffff, &flowinfo)) return false;
    if (size > 3 && !small_int(PyTuple_GET_ITEM(addr, 3), 0xffffffffUL, &scope_id)) return false;
    auto* a = reinterpret_cast<sockaddr_in6*>(sa);
    if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1) return false;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(static_cast<std::uint16_t>(port));
    a->sin6_flowinfo = htonl(static_cast<std::uint32_t>(flowinfo));
    a->sin6_scope_id = static_cast<std::uint32_t>(scope_id);
    *len = sizeof(sockaddr_in6);
    return true;
  }
  return false;
}

// --- the socket calls ---------------------------------------------------------------------

// Result of one send attempt.
enum class Sent { kDone, kAgain, kError /* exception set */ };

Sent py_send(DatagramObject* t, PyObject* data, PyObject* addr) {
  PyObject* r = t->connected ? PyObject_CallMethodOneArg(t->sock, n.send, data)
                             : PyObject_CallMethodObjArgs(t->sock, n.sendto, data, addr, nullptr);
  if (r != nullptr) {
    Py_DECREF(r);
    return Sent::kDone;
  }
  if (PyErr_ExceptionMatches(PyExc_BlockingIOError) ||
      PyErr_ExceptionMatches(PyExc_InterruptedError)) {
    PyErr_Clear();
    return Sent::kAgain;
  }
  return Sent::kError;
}

// What asyncio does with `self._sock.send(data)` if connected else `self._sock.sendto(data,
// addr)`, minus the socket module where the syscall is the same.
Sent send_one(DatagramObject* t, PyObject* data, PyObject* addr) {
  if (!t->native) return py_send(t, data, addr);
  sockaddr_storage sa;
  socklen_t salen = 0;
  if (!t->connected && !(t->native_inet && parse_inet_address(t->family, addr, &sa, &salen))) {
    return py_send(t, data, addr);
  }
  Py_buffer view;
  if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return Sent::kError;
  ssize_t r;
  do {
    r = t->connected ? ::send(t->fd, view.buf, view.len, MSG_DONTWAIT)
                     : ::sendto(t->fd, view.buf, view.len, MSG_DONTWAIT,
                                reinterpret_cast<sockaddr*>(&sa), salen);
  } while (r < 0 && errno == EINTR);
  int err = errno;
  PyBuffer_Release(&view);
  if (r >= 0) return Sent::kDone;
  if (err == EAGAIN || err == EWOULDBLOCK) return Sent::kAgain;
  errno = err;
  PyErr_SetFromErrno(PyExc_OSError);
  return Sent::kError;
}

// protocol.error_received(exc) for the pending OSError. 0 or -1 (the protocol raised).
int deliver_error(DatagramObject* t) {
  PyObject* exc = take_exception();
  if (t->protocol == nullptr) {
    Py_DECREF(exc);
    return 0;
  }
  PyObject* r = PyObject_CallMethodOneArg(t->protocol, n.error_received, exc);
  Py_DECREF(exc);
  if (r == nullptr) return -1;
  Py_DECREF(r);
  return 0;
}

// asyncio's _read_ready: one datagram per readiness. 0 or -1 (stop the loop).
int read_ready(DatagramObject* t, LoopObject* loop) {
  if (t->conn_lost || t->protocol == nullptr) return 0;
  PyObject* data = nullptr;
  PyObject* addr = nullptr;
  if (t->native_inet) {
    sockaddr_storage sa;
    socklen_t salen;
    ssize_t got;
    do {
      salen = sizeof sa;
      got = ::recvfrom(t->fd, g_recv_buffer, kMaxSize, MSG_DONTWAIT,
                       reinterpret_cast<sockaddr*>(&sa), &salen);
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      PyErr_SetFromErrno(PyExc_OSError);
    } else {
      data = PyBytes_FromStringAndSize(g_recv_buffer, got);
      if (data != nullptr) {
        addr = address_of(t, sa, salen);
        if (addr == nullptr) Py_CLEAR(data);
      }
    }
  } else {
    static PyObject* max_size = PyLong_FromSsize_t(kMaxSize);
    PyObject* r = max_size ? PyObject_CallMethodOneArg(t->sock, n.recvfrom, max_size) : nullptr;
    if (r != nullptr) {
      if (PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 2) {
        data = Py_NewRef(PyTuple_GET_ITEM(r, 0));
        addr = Py_NewRef(PyTuple_GET_ITEM(r, 1));
      } else {
        PyErr_SetString(PyExc_ValueError, "recvfrom() did not return a (data, address) pair");
      }
      Py_DECREF(r);
    }
  }
  if (data == nullptr) {
    switch (classify_pending()) {
      case Caught::kAgain:
        return 0;
      case Caught::kPropagate:
        return -1;
      case Caught::kOSError:
        return deliver_error(t) < 0 ? callback_failed(t, loop, "_read_ready") : 0;
      case Caught::kFatal:
        return fatal_error(t, take_exception(), "Fatal read error on datagram transport");
    }
  }
  PyObject* stack[4] = {nullptr, t->protocol, data, addr};
  Py_INCREF(t->protocol);  // datagram_received may replace the protocol (set_protocol)
  PyObject* r = PyObject_VectorcallMethod(n.datagram_received, stack + 1,
                                          3 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
  Py_DECREF(stack[1]);
  Py_DECREF(data);
  Py_DECREF(addr);
  if (r == nullptr) return callback_failed(t, loop, "_read_ready");
  Py_DECREF(r);
  return 0;
}

// asyncio's _sendto_ready: flush the queue while the socket takes it. 0 or -1.
int sendto_ready(DatagramObject* t, LoopObject* loop) {
  while (!t->queue.empty()) {
    Queued q = t->queue.front();
    t->queue.pop_front();
    t->buffer_size -= PyBytes_GET_SIZE(q.data);
    Sent s = send_one(t, q.data, q.addr);
    if (s == Sent::kAgain) {
      t->queue.push_front(q);  // try again later
      t->buffer_size += PyBytes_GET_SIZE(q.data);
      break;
    }
    Py_DECREF(q.data);
    Py_DECREF(q.addr);
    if (s == Sent::kError) {
      switch (classify_pending()) {
        case Caught::kAgain:  // not reached: send_one reports it as kAgain
          return 0;
        case Caught::kPropagate:
          return -1;
        case Caught::kOSError:
          // The datagram is dropped and the writer stays: the next readiness goes on.
          return deliver_error(t) < 0 ? callback_failed(t, loop, "_sendto_ready") : 0;
        case Caught::kFatal:
          return fatal_error(t, take_exception(), "Fatal write error on datagram transport");
      }
    }
  }
  if (maybe_resume_protocol(t) < 0) return -1;  // may append to the queue
  if (t->queue.empty()) {
    t->writer_on = false;
    if (sync_interest(t, loop) < 0) return callback_failed(t, loop, "_sendto_ready");
    if (t->closing) {
      PyObject* r = PyObject_CallMethodOneArg((PyObject*)t, n.call_connection_lost, Py_None);
      if (r == nullptr) return callback_failed(t, loop, "_sendto_ready");
      Py_DECREF(r);
    }
  }
  return 0;
}

// --- WatcherOps ---------------------------------------------------------------------------

// Readiness, inside the tick. As with selectors.EpollSelector, an error or hang-up wakes both
// directions that are registered.
int datagram_on_events(Watcher* w, LoopObject* loop, std::uint32_t ev) {
  DatagramObject* t = of_watcher(w);
  PyObject* ctx = t->context;
  if (ctx == nullptr || PyContext_Enter(ctx) < 0) return ctx == nullptr ? 0 : -1;
  Py_INCREF(ctx);
  int r = 0;
  if ((ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) && t->reader_on) r = read_ready(t, loop);
  if (r == 0 && (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR)) && t->writer_on && w->registered) {
    r = sendto_ready(t, loop);
  }
  if (PyContext_Exit(ctx) < 0) r = -1;
  Py_DECREF(ctx);
  return r;
}

// The loop closes (or is collected) with the transport open: the socket is closed and the
// transport is marked closed, without calling the protocol (there is no loop to schedule
// connection_lost on). The watcher is already detached. Dropping the loop reference cannot free
// the loop under its own close: loop.close()'s caller holds a reference, and the collector holds
// one on an object whose tp_clear it runs.
void datagram_loop_closing(Watcher* w, LoopObject*) {
  DatagramObject* t = of_watcher(w);
  t->closing = true;
  t->reader_on = t->writer_on = false;
  if (t->conn_lost == 0) t->conn_lost = 1;
  clear_queue(t);
  if (PyObject* sock = t->sock) {
    t->sock = nullptr;
    PyObject* r = PyObject_CallMethodNoArgs(sock, n.close);
    if (r == nullptr) PyErr_WriteUnraisable(sock);
    Py_XDECREF(r);
    Py_DECREF(sock);
  }
  Py_CLEAR(t->loop);
}

const WatcherOps kDatagramOps = {"transport", datagram_on_events, datagram_owner, nullptr,
                                 datagram_loop_closing};

// --- argument parsing ---------------------------------------------------------------------

// Up to `max` arguments by position or by the given names; unset ones stay as initialised.
int parse_args(const char* fname, PyObject* const* args, Py_ssize_t nargsf, PyObject* kwnames,
               const char* const* names, Py_ssize_t min, Py_ssize_t max, PyObject** out) {
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  if (nargs > max) {
    PyErr_Format(PyExc_TypeError, "%s() takes at most %zd arguments (%zd given)", fname, max,
                 nargs);
    return -1;
  }
  for (Py_ssize_t i = 0; i < nargs; ++i) out[i] = args[i];
  Py_ssize_t given = nargs;
  if (kwnames != nullptr) {
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(kwnames); ++k) {
      PyObject* key = PyTuple_GET_ITEM(kwnames, k);
      Py_ssize_t i = 0;
      while (i < max && PyUnicode_CompareWithASCIIString(key, names[i]) != 0) ++i;
      if (i == max) {
        PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname, key);
        return -1;
      }
      if (i < nargs) {
        PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fname,
                     names[i]);
        return -1;
      }
      out[i] = args[nargs + k];
      ++given;
    }
  }
  for (Py_ssize_t i = 0; i < min; ++i) {
    if (out[i] == nullptr) {
      PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname, names[i]);
      return -1;
    }
  }
  return 0;
}

// --- methods ------------------------------------------------------------------------------

PyObject* dt_sendto(DatagramObject* t, PyObject* const* args, Py_ssize_t nargsf,
                    PyObject* kwnames) {
  PyObject* data = nullptr;
  PyObject* addr = Py_None;
  if (kwnames == nullptr && PyVectorcall_NARGS(nargsf) == 1) {
    data = args[0];
  } else if (kwnames == nullptr && PyVectorcall_NARGS(nargsf) == 2) {
    data = args[0];
    addr = args[1];
  } else {
    static const char* const names[] = {"data", "addr"};
    PyObject* out[2] = {nullptr, Py_None};
    if (parse_args("sendto", args, nargsf, kwnames, names, 1, 2, out) < 0) return nullptr;
    data = out[0];
    addr = out[1];
  }
  Py_ssize_t len;
  if (PyBytes_Check(data)) {
    len = PyBytes_GET_SIZE(data);
  } else if (PyByteArray_Check(data)) {
    len = PyByteArray_GET_SIZE(data);
  } else if (PyMemoryView_Check(data)) {
    int truth = PyObject_IsTrue(data);
    if (truth < 0) return nullptr;
    len = truth;
  } else {
    PyObject* name = PyType_GetName(Py_TYPE(data));
    if (name != nullptr) {
      PyErr_Format(PyExc_TypeError, "data argument must be a bytes-like object, not %R", name);
      Py_DECREF(name);
    }
    return nullptr;
  }
  if (len == 0) Py_RETURN_NONE;

  if (t->has_address) {
    // `addr not in (None, self._address)`
    if (addr != Py_None && addr != t->address) {
      int eq = PyObject_RichCompareBool(addr, Py_None, Py_EQ);
      if (eq == 0) eq = PyObject_RichCompareBool(addr, t->address, Py_EQ);
      if (eq < 0) return nullptr;
      if (eq == 0) {
        PyErr_Format(PyExc_ValueError, "Invalid address: must be None or %S", t->address);
        return nullptr;
      }
    }
    addr = t->address;
  }

  // After connection_lost was scheduled a connected endpoint drops what is sent, counting, and
  // warns from the fifth time on (asyncio). An unconnected one still sends until the socket is
  // closed; after that asyncio 3.11 fails inside sendto with AttributeError, where this drops too.
  if (t->sock == nullptr || (t->conn_lost && t->has_address)) {
    if (t->conn_lost >= n.connlost_warn_threshold) {
      PyObject* msg = PyUnicode_FromString("socket.send() raised exception.");
      PyObject* r = msg ? PyObject_CallMethodOneArg(n.logger, n.warning, msg) : nullptr;
      Py_XDECREF(msg);
      if (r == nullptr) return nullptr;
      Py_DECREF(r);
    }
    t->conn_lost += 1;
    Py_RETURN_NONE;
  }

  if (t->queue.empty()) {
    // Attempt to send it right away first.
    Sent s = send_one(t, data, addr);
    if (s == Sent::kDone) Py_RETURN_NONE;
    if (s == Sent::kAgain) {
      t->writer_on = true;
      if (sync_interest(t, t->loop) < 0) return nullptr;
    } else {
      switch (classify_pending()) {
        case Caught::kAgain:
          break;
        case Caught::kPropagate:
          return nullptr;
        case Caught::kOSError:
          if (deliver_error(t) < 0) return nullptr;
          Py_RETURN_NONE;
        case Caught::kFatal:
          if (fatal_error(t, take_exception(), "Fatal write error on datagram transport") < 0)
            return nullptr;
          Py_RETURN_NONE;
      }
    }
  }
  // What is queued is immutable: bytes(data).
  PyObject* copy = PyBytes_CheckExact(data) ? Py_NewRef(data) : PyBytes_FromObject(data);
  if (copy == nullptr) return nullptr;
  t->queue.push_back({copy, Py_NewRef(addr)});
  t->buffer_size += PyBytes_GET_SIZE(copy);
  if (maybe_pause_protocol(t) < 0) return nullptr;
  Py_RETURN_NONE;
}

PyObject* dt_close(DatagramObject* t, PyObject*) {
  if (t->closing) Py_RETURN_NONE;
  t->closing = true;
  t->reader_on = false;
  if (t->queue.empty() && t->loop != nullptr) {
    t->conn_lost += 1;
    t->writer_on = false;
    if (call_soon_method(t, n.call_connection_lost, Py_None) < 0) return nullptr;
  }
  if (sync_interest(t, t->loop) < 0) return nullptr;
  Py_RETURN_NONE;
}

PyObject* dt_abort(DatagramObject* t, PyObject*) {
  if (force_close(t, Py_None) < 0) return nullptr;
  Py_RETURN_NONE;
}

PyObject* dt_is_closing(DatagramObject* t, PyObject*) {
  return PyBool_FromLong(t->closing);
}

PyObject* dt_set_protocol(DatagramObject* t, PyObject* protocol) {
  Py_XSETREF(t->protocol, Py_NewRef(protocol));
  t->protocol_connected = true;
  Py_RETURN_NONE;
}

PyObject* dt_get_protocol(DatagramObject* t, PyObject*) {
  return Py_NewRef(t->protocol ? t->protocol : Py_None);
}

PyObject* dt_get_extra_info(DatagramObject* t, PyObject* const* args, Py_ssize_t nargsf,
                            PyObject* kwnames) {
  static const char* const names[] = {"name", "default"};
  PyObject* out[2] = {nullptr, Py_None};
  if (parse_args("get_extra_info", args, nargsf, kwnames, names, 1, 2, out) < 0) return nullptr;
  if (t->extra == nullptr) return Py_NewRef(out[1]);
  if (PyDict_CheckExact(t->extra)) {
    PyObject* v = PyDict_GetItemWithError(t->extra, out[0]);
    if (v != nullptr) return Py_NewRef(v);
    if (PyErr_Occurred()) return nullptr;
    return Py_NewRef(out[1]);
  }
  return PyObject_CallMethodObjArgs(t->extra, n.get, out[0], out[1], nullptr);
}

PyObject* dt_get_write_buffer_size(DatagramObject* t, PyObject*) {
  return PyLong_FromSsize_t(t->buffer_size);
}

PyObject* dt_get_write_buffer_limits(DatagramObject* t, PyObject*) {
  return Py_BuildValue("(nn)", t->low_water, t->high_water);
}

// _FlowControlMixin._set_write_buffer_limits; ints only (asyncio would also take floats).
int set_limits(DatagramObject* t, PyObject* high_obj, PyObject* low_obj) {
  Py_ssize_t high, low;
  if (high_obj == Py_None) {
    if (low_obj == Py_None) {
      high = kDefaultHighWater;
    } else {
      low = PyNumber_AsSsize_t(low_obj, PyExc_OverflowError);
      if (low == -1 && PyErr_Occurred()) return -1;
      high = 4 * low;
    }
  } else {
    high = PyNumber_AsSsize_t(high_obj, PyExc_OverflowError);
    if (high == -1 && PyErr_Occurred()) return -1;
  }
  if (low_obj == Py_None) {
    low = high >= 0 ? high / 4 : -((-high + 3) / 4);  // Python's floor division
  } else {
    low = PyNumber_AsSsize_t(low_obj, PyExc_OverflowError);
    if (low == -1 && PyErr_Occurred()) return -1;
  }
  if (!(high >= low && low >= 0)) {
    PyErr_Format(PyExc_ValueError, "high (%zd) must be >= low (%zd) must be >= 0", high, low);
    return -1;
  }
  t->high_water = high;
  t->low_water = low;
  return 0;
}

PyObject* dt_set_write_buffer_limits(DatagramObject* t, PyObject* const* args, Py_ssize_t nargsf,
                                     PyObject* kwnames) {
  static const char* const names[] = {"high", "low"};
  PyObject* out[2] = {Py_None, Py_None};
  if (parse_args("set_write_buffer_limits", args, nargsf, kwnames, names, 0, 2, out) < 0)
    return nullptr;
  if (set_limits(t, out[0], out[1]) < 0 || maybe_pause_protocol(t) < 0) return nullptr;
  Py_RETURN_NONE;
}

// Scheduled by the constructor after connection_made: asyncio's `call_soon(self._add_reader,
// fd, self._read_ready)`, a no-op once the transport is closing.
PyObject* dt_start_reading(DatagramObject* t, PyObject*) {
  if (t->closing || t->loop == nullptr) Py_RETURN_NONE;
  if (check_closed(t->loop) < 0) return nullptr;
  t->reader_on = true;
  if (sync_interest(t, t->loop) < 0) return nullptr;
  Py_RETURN_NONE;
}

// asyncio's _call_connection_lost: protocol.connection_lost(exc), then (whatever it did) the
// socket is closed and the transport lets go of the socket, the protocol and the loop.
PyObject* dt_call_connection_lost(DatagramObject* t, PyObject* exc) {
  PyObject* r = Py_NewRef(Py_None);
  if (t->protocol_connected && t->protocol != nullptr) {
    Py_DECREF(r);
    r = PyObject_CallMethodOneArg(t->protocol, n.connection_lost, exc);
  }
  PyObject *et, *ev, *etb;
  PyErr_Fetch(&et, &ev, &etb);
  t->reader_on = t->writer_on = false;
  if (t->loop != nullptr) watcher_detach(t->loop, &t->watcher);  // before the fd number is freed
  if (PyObject* sock = t->sock) {
    t->sock = nullptr;
    PyObject* c = PyObject_CallMethodNoArgs(sock, n.close);
    Py_DECREF(sock);
    if (c == nullptr) {
      if (et == nullptr) {
        PyErr_Fetch(&et, &ev, &etb);  // `finally` raising replaces the result
        Py_CLEAR(r);
      } else {
        PyErr_WriteUnraisable((PyObject*)t);
      }
    }
    Py_XDECREF(c);
  }
  Py_CLEAR(t->protocol);
  Py_CLEAR(t->loop);
  PyErr_Restore(et, ev, etb);
  return r;
}

PyObject* dt_repr(DatagramObject* t) {
  PyObject* name = PyType_GetName(Py_TYPE((PyObject*)t));
  if (name == nullptr) return nullptr;
  const char* state = t->sock == nullptr ? " closed" : t->closing ? " closing" : "";
  PyObject* r;
  if (t->loop != nullptr && !t->loop->closed) {
    std::uint32_t in = t->watcher.registered ? t->watcher.interest : 0;
    r = PyUnicode_FromFormat("<%U%s fd=%d read=%s write=<%s, bufsize=%zd>>", name, state, t->fd,
                             (in & EPOLLIN) ? "polling" : "idle",
                             (in & EPOLLOUT) ? "polling" : "idle", t->buffer_size);
  } else {
    r = PyUnicode_FromFormat("<%U%s fd=%d>", name, state, t->fd);
  }
  Py_DECREF(name);
  return r;
}

PyObject* get_sock(DatagramObject* t, void*) {
  return Py_NewRef(t->sock ? t->sock : Py_None);
}
PyObject* get_loop(DatagramObject* t, void*) {
  return Py_NewRef(t->loop ? (PyObject*)t->loop : Py_None);
}
PyObject* get_protocol_attr(DatagramObject* t, void*) {
  return Py_NewRef(t->protocol ? t->protocol : Py_None);
}
PyObject* get_address(DatagramObject* t, void*) {
  return Py_NewRef(t->address ? t->address : Py_None);
}
PyObject* get_max_size(DatagramObject*, void*) {
  return PyLong_FromSsize_t(kMaxSize);
}

PyMethodDef dt_methods[] = {
    {"sendto", (PyCFunction)(void (*)(void))dt_sendto, METH_FASTCALL | METH_KEYWORDS,
     "sendto(data, addr=None): send a datagram (queued if the socket is not writable)"},
    {"close", (PyCFunction)dt_close, METH_NOARGS,
     "Stop reading; connection_lost(None) once queued datagrams are sent"},
    {"abort", (PyCFunction)dt_abort, METH_NOARGS, "Close now, dropping queued datagrams"},
    {"is_closing", (PyCFunction)dt_is_closing, METH_NOARGS, nullptr},
    {"set_protocol", (PyCFunction)dt_set_protocol, METH_O, nullptr},
    {"get_protocol", (PyCFunction)dt_get_protocol, METH_NOARGS, nullptr},
    {"get_extra_info", (PyCFunction)(void (*)(void))dt_get_extra_info,
     METH_FASTCALL | METH_KEYWORDS, "get_extra_info(name, default=None)"},
    {"get_write_buffer_size", (PyCFunction)dt_get_write_buffer_size, METH_NOARGS, nullptr},
    {"get_write_buffer_limits", (PyCFunction)dt_get_write_buffer_limits, METH_NOARGS, nullptr},
    {"set_write_buffer_limits", (PyCFunction)(void (*)(void))dt_set_write_buffer_limits,
     METH_FASTCALL | METH_KEYWORDS, "set_write_buffer_limits(high=None, low=None)"},
    {"_start_reading", (PyCFunction)dt_start_reading, METH_NOARGS, nullptr},
    {"_call_connection_lost", (PyCFunction)dt_call_connection_lost, METH_O, nullptr},
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef dt_getset[] = {
    {"_sock", (getter)get_sock, nullptr, nullptr, nullptr},
    {"_loop", (getter)get_loop, nullptr, nullptr, nullptr},  // shadows the mixin's slot
    {"_protocol", (getter)get_protocol_attr, nullptr, nullptr, nullptr},
    {"_address", (getter)get_address, nullptr, nullptr, nullptr},
    {"max_size", (getter)get_max_size, nullptr, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyMemberDef dt_members[] = {
    {"_extra", T_OBJECT_EX, offsetof(DatagramObject, extra), READONLY, nullptr},
    {"_sock_fd", T_INT, offsetof(DatagramObject, fd), READONLY, nullptr},
    {"_closing", T_BOOL, offsetof(DatagramObject, closing), READONLY, nullptr},
    {"_conn_lost", T_PYSSIZET, offsetof(DatagramObject, conn_lost), READONLY, nullptr},
    {"_buffer_size", T_PYSSIZET, offsetof(DatagramObject, buffer_size), READONLY, nullptr},
    {"_protocol_paused", T_BOOL, offsetof(DatagramObject, protocol_paused), READONLY, nullptr},
    {"_high_water", T_PYSSIZET, offsetof(DatagramObject, high_water), READONLY, nullptr},
    {"_low_water", T_PYSSIZET, offsetof(DatagramObject, low_water), READONLY, nullptr},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(DatagramObject, weakreflist), READONLY, nullptr},
    {nullptr, 0, 0, 0, nullptr},
};

// --- type slots ---------------------------------------------------------------------------

// try: value = getattr(sock, method)() except OSError: value = None
PyObject* name_or_none(PyObject* sock, PyObject* method) {
  PyObject* v = PyObject_CallMethodNoArgs(sock, method);
  if (v == nullptr && PyErr_ExceptionMatches(PyExc_OSError)) {
    PyErr_Clear();
    v = Py_NewRef(Py_None);
  }
  return v;
}

// DatagramTransport(loop, sock, protocol, address=None, waiter=None, extra=None): asyncio's
// _SelectorDatagramTransport.__init__, step by step.
int init_transport(DatagramObject* t, PyObject* loop, PyObject* sock, PyObject* protocol,
                   PyObject* address, PyObject* waiter, PyObject* extra) {
  t->loop = (LoopObject*)Py_NewRef(loop);
  t->high_water = kDefaultHighWater;
  t->low_water = kDefaultHighWater / 4;
  t->extra = extra == Py_None ? PyDict_New() : Py_NewRef(extra);
  if (t->extra == nullptr) return -1;
  PyObject* tsock = PyObject_CallOneArg(n.transport_socket, sock);
  if (tsock == nullptr) return -1;
  int r = PyObject_SetItem(t->extra, n.k_socket, tsock);
  Py_DECREF(tsock);
  if (r < 0) return -1;
  PyObject* sockname = name_or_none(sock, n.getsockname);
  if (sockname == nullptr) return -1;
  r = PyObject_SetItem(t->extra, n.k_sockname, sockname);
  Py_DECREF(sockname);
  if (r < 0) return -1;
  int has_peer = PySequence_Contains(t->extra, n.k_peername);
  if (has_peer < 0) return -1;
  if (!has_peer) {
    PyObject* peername = name_or_none(sock, n.getpeername);
    if (peername == nullptr) return -1;
    r = PyObject_SetItem(t->extra, n.k_peername, peername);
    Py_DECREF(peername);
    if (r < 0) return -1;
  }
  PyObject* peer = PyObject_GetItem(t->extra, n.k_peername);
  if (peer == nullptr) return -1;
  int connected = PyObject_IsTrue(peer);
  Py_DECREF(peer);
  if (connected < 0) return -1;
  t->connected = connected;

  PyObject* fdobj = PyObject_CallMethodNoArgs(sock, n.fileno);
  if (fdobj == nullptr) return -1;
  long fd = PyLong_AsLong(fdobj);
  Py_DECREF(fdobj);
  if (fd == -1 && PyErr_Occurred()) return -1;
  t->sock = Py_NewRef(sock);
  t->fd = static_cast<int>(fd);
  t->native = Py_IS_TYPE(sock, (PyTypeObject*)n.socket_type);
  if (PyObject* fam = PyObject_GetAttr(sock, n.family)) {
    long family = PyLong_AsLong(fam);
    Py_DECREF(fam);
    if (family == -1 && PyErr_Occurred()) return -1;
    t->family = static_cast<int>(family);
  } else {
    PyErr_Clear();
    t->family = -1;
  }
  t->native_inet = t->native && (t->family == AF_INET || t->family == AF_INET6);
  t->protocol = Py_NewRef(protocol);
  t->protocol_connected = true;

  t->context = PyContext_CopyCurrent();
  if (t->context == nullptr) return -1;
  if (check_closed(t->loop) < 0) return -1;
  // loop._transports[fd] = self
  if (watcher_attach(t->loop, &t->watcher, t->fd) < 0) return -1;

  t->address = Py_NewRef(address);
  int has_address = PyObject_IsTrue(address);
  if (has_address < 0) return -1;
  t->has_address = has_address;

  PyObject* made = PyObject_GetAttr(protocol, n.connection_made);
  if (made == nullptr) return -1;
  r = call_soon(t->loop, made, (PyObject*)t);
  Py_DECREF(made);
  if (r < 0) return -1;
  // Only start reading when connection_made() has been called.
  if (call_soon_method(t, n.start_reading) < 0) return -1;
  if (waiter != Py_None) {
    // Only wake up the waiter when connection_made() has been called.
    if (call_soon(t->loop, n.set_result_unless_cancelled, waiter, Py_None) < 0) return -1;
  }
  return 0;
}

PyObject* dt_new(PyTypeObject* type, PyObject* args, PyObject* kwds) {
  static const char* kwlist[] = {"loop", "sock", "protocol", "address", "waiter", "extra", nullptr};
  PyObject *loop, *sock, *protocol, *address = Py_None, *waiter = Py_None, *extra = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|OOO:DatagramTransport", (char**)kwlist, &loop,
                                   &sock, &protocol, &address, &waiter, &extra)) {
    return nullptr;
  }
  if (!PyObject_TypeCheck(loop, &LoopCoreType)) {
    PyErr_Format(PyExc_TypeError, "DatagramTransport needs a tideloop loop, not %R", loop);
    return nullptr;
  }
  auto* t = reinterpret_cast<DatagramObject*>(type->tp_alloc(type, 0));
  if (t == nullptr) return nullptr;
  // tp_alloc zeroed the object and the GC already tracks it: the C++ members first.
  new (&t->watcher) Watcher();
  t->watcher.ops = &kDatagramOps;
  new (&t->queue) std::deque<Queued>();
  t->fd = -1;
  if (init_transport(t, loop, sock, protocol, address, waiter, extra) < 0) {
    // As a half-built asyncio transport: once it holds the socket, its finalizer warns and
    // closes it. The loop must not keep it.
    if (t->watcher.registered) {
      PyObject *et, *ev, *etb;
      PyErr_Fetch(&et, &ev, &etb);
      watcher_detach(t->loop, &t->watcher);
      PyErr_Restore(et, ev, etb);
    }
    Py_DECREF(t);
    return nullptr;
  }
  return (PyObject*)t;
}

// A constructed transport ignores __init__ (the base class's would overwrite _extra).
int dt_init(PyObject*, PyObject*, PyObject*) {
  return 0;
}

int dt_traverse(DatagramObject* t, visitproc visit, void* arg) {
  Py_VISIT(Py_TYPE((PyObject*)t));
  Py_VISIT(t->extra);
  Py_VISIT(t->loop);
  Py_VISIT(t->sock);
  Py_VISIT(t->protocol);
  Py_VISIT(t->address);
  Py_VISIT(t->context);
  Py_VISIT(t->last_addr);
  for (const Queued& q : t->queue) {
    Py_VISIT(q.data);
    Py_VISIT(q.addr);
  }
  return 0;
}

// Breaks cycles. The watcher stays as it is: while it is attached the loop holds a reference to
// the transport, so the transport is only collected together with its loop, whose own clear
// calls datagram_loop_closing (which copes with the fields cleared here).
int dt_clear(DatagramObject* t) {
  Py_CLEAR(t->extra);
  Py_CLEAR(t->sock);
  Py_CLEAR(t->protocol);
  Py_CLEAR(t->address);
  Py_CLEAR(t->context);
  Py_CLEAR(t->last_addr);
  clear_queue(t);
  Py_CLEAR(t->loop);
  return 0;
}

// asyncio's __del__: an open socket is closed with a ResourceWarning.
void dt_finalize(DatagramObject* t) {
  if (t->sock == nullptr) return;
  PyObject *et, *ev, *etb;
  PyErr_Fetch(&et, &ev, &etb);
  if (PyErr_ResourceWarning((PyObject*)t, 1, "unclosed transport %R", (PyObject*)t) < 0) {
    PyErr_WriteUnraisable((PyObject*)t);
  }
  if (PyObject* sock = t->sock) {
    t->sock = nullptr;
    PyObject* r = PyObject_CallMethodNoArgs(sock, n.close);
    if (r == nullptr) PyErr_WriteUnraisable((PyObject*)t);
    Py_XDECREF(r);
    Py_DECREF(sock);
  }
  PyErr_Restore(et, ev, etb);
}

void dt_dealloc(DatagramObject* t) {
  if (PyObject_CallFinalizerFromDealloc((PyObject*)t) < 0) return;  // resurrected
  PyObject_GC_UnTrack(t);
  PyTypeObject* type = Py_TYPE((PyObject*)t);
  if (t->weakreflist != nullptr) PyObject_ClearWeakRefs((PyObject*)t);
  dt_clear(t);
  t->queue.~deque();
  type->tp_free((PyObject*)t);
  Py_DECREF(type);
}

PyType_Slot dt_slots[] = {
    {Py_tp_doc, (void*)"The datagram transport of create_datagram_endpoint "
                       "(asyncio's _SelectorDatagramTransport, in C++)."},
    {Py_tp_new, (void*)dt_new},
    {Py_tp_init, (void*)dt_init},
    {Py_tp_dealloc, (void*)dt_dealloc},
    {Py_tp_finalize, (void*)dt_finalize},
    {Py_tp_traverse, (void*)dt_traverse},
    {Py_tp_clear, (void*)dt_clear},
    {Py_tp_repr, (void*)dt_repr},
    {Py_tp_methods, dt_methods},
    {Py_tp_getset, dt_getset},
    {Py_tp_members, dt_members},
    {0, nullptr},
};

PyType_Spec dt_spec = {
    "tideloop._tideloop.DatagramTransport",
    sizeof(DatagramObject),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    dt_slots,
};

int init_names() {
  struct {
    PyObject** slot;
    const char* s;
  } names[] = {
      {&n.datagram_received, "datagram_received"},
      {&n.error_received, "error_received"},
      {&n.connection_made, "connection_made"},
      {&n.connection_lost, "connection_lost"},
      {&n.pause_writing, "pause_writing"},
      {&n.resume_writing, "resume_writing"},
      {&n.send, "send"},
      {&n.sendto, "sendto"},
      {&n.recvfrom, "recvfrom"},
      {&n.close, "close"},
      {&n.fileno, "fileno"},
      {&n.family, "family"},
      {&n.getsockname, "getsockname"},
      {&n.getpeername, "getpeername"},
      {&n.call_soon, "call_soon"},
      {&n.get, "get"},
      {&n.warning, "warning"},
      {&n.debug, "debug"},
      {&n.exc_info, "exc_info"},
      {&n.start_reading, "_start_reading"},
      {&n.call_connection_lost, "_call_connection_lost"},
      {&n.k_socket, "socket"},
      {&n.k_sockname, "sockname"},
      {&n.k_peername, "peername"},
      {&n.k_message, "message"},
      {&n.k_exception, "exception"},
      {&n.k_transport, "transport"},
      {&n.k_protocol, "protocol"},
  };
  for (auto& e : names) {
    if (intern(e.slot, e.s) < 0) return -1;
  }
  n.transport_socket = import_attr("asyncio.trsock", "TransportSocket");
  n.set_result_unless_cancelled = import_attr("asyncio.futures", "_set_result_unless_cancelled");
  n.socket_type = import_attr("socket", "socket");
  n.logger = import_attr("asyncio.log", "logger");
  PyObject* threshold = import_attr("asyncio.constants", "LOG_THRESHOLD_FOR_CONNLOST_WRITES");
  if (!n.transport_socket || !n.set_result_unless_cancelled || !n.socket_type || !n.logger ||
      !threshold) {
    Py_XDECREF(threshold);
    return -1;
  }
  n.connlost_warn_threshold = PyLong_AsLong(threshold);
  Py_DECREF(threshold);
  if (n.connlost_warn_threshold == -1 && PyErr_Occurred()) return -1;
  return 0;
}

}  // namespace

int udp_types_ready(PyObject* module) {
  static_assert(offsetof(DatagramObject, extra) == sizeof(PyObject),
                "`extra` must sit where asyncio.BaseTransport's `_extra` slot is");
  if (init_names() < 0) return -1;
  // A subclass of asyncio.transports._FlowControlMixin, as asyncio's _SelectorDatagramTransport
  // is (so isinstance(t, asyncio.Transport) holds and isinstance(t, asyncio.DatagramTransport)
  // does not, exactly as with asyncio), when its layout is the expected one: the object header
  // and its five slots, nothing else. Otherwise a plain type.
  PyObject* base = import_attr("asyncio.transports", "_FlowControlMixin");
  if (base == nullptr) return -1;
  PyObject* bases = nullptr;
  if (PyType_Check(base) &&
      ((PyTypeObject*)base)->tp_basicsize ==
          static_cast<Py_ssize_t>(offsetof(DatagramObject, watcher)) &&
      ((PyTypeObject*)base)->tp_dictoffset == 0 && ((PyTypeObject*)base)->tp_weaklistoffset == 0) {
    bases = PyTuple_Pack(1, base);
  }
  Py_DECREF(base);
  PyObject* type = PyType_FromSpecWithBases(&dt_spec, bases);
  Py_XDECREF(bases);
  if (type == nullptr) return -1;
  g_type = (PyTypeObject*)type;  // kept for the process, like the static types
  return PyModule_AddObjectRef(module, "DatagramTransport", type);
}

}  // namespace tideloop::bridge
