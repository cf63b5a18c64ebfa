// StreamTransport (stream.hpp): asyncio 3.11's _SelectorSocketTransport for TCP and Unix stream
// sockets, with the same callbacks, order, messages and error handling, read and flushed from
// the loop's tick.
//
// One deliberate difference (docs/python-api.md): the writes a callback of the running loop makes
// are coalesced and sent in one sendmsg when its phase of the tick ends (may_defer(),
// flush_at_phase_end()), as uvloop sends at the end of its iteration; asyncio sends in write().
//
// The asyncio source it mirrors, for a reader checking parity: selector_events._SelectorTransport
// and _SelectorSocketTransport, transports._FlowControlMixin, base_events._set_nodelay. Where a
// method below says "asyncio:", that is the behaviour being reproduced.
#include "handles/stream.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "loop/args.hpp"
#include "structmember.h"

namespace tideloop::bridge {
namespace {

using T = StreamTransportObject;

// asyncio's _SelectorTransport.max_size: the most one recv() asks for.
constexpr std::size_t kMaxRecv = 256 * 1024;
// asyncio's _FlowControlMixin defaults.
constexpr Py_ssize_t kDefaultHighWater = 64 * 1024;

// One receive buffer for every transport: read_ready copies what recv() returned into the bytes
// object before any Python code runs, and only the GIL holder reads.
alignas(64) char g_recv_buf[kMaxRecv];

// Free copy blocks of WriteQueue::kBlockSize, shared by all transports (GIL held): a transport
// whose queue fills and empties over and over reuses blocks, and an idle transport keeps none.
constexpr std::size_t kMaxPooledBlocks = 32;
std::vector<char*> g_block_pool;

PyTypeObject* g_type = nullptr;

// Interned names and the asyncio objects used here (filled by stream_types_ready).
struct Names {
  PyObject* data_received;
  PyObject* get_buffer;
  PyObject* buffer_updated;
  PyObject* eof_received;
  PyObject* connection_made;
  PyObject* connection_lost;
  PyObject* pause_writing;
  PyObject* resume_writing;
  PyObject* close;
  PyObject* fileno;
  PyObject* getsockname;
  PyObject* getpeername;
  PyObject* proto;
  PyObject* attach;
  PyObject* detach;
  PyObject* create_future;
  PyObject* join;
  PyObject* debug;
  PyObject* warning;
  PyObject* start_reading;
  PyObject* call_connection_lost;
  PyObject* key_socket;
  PyObject* key_sockname;
  PyObject* key_peername;
  PyObject* key_message;
  PyObject* key_exception;
  PyObject* key_transport;
  PyObject* key_protocol;
  PyObject* kw_exc_info;  // ("exc_info",)
  PyObject* minus_one;
  PyObject* msg_send_raised;  // "socket.send() raised exception."
  PyObject* flow_control_mixin;
  PyObject* buffered_protocol;
  PyObject* transport_socket;
  PyObject* set_result_unless_cancelled;
  PyObject* logger;
  PyObject* try_native;  // constants._SendfileMode.TRY_NATIVE
  long connlost_threshold;
};
Names N;

lenfunc g_context_len = nullptr;

T* of(Watcher* w) {
  return reinterpret_cast<T*>(reinterpret_cast<char*>(w) - offsetof(T, watcher));
}

bool queued(const T* t) {
  return t->wq != nullptr && !t->wq->empty();
}

std::size_t queued_size(const T* t) {
  return t->wq != nullptr ? t->wq->size() : 0;
}

// --- small helpers ------------------------------------------------------------------------

// The current exception as an instance with its traceback (NULL if none).
PyObject* fetch_exception() {
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  if (type == nullptr) return nullptr;
  PyErr_NormalizeException(&type, &value, &tb);
  if (tb != nullptr && value != nullptr) PyException_SetTraceback(value, tb);
  Py_XDECREF(type);
  Py_XDECREF(tb);
  return value;
}

bool must_propagate() {
  return PyErr_ExceptionMatches(PyExc_SystemExit) ||
         PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
}

// protocol.<name>(arg) (arg may be NULL: no argument). Holds its own reference to the protocol,
// which the callback may replace (set_protocol) or drop (connection_lost).
PyObject* call_protocol(T* t, PyObject* name, PyObject* arg) {
  PyObject* proto = t->protocol;
  if (proto == nullptr) Py_RETURN_NONE;
  Py_INCREF(proto);
  PyObject* stack[3] = {nullptr, proto, arg};
  PyObject* r = PyObject_VectorcallMethod(name, stack + 1,
                                          (arg ? 2 : 1) | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
  Py_DECREF(proto);
  return r;
}

bool context_is_empty(PyObject* ctx) {
  return ctx == nullptr || (g_context_len != nullptr && g_context_len(ctx) == 0);
}

// *slot = a copy of the current context, or NULL when it holds no variable (a copy of an empty
// context is an empty context nobody else can reach: it is created when first entered).
int snapshot_context(PyObject** slot) {
  PyObject* cur = PyThreadState_Get()->context;
  if (context_is_empty(cur)) {
    Py_CLEAR(*slot);
    return 0;
  }
  PyObject* c = PyContext_CopyCurrent();
  if (c == nullptr) return -1;
  Py_XSETREF(*slot, c);
  return 0;
}

// Runs a protocol callback in a transport's context (like the handle asyncio would have run).
class ContextScope {
 public:
  ContextScope() = default;
  ContextScope(const ContextScope&) = delete;
  ContextScope& operator=(const ContextScope&) = delete;
  int enter(PyObject** slot) {
    if (ctx_ != nullptr) return 0;
    if (*slot == nullptr) {
      *slot = PyContext_New();
      if (*slot == nullptr) return -1;
    }
    ctx_ = Py_NewRef(*slot);  // the slot may be cleared while entered (connection_lost)
    if (PyContext_Enter(ctx_) < 0) {
      Py_CLEAR(ctx_);
      return -1;
    }
    return 0;
  }
  ~ContextScope() {
    if (ctx_ == nullptr) return;
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    if (PyContext_Exit(ctx_) < 0) PyErr_WriteUnraisable(ctx_);
    PyErr_Restore(et, ev, etb);
    Py_DECREF(ctx_);
  }

 private:
  PyObject* ctx_ = nullptr;
};

// asyncio's logger: logger.debug(fmt, *args, exc_info=exc) (exc may be NULL).
void log_debug(const char* fmt, PyObject* a, PyObject* b, PyObject* exc) {
  PyObject *et, *ev, *etb;
  PyErr_Fetch(&et, &ev, &etb);
  PyObject* f = PyUnicode_FromString(fmt);
  PyObject* meth = f ? PyObject_GetAttr(N.logger, N.debug) : nullptr;
  if (meth != nullptr) {
    // positional (fmt, a, b), then the keyword value exc_info=exc
    PyObject* stack[4] = {f, nullptr, nullptr, nullptr};
    Py_ssize_t n = 1;
    if (a != nullptr) stack[n++] = a;
    if (b != nullptr) stack[n++] = b;
    stack[n] = exc;
    PyObject* r = PyObject_Vectorcall(meth, stack, n, exc ? N.kw_exc_info : nullptr);
    if (r == nullptr) PyErr_WriteUnraisable(N.logger);
    Py_XDECREF(r);
  } else {
    PyErr_WriteUnraisable(N.logger);
  }
  Py_XDECREF(meth);
  Py_XDECREF(f);
  PyErr_Restore(et, ev, etb);
}

bool debug_on(T* t) {
  return t->loop != nullptr && t->loop->debug;
}

// loop.call_soon(cb, *args); 0 or -1.
int call_soon(T* t, PyObject* cb, PyObject* a1 = nullptr, PyObject* a2 = nullptr) {
  if (t->loop == nullptr) return 0;
  PyObject* args[3] = {cb, a1, a2};
  Py_ssize_t n = 1 + (a1 != nullptr) + (a2 != nullptr);
  PyObject* h = loop_call_soon(t->loop, args, n, nullptr);
  if (h == nullptr) return -1;
  Py_DECREF(h);
  return 0;
}

// loop.call_soon(self.<method>, *args)
int call_soon_method(T* t, PyObject* name, PyObject* a1 = nullptr) {
  PyObject* m = PyObject_GetAttr((PyObject*)t, name);
  if (m == nullptr) return -1;
  int r = call_soon(t, m, a1);
  Py_DECREF(m);
  return r;
}

// The loop's reference follows the interest (stream.hpp, `held`). Dropping it never frees the
// transport here: during a batch the release is deferred, otherwise the caller holds a reference.
void sync_hold(T* t) {
  bool want = t->watcher.registered && (t->watcher.interest != 0 || !t->started);
  if (want == t->held) return;
  if (want) {
    Py_INCREF(t);
    t->held = true;
  } else {
    t->held = false;
    release_after_batch(S(t->loop), (PyObject*)t);
  }
}

// The events the poller should wait for, in step with asyncio's reader/writer registrations.
int update_interest(T* t) {
  if (!t->watcher.registered || t->loop == nullptr) return 0;
  std::uint32_t want = 0;
  if (!t->lent) {
    if (t->reader_on) want |= EPOLLIN;
    if (queued(t)) want |= EPOLLOUT;
  }
  int r = watcher_set_interest(t->loop, &t->watcher, want);
  sync_hold(t);
  return r;
}

// Leaves the registry (the registry releases the reference it holds, if any).
void detach_watcher(T* t) {
  if (t->watcher.registered && t->loop != nullptr) watcher_detach(t->loop, &t->watcher);
  t->held = false;
}

void update_interest_quietly(T* t) {
  if (update_interest(t) < 0) PyErr_Clear();
}

// loop.call_exception_handler({'message', 'exception', 'transport', 'protocol'}).
int report_to(LoopObject* loop, T* t, const char* message, PyObject* exc) {
  PyObject* ctx = PyDict_New();
  if (ctx == nullptr) return -1;
  PyObject* msg = PyUnicode_FromString(message);
  if (msg == nullptr || PyDict_SetItem(ctx, N.key_message, msg) < 0 ||
      PyDict_SetItem(ctx, N.key_exception, exc) < 0 ||
      PyDict_SetItem(ctx, N.key_transport, (PyObject*)t) < 0 ||
      PyDict_SetItem(ctx, N.key_protocol, t->protocol ? t->protocol : Py_None) < 0) {
    Py_XDECREF(msg);
    Py_DECREF(ctx);
    return -1;
  }
  Py_DECREF(msg);
  PyObject* r = PyObject_CallMethodOneArg((PyObject*)loop, g.str_call_exception_handler, ctx);
  Py_DECREF(ctx);
  if (r == nullptr) return -1;
  Py_DECREF(r);
  return 0;
}

int report(T* t, const char* message, PyObject* exc) {
  if (t->loop == nullptr) return 0;
  return report_to(t->loop, t, message, exc);
}

// --- closing ------------------------------------------------------------------------------

// asyncio's _force_close: drop the queue, stop reading, connection_lost(exc) soon.
int force_close(T* t, PyObject* exc) {
  if (t->conn_lost) return 0;
  if (t->wq != nullptr) t->wq->clear();
  if (!t->closing) {
    t->closing = true;
    t->reader_on = false;
  }
  update_interest_quietly(t);
  t->conn_lost += 1;
  return call_soon_method(t, N.call_connection_lost, exc ? exc : Py_None);
}

// asyncio's _fatal_error: OSErrors are only logged in debug mode, anything else goes to the
// exception handler; then _force_close(exc).
int fatal_error(T* t, PyObject* exc, const char* message) {
  if (PyObject_TypeCheck(exc, (PyTypeObject*)PyExc_OSError)) {
    if (debug_on(t)) {
      PyObject* m = PyUnicode_FromString(message);
      if (m != nullptr) log_debug("%r: %s", (PyObject*)t, m, exc);
      Py_XDECREF(m);
      PyErr_Clear();
    }
  } else if (report(t, message, exc) < 0) {
    return -1;
  }
  return force_close(t, exc);
}

// The current exception is a failure of `message`: fatal for the transport, except
// SystemExit/KeyboardInterrupt, which propagate (-1) as in asyncio.
int fatal_current(T* t, const char* message) {
  if (must_propagate()) return -1;
  PyObject* exc = fetch_exception();
  if (exc == nullptr) return 0;
  int r = fatal_error(t, exc, message);
  Py_DECREF(exc);
  return r;
}

int close_impl(T* t) {
  if (t->closing) return 0;
  t->closing = true;
  t->reader_on = false;
  update_interest_quietly(t);
  if (!queued(t)) {
    t->conn_lost += 1;
    return call_soon_method(t, N.call_connection_lost, Py_None);
  }
  return 0;
}

void close_socket(T* t) {
  detach_watcher(t);
  PyObject* s = t->sock;
  if (s == nullptr) return;
  t->sock = nullptr;
  PyObject* r = PyObject_CallMethodNoArgs(s, N.close);
  if (r == nullptr) PyErr_WriteUnraisable(s);
  Py_XDECREF(r);
  Py_DECREF(s);
}

// asyncio's _call_connection_lost: connection_lost(exc), then close the socket, detach from the
// server and drop the references; the empty waiter of a sendfile fails.
PyObject* call_connection_lost(T* t, PyObject* exc) {
  PyObject* res = call_protocol(t, N.connection_lost, exc);
  PyObject *et, *ev, *etb;
  PyErr_Fetch(&et, &ev, &etb);
  if (t->conn_lost == 0) t->conn_lost = 1;  // later writes are counted, not sent
  t->closing = true;
  t->reader_on = false;
  if (t->wq != nullptr) t->wq->clear();
  close_socket(t);
  Py_CLEAR(t->protocol);
  Py_CLEAR(t->read_ctx);
  Py_CLEAR(t->write_ctx);
  PyObject* server = t->server;
  t->server = nullptr;
  LoopObject* loop = t->loop;
  t->loop = nullptr;
  if (server != nullptr) {
    PyObject* r = PyObject_CallMethodNoArgs(server, N.detach);
    if (r == nullptr) {
      if (et == nullptr) {
        PyErr_Fetch(&et, &ev, &etb);
      } else {
        PyErr_WriteUnraisable(server);
      }
      Py_CLEAR(res);
    }
    Py_XDECREF(r);
    Py_DECREF(server);
  }
  Py_XDECREF(loop);
  PyErr_Restore(et, ev, etb);
  if (res != nullptr && t->empty_waiter != nullptr) {
    PyObject* msg = PyUnicode_FromString("Connection is closed by peer");
    PyObject* e = msg ? PyObject_CallOneArg(PyExc_ConnectionError, msg) : nullptr;
    Py_XDECREF(msg);
    PyObject* r = e ? PyObject_CallMethodOneArg(t->empty_waiter, g.str_set_exception, e) : nullptr;
    Py_XDECREF(e);
    if (r == nullptr) Py_CLEAR(res);
    Py_XDECREF(r);
  }
  return res;
}

// --- flow control -------------------------------------------------------------------------

int maybe_pause_protocol(T* t) {
  if (static_cast<Py_ssize_t>(queued_size(t)) <= t->high_water) return 0;
  if (t->protocol_paused) return 0;
  t->protocol_paused = true;
  PyObject* r = call_protocol(t, N.pause_writing, nullptr);
  if (r != nullptr) {
    Py_DECREF(r);
    return 0;
  }
  if (must_propagate()) return -1;
  PyObject* exc = fetch_exception();
  int rr = report(t, "protocol.pause_writing() failed", exc);
  Py_DECREF(exc);
  return rr;
}

int maybe_resume_protocol(T* t) {
  if (!t->protocol_paused || static_cast<Py_ssize_t>(queued_size(t)) > t->low_water) return 0;
  t->protocol_paused = false;
  PyObject* r = call_protocol(t, N.resume_writing, nullptr);
  if (r != nullptr) {
    Py_DECREF(r);
    return 0;
  }
  if (must_propagate()) return -1;
  PyObject* exc = fetch_exception();
  int rr = report(t, "protocol.resume_writing() failed", exc);
  Py_DECREF(exc);
  return rr;
}

// --- reading (inside the tick) ------------------------------------------------------------

ssize_t recv_some(int fd, void* buf, std::size_t n) {
  ssize_t r;
  do {
    r = ::recv(fd, buf, n, MSG_DONTWAIT);
  } while (r < 0 && errno == EINTR);
  return r;
}

bool would_block(int err) {
  return err == EAGAIN || err == EWOULDBLOCK;
}

// asyncio's _read_ready__on_eof.
int on_eof(T* t) {
  if (debug_on(t)) log_debug("%r received EOF", (PyObject*)t, nullptr, nullptr);
  PyObject* r = call_protocol(t, N.eof_received, nullptr);
  if (r == nullptr) return fatal_current(t, "Fatal error: protocol.eof_received() call failed.");
  int keep_open = PyObject_IsTrue(r);
  Py_DECREF(r);
  if (keep_open < 0) return fatal_current(t, "Fatal error: protocol.eof_received() call failed.");
  if (keep_open) {
    // The protocol may still write; nothing more can be read.
    t->reader_on = false;
    update_interest_quietly(t);
    return 0;
  }
  return close_impl(t);
}

// asyncio's _read_ready__get_buffer: the protocol's buffer is filled in place.
int read_into_protocol_buffer(T* t, ContextScope& scope) {
  if (scope.enter(&t->read_ctx) < 0) return fatal_current(t, "Fatal error on transport");
  PyObject* buf = call_protocol(t, N.get_buffer, N.minus_one);
  if (buf == nullptr) return fatal_current(t, "Fatal error: protocol.get_buffer() call failed.");
  Py_ssize_t len = PyObject_Size(buf);
  if (len <= 0) {
    if (len == 0) PyErr_SetString(PyExc_RuntimeError, "get_buffer() returned an empty buffer");
    Py_DECREF(buf);
    return fatal_current(t, "Fatal error: protocol.get_buffer() call failed.");
  }
  Py_buffer view;
  if (PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE) < 0) {
    // socket.recv_into's error for a read-only buffer
    PyErr_Clear();
    PyErr_Format(PyExc_TypeError,
                 "recv_into() argument 1 must be read-write bytes-like object, not %.50s",
                 _PyType_Name(Py_TYPE(buf)));
    Py_DECREF(buf);
    return fatal_current(t, "Fatal read error on socket transport");
  }
  ssize_t n = recv_some(t->fd, view.buf, static_cast<std::size_t>(view.len));
  int err = errno;
  PyBuffer_Release(&view);
  Py_DECREF(buf);
  if (n < 0) {
    if (would_block(err)) return 0;
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    return fatal_current(t, "Fatal read error on socket transport");
  }
  if (n == 0) return on_eof(t);
  PyObject* nb = PyLong_FromSsize_t(n);
  if (nb == nullptr) return fatal_current(t, "Fatal error: protocol.buffer_updated() call failed.");
  PyObject* r = call_protocol(t, N.buffer_updated, nb);
  Py_DECREF(nb);
  if (r == nullptr) return fatal_current(t, "Fatal error: protocol.buffer_updated() call failed.");
  Py_DECREF(r);
  return 0;
}

// asyncio's _read_ready (one recv per readiness, as asyncio: the fd is level-triggered).
int read_ready(T* t) {
  if (t->conn_lost || t->sock == nullptr) return 0;
  ContextScope scope;
  if (t->buffered) return read_into_protocol_buffer(t, scope);
  ssize_t n = recv_some(t->fd, g_recv_buf, kMaxRecv);
  int err = errno;
  if (n < 0 && would_block(err)) return 0;
  if (scope.enter(&t->read_ctx) < 0) return fatal_current(t, "Fatal error on transport");
  if (n < 0) {
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    return fatal_current(t, "Fatal read error on socket transport");
  }
  if (n == 0) return on_eof(t);
  PyObject* data = PyBytes_FromStringAndSize(g_recv_buf, n);
  if (data == nullptr) return fatal_current(t, "Fatal read error on socket transport");
  PyObject* r = call_protocol(t, N.data_received, data);
  Py_DECREF(data);
  if (r == nullptr) return fatal_current(t, "Fatal error: protocol.data_received() call failed.");
  Py_DECREF(r);
  return 0;
}

// --- writing ------------------------------------------------------------------------------

ssize_t send_iov(int fd, iovec* iov, int n) {
  msghdr m{};
  m.msg_iov = iov;
  m.msg_iovlen = static_cast<std::size_t>(n);
  ssize_t r;
  do {
    r = ::sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (r < 0 && errno == EINTR);
  return r;
}

ssize_t send_some(int fd, const char* p, std::size_t n) {
  ssize_t r;
  do {
    r = ::send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (r < 0 && errno == EINTR);
  return r;
}

bool ensure_queue(T* t) {
  if (t->wq == nullptr) t->wq = new (std::nothrow) WriteQueue();
  return t->wq != nullptr;
}

// The queue went from empty to non-empty: watch EPOLLOUT, and remember the writer's context
// (asyncio's _add_writer copies the caller's context into the writer handle).
int start_writing(T* t) {
  if (snapshot_context(&t->write_ctx) < 0) return -1;
  return update_interest(t);
}

// The checks write() and writelines() share, in asyncio's order. Returns 1 to go on writing,
// 0 when the data is dropped (counted after the connection was lost), -1 with an exception.
int check_writable(T* t, std::size_t total) {
  if (t->eof) {
    PyErr_SetString(PyExc_RuntimeError, "Cannot call write() after write_eof()");
    return -1;
  }
  if (t->empty_waiter != nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "unable to write; sendfile is in progress");
    return -1;
  }
  if (total == 0) return 0;
  if (t->conn_lost) {
    if (t->conn_lost >= N.connlost_threshold) {
      PyObject* r = PyObject_CallMethodOneArg(N.logger, N.warning, N.msg_send_raised);
      if (r == nullptr) return -1;
      Py_DECREF(r);
    }
    t->conn_lost += 1;
    return 0;
  }
  return 1;
}

// A send error on the write() path: fatal for the transport, nothing raised to the caller.
PyObject* write_failed(T* t) {
  PyErr_SetFromErrno(PyExc_OSError);
  if (fatal_current(t, "Fatal write error on socket transport") < 0) return nullptr;
  Py_RETURN_NONE;
}

int write_ready(T* t);

// The end of the phase in which write() deferred bytes: send the queue (write_ready's path, so
// what the kernel does not take waits for EPOLLOUT as usual).
int flush_at_phase_end(PyObject* o) {
  T* t = reinterpret_cast<T*>(o);
  t->flush_pending = false;
  if (t->conn_lost || t->sock == nullptr || t->lent) return 0;
  if (queued(t)) {
    // write_ready() runs at EPOLLOUT, with EPOLLOUT already watched; here nothing watched it
    // yet, so what the kernel did not take must start the watch, or it waits forever (seen:
    // tests/python/test_differential.py, a write() then a large writelines()).
    int r = write_ready(t);
    if (r == 0 && queued(t)) update_interest_quietly(t);
    return r;
  }
  // send_queued_quietly() drained the queue meanwhile: finish what write_ready() does after the
  // last byte (it runs no Python code, so this was left for here).
  if (t->closing) {
    t->conn_lost += 1;
    return call_soon_method(t, N.call_connection_lost, Py_None);
  }
  if (t->eof && ::shutdown(t->fd, SHUT_WR) < 0) {
    PyErr_SetFromErrno(PyExc_OSError);
    return fatal_current(t, "Fatal write error on socket transport");
  }
  return 0;
}

// Sends what the kernel takes of the queue now and runs no Python code (no protocol callback
// can re-enter the caller): errors, and what follows a drained queue, are left to write_ready()
// at EPOLLOUT or to the phase end, which is scheduled whenever this runs.
void send_queued_quietly(T* t) {
  if (!queued(t) || t->conn_lost || t->sock == nullptr || t->lent) return;
  iovec iov[WriteQueue::kMaxIov];
  int cnt = t->wq->fill(iov, WriteQueue::kMaxIov);
  ssize_t s = send_iov(t->fd, iov, cnt);
  if (s > 0) t->wq->consume(static_cast<std::size_t>(s));
  if (queued(t)) update_interest_quietly(t);
}

// Coalescing: a write() made by a callback of the running loop, on its thread, to a socket with
// nothing queued is kept until the end of the current phase of the tick (the dispatch of this
// batch of events, or this tick's ready handles) and sent then, together with every other write
// of that phase, in one sendmsg: no wait for writability and no extra loop iteration, but one
// syscall and one wake-up of the peer where a handler writes headers and body separately
// (aiohttp). As uvloop does, once the pending bytes exceed the high-water mark they go at once
// instead, so flow control sees what asyncio's immediate send would leave, and
// get_write_buffer_size() sends pending bytes first, so it reports what asyncio would.
bool may_defer(T* t) {
  LoopObject* loop = t->loop;
  return loop != nullptr && loop->running && !t->closing &&
         PyThread_get_thread_ident() == loop->thread_id;
}

PyObject* write_bytes(T* t, const char* p, std::size_t n, PyObject* owner) {
  int ok = check_writable(t, n);
  if (ok <= 0) return ok < 0 ? nullptr : Py_NewRef(Py_None);
  bool was_empty = !queued(t);
  if ((was_empty || t->flush_pending) && !t->lent && t->sock != nullptr && may_defer(t) &&
      queued_size(t) + n <= static_cast<std::size_t>(t->high_water)) {
    if (!ensure_queue(t) || !t->wq->append(p, n, owner)) return PyErr_NoMemory();
    if (!t->flush_pending) {
      if (snapshot_context(&t->write_ctx) < 0) return nullptr;
      t->flush_pending = true;
      defer_to_phase_end(t->loop, (PyObject*)t, flush_at_phase_end);
    }
    Py_RETURN_NONE;
  }
  if (t->flush_pending && !t->lent && t->sock != nullptr) {
    // Over the high-water mark with bytes deferred: send them and these now, in order.
    if (!ensure_queue(t) || !t->wq->append(p, n, owner)) return PyErr_NoMemory();
    send_queued_quietly(t);
    if (maybe_pause_protocol(t) < 0) return nullptr;
    Py_RETURN_NONE;
  }
  if (was_empty && !t->lent && t->sock != nullptr) {
    // asyncio's "Optimization: try to send now".
    ssize_t s = send_some(t->fd, p, n);
    if (s < 0) {
      if (!would_block(errno)) return write_failed(t);
      s = 0;
    }
    if (static_cast<std::size_t>(s) == n) Py_RETURN_NONE;
    p += s;
    n -= static_cast<std::size_t>(s);
  }
  if (!ensure_queue(t) || !t->wq->append(p, n, owner)) return PyErr_NoMemory();
  if (was_empty && start_writing(t) < 0) return nullptr;
  if (maybe_pause_protocol(t) < 0) return nullptr;
  Py_RETURN_NONE;
}

// asyncio's _write_ready, run inside the tick on EPOLLOUT.
int write_ready(T* t) {
  if (!queued(t) || t->conn_lost || t->sock == nullptr) {
    update_interest_quietly(t);
    return 0;
  }
  iovec iov[WriteQueue::kMaxIov];
  int cnt = t->wq->fill(iov, WriteQueue::kMaxIov);
  ssize_t s = send_iov(t->fd, iov, cnt);
  ContextScope scope;
  if (s < 0) {
    if (would_block(errno)) return 0;
    PyErr_SetFromErrno(PyExc_OSError);
    PyObject* exc = fetch_exception();
    t->wq->clear();
    update_interest_quietly(t);
    if (scope.enter(&t->write_ctx) < 0) PyErr_Clear();
    int r = fatal_error(t, exc, "Fatal write error on socket transport");
    if (r == 0 && t->empty_waiter != nullptr) {
      PyObject* res = PyObject_CallMethodOneArg(t->empty_waiter, g.str_set_exception, exc);
      if (res == nullptr) r = -1;
      Py_XDECREF(res);
    }
    Py_DECREF(exc);
    return r;
  }
  t->wq->consume(static_cast<std::size_t>(s));
  bool empty = t->wq->empty();
  if (!t->protocol_paused && t->empty_waiter == nullptr && !(empty && t->closing)) {
    // The common case: no Python code to run.
    if (empty) {
      update_interest_quietly(t);
      if (t->eof && ::shutdown(t->fd, SHUT_WR) < 0) {
        int err = errno;
        if (scope.enter(&t->write_ctx) < 0) return fatal_current(t, "Fatal error on transport");
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        return fatal_current(t, "Fatal write error on socket transport");
      }
    }
    return 0;
  }
  if (scope.enter(&t->write_ctx) < 0) return fatal_current(t, "Fatal error on transport");
  if (maybe_resume_protocol(t) < 0) return -1;  // may write more
  if (!queued(t)) {
    update_interest_quietly(t);
    if (t->empty_waiter != nullptr) {
      PyObject* r = PyObject_CallMethodOneArg(t->empty_waiter, g.str_set_result, Py_None);
      if (r == nullptr) return -1;
      Py_DECREF(r);
    }
    if (t->closing) {
      // connection_lost runs from here, not from a handle of its own (as in asyncio): its
      // exception is reported the way the handle of _write_ready would have been.
      LoopObject* loop = reinterpret_cast<LoopObject*>(Py_NewRef((PyObject*)t->loop));
      PyObject* r = call_connection_lost(t, Py_None);
      int rr = 0;
      if (r == nullptr) {
        if (must_propagate()) {
          rr = -1;
        } else {
          PyObject* exc = fetch_exception();
          rr = report_to(loop, t, "Exception in callback StreamTransport._write_ready()", exc);
          Py_DECREF(exc);
        }
      }
      Py_XDECREF(r);
      Py_DECREF(loop);
      return rr;
    } else if (t->eof && t->sock != nullptr && ::shutdown(t->fd, SHUT_WR) < 0) {
      PyErr_SetFromErrno(PyExc_OSError);
      return fatal_current(t, "Fatal write error on socket transport");
    }
  }
  return 0;
}

// --- WatcherOps -----------------------------------------------------------------------------

// Readable first, then writable, as asyncio's selector queues the reader before the writer;
// HUP/ERR wake whichever is watched and the recv()/send() reports the error.
int stream_on_events(Watcher* w, LoopObject*, std::uint32_t ev) {
  T* t = of(w);
  if ((ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) && (w->interest & EPOLLIN)) {
    if (read_ready(t) < 0) return -1;
  }
  if (w->registered && (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR)) && (w->interest & EPOLLOUT)) {
    if (write_ready(t) < 0) return -1;
  }
  return 0;
}

PyObject* stream_owner(Watcher* w) {
  T* t = of(w);
  return t->held ? (PyObject*)t : nullptr;
}

// The loop closes with the transport open: release the fd now (asyncio leaves it to the
// transport's __del__) and stop using the loop; no callback runs any more.
void stream_loop_closing(Watcher* w, LoopObject*) {
  T* t = of(w);
  t->closing = true;
  t->reader_on = false;
  if (t->conn_lost == 0) t->conn_lost = 1;
  if (t->wq != nullptr) t->wq->clear();
  // The watcher is already detached; `held` is left as it is: the registry asks owner() right
  // after this to drop the reference it holds.
  PyObject* s = t->sock;
  t->sock = nullptr;
  if (s != nullptr) {
    PyObject* r = PyObject_CallMethodNoArgs(s, N.close);
    if (r == nullptr) PyErr_WriteUnraisable(s);
    Py_XDECREF(r);
    Py_DECREF(s);
  }
  Py_CLEAR(t->loop);
}

PyObject* stream_object(Watcher* w) {
  return (PyObject*)of(w);
}

const WatcherOps kStreamOps = {"transport", stream_on_events,    stream_owner,
                               nullptr,     stream_loop_closing, stream_object};

// --- Python methods -------------------------------------------------------------------------

int set_protocol_impl(T* t, PyObject* protocol) {
  int b = PyObject_IsInstance(protocol, N.buffered_protocol);
  if (b < 0) return -1;
  t->buffered = b != 0;
  Py_INCREF(protocol);
  Py_XSETREF(t->protocol, protocol);
  return 0;
}

PyObject* st_write(T* t, PyObject* data) {
  if (PyBytes_Check(data)) {
    return write_bytes(t, PyBytes_AS_STRING(data), static_cast<std::size_t>(PyBytes_GET_SIZE(data)),
                       data);
  }
  if (PyByteArray_Check(data)) {
    return write_bytes(t, PyByteArray_AS_STRING(data),
                       static_cast<std::size_t>(PyByteArray_GET_SIZE(data)), nullptr);
  }
  if (PyMemoryView_Check(data)) {
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return nullptr;
    PyObject* r = write_bytes(t, static_cast<const char*>(view.buf),
                              static_cast<std::size_t>(view.len), nullptr);
    PyBuffer_Release(&view);
    return r;
  }
  PyErr_Format(PyExc_TypeError, "data argument must be a bytes-like object, not '%.200s'",
               _PyType_Name(Py_TYPE(data)));
  return nullptr;
}

// 3.11's writelines is write(b''.join(list_of_data)); here the pieces go out in one sendmsg()
// without being joined (what the kernel does not take is queued).
PyObject* st_writelines(T* t, PyObject* arg) {
  std::vector<Py_buffer> views;
  bool fast = PyList_CheckExact(arg) || PyTuple_CheckExact(arg);
  if (fast) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(arg);
    PyObject** items = PySequence_Fast_ITEMS(arg);
    views.reserve(static_cast<std::size_t>(n));
    for (Py_ssize_t i = 0; i < n; ++i) {
      Py_buffer v;
      if (PyObject_GetBuffer(items[i], &v, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        fast = false;  // b''.join raises the proper TypeError
        break;
      }
      views.push_back(v);
    }
  }
  auto release = [&] {
    for (Py_buffer& v : views) PyBuffer_Release(&v);
  };
  if (!fast) {
    release();
    PyObject* empty = PyBytes_FromStringAndSize(nullptr, 0);
    if (empty == nullptr) return nullptr;
    PyObject* joined = PyObject_CallMethodOneArg(empty, N.join, arg);
    Py_DECREF(empty);
    if (joined == nullptr) return nullptr;
    PyObject* r = st_write(t, joined);
    Py_DECREF(joined);
    return r;
  }
  std::size_t total = 0;
  for (Py_buffer& v : views) total += static_cast<std::size_t>(v.len);
  int ok = check_writable(t, total);
  if (ok <= 0) {
    release();
    return ok < 0 ? nullptr : Py_NewRef(Py_None);
  }
  bool was_empty = !queued(t);
  std::size_t first = 0;   // the first view not completely sent
  std::size_t offset = 0;  // bytes of views[first] already sent
  if (was_empty && !t->lent && t->sock != nullptr) {
    iovec iov[WriteQueue::kMaxIov];
    while (first < views.size()) {
      int cnt = 0;
      std::size_t batch = 0;
      for (std::size_t i = first; i < views.size() && cnt < WriteQueue::kMaxIov; ++i) {
        std::size_t skip = i == first ? offset : 0;
        iov[cnt].iov_base = static_cast<char*>(views[i].buf) + skip;
        iov[cnt].iov_len = static_cast<std::size_t>(views[i].len) - skip;
        batch += iov[cnt].iov_len;
        ++cnt;
      }
      ssize_t s = send_iov(t->fd, iov, cnt);
      if (s < 0) {
        if (!would_block(errno)) {
          release();
          return write_failed(t);
        }
        break;
      }
      auto sent = static_cast<std::size_t>(s);
      while (sent > 0 && first < views.size()) {
        std::size_t left = static_cast<std::size_t>(views[first].len) - offset;
        if (sent >= left) {
          sent -= left;
          ++first;
          offset = 0;
        } else {
          offset += sent;
          sent = 0;
        }
      }
      while (first < views.size() && static_cast<std::size_t>(views[first].len) == offset) {
        ++first;  // empty pieces
        offset = 0;
      }
      if (static_cast<std::size_t>(s) < batch) break;  // the socket buffer is full
    }
    if (first == views.size()) {
      release();
      Py_RETURN_NONE;
    }
  }
  if (!ensure_queue(t)) {
    release();
    return PyErr_NoMemory();
  }
  for (std::size_t i = first; i < views.size(); ++i) {
    std::size_t skip = i == first ? offset : 0;
    PyObject* owner =
        views[i].obj != nullptr && PyBytes_Check(views[i].obj) ? views[i].obj : nullptr;
    if (!t->wq->append(static_cast<const char*>(views[i].buf) + skip,
                       static_cast<std::size_t>(views[i].len) - skip, owner)) {
      release();
      return PyErr_NoMemory();
    }
  }
  release();
  if (t->flush_pending) {
    // Behind bytes a write() of this phase deferred: as write() does, they go at the phase end
    // together, or now once past the high-water mark.
    if (queued_size(t) > static_cast<std::size_t>(t->high_water)) send_queued_quietly(t);
  } else if (was_empty && start_writing(t) < 0) {
    return nullptr;
  }
  if (maybe_pause_protocol(t) < 0) return nullptr;
  Py_RETURN_NONE;
}

PyObject* st_write_eof(T* t, PyObject*) {
  if (t->closing || t->eof) Py_RETURN_NONE;
  t->eof = true;
  if (!queued(t) && t->sock != nullptr && ::shutdown(t->fd, SHUT_WR) < 0) {
    return PyErr_SetFromErrno(PyExc_OSError);
  }
  Py_RETURN_NONE;
}

PyObject* st_can_write_eof(T*, PyObject*) {
  Py_RETURN_TRUE;
}

PyObject* st_close(T* t, PyObject*) {
  if (close_impl(t) < 0) return nullptr;
  Py_RETURN_NONE;
}

PyObject* st_abort(T* t, PyObject*) {
  if (force_close(t, nullptr) < 0) return nullptr;
  Py_RETURN_NONE;
}

PyObject* st_force_close(T* t, PyObject* exc) {
  if (force_close(t, exc == Py_None ? nullptr : exc) < 0) return nullptr;
  Py_RETURN_NONE;
}

PyObject* st_fatal_error(T* t, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs < 1 || nargs > 2) {
    PyErr_SetString(PyExc_TypeError, "_fatal_error(exc, message='Fatal error on transport')");
    return nullptr;
  }
  const char* msg = "Fatal error on transport";
  if (nargs == 2) {
    msg = PyUnicode_AsUTF8(args[1]);
    if (msg == nullptr) return nullptr;
  }
  if (fatal_error(t, args[0], msg) < 0) return nullptr;
  Py_RETURN_NONE;
}

PyObject* st_call_connection_lost(T* t, PyObject* exc) {
  return call_connection_lost(t, exc);
}

PyObject* st_is_closing(T* t, PyObject*) {
  return PyBool_FromLong(t->closing);
}

PyObject* st_is_reading(T* t, PyObject*) {
  return PyBool_FromLong(!t->paused && !t->closing);
}

// Starting to read after connection_made (the call_soon'd step of the constructor), or again
// after resume_reading: asyncio's _add_reader. Unlike 3.11 (but as 3.12) a transport paused
// before its first read does not start reading.
int start_reading(T* t) {
  t->started = true;
  if (t->closing || t->paused) {
    update_interest_quietly(t);  // only drops the loop's reference if nothing is wanted
    return 0;
  }
  t->reader_on = true;
  return update_interest(t);
}

PyObject* st_start_reading(T* t, PyObject*) {
  if (start_reading(t) < 0) return nullptr;
  Py_RETURN_NONE;
}

PyObject* st_pause_reading(T* t, PyObject*) {
  if (t->closing || t->paused) Py_RETURN_NONE;
  t->paused = true;
  t->reader_on = false;
  if (update_interest(t) < 0) return nullptr;
  if (debug_on(t)) log_debug("%r pauses reading", (PyObject*)t, nullptr, nullptr);
  Py_RETURN_NONE;
}

PyObject* st_resume_reading(T* t, PyObject*) {
  if (t->closing || !t->paused) Py_RETURN_NONE;
  t->paused = false;
  // asyncio registers a new reader handle: later reads run in a copy of the current context.
  // An empty context stays as it is when the current one is empty too (indistinguishable).
  PyObject* cur = PyThreadState_Get()->context;
  if (!(context_is_empty(cur) && context_is_empty(t->read_ctx))) {
    PyObject* c = PyContext_CopyCurrent();
    if (c == nullptr) return nullptr;
    Py_XSETREF(t->read_ctx, c);
  }
  if (start_reading(t) < 0) return nullptr;
  if (debug_on(t)) log_debug("%r resumes reading", (PyObject*)t, nullptr, nullptr);
  Py_RETURN_NONE;
}

PyObject* st_set_protocol(T* t, PyObject* protocol) {
  if (set_protocol_impl(t, protocol) < 0) return nullptr;
  Py_RETURN_NONE;
}

PyObject* st_get_protocol(T* t, PyObject*) {
  return Py_NewRef(t->protocol ? t->protocol : Py_None);
}

PyObject* st_get_extra_info(T* t, PyObject* const* args, Py_ssize_t nargsf, PyObject* kwnames) {
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  PyObject* name = nargs > 0 ? args[0] : nullptr;
  PyObject* dflt = nargs > 1 ? args[1] : nullptr;
  if (nargs > 2) {
    PyErr_SetString(PyExc_TypeError, "get_extra_info() takes at most 2 arguments");
    return nullptr;
  }
  if (kwnames != nullptr) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); ++i) {
      PyObject* k = PyTuple_GET_ITEM(kwnames, i);
      if (PyUnicode_CompareWithASCIIString(k, "name") == 0 && name == nullptr) {
        name = args[nargs + i];
      } else if (PyUnicode_CompareWithASCIIString(k, "default") == 0 && dflt == nullptr) {
        dflt = args[nargs + i];
      } else {
        PyErr_Format(PyExc_TypeError, "get_extra_info() got an unexpected keyword argument '%U'",
                     k);
        return nullptr;
      }
    }
  }
  if (name == nullptr) {
    PyErr_SetString(PyExc_TypeError, "get_extra_info() missing required argument 'name'");
    return nullptr;
  }
  if (dflt == nullptr) dflt = Py_None;
  if (t->extra == nullptr) return Py_NewRef(dflt);
  if (PyDict_CheckExact(t->extra)) {
    PyObject* v = PyDict_GetItemWithError(t->extra, name);
    if (v == nullptr && PyErr_Occurred()) return nullptr;
    return Py_NewRef(v ? v : dflt);
  }
  return PyObject_CallMethod(t->extra, "get", "OO", name, dflt);
}

// asyncio's _set_write_buffer_limits (ints only here: the limits are compared in C).
int set_limits(T* t, PyObject* high_o, PyObject* low_o) {
  Py_ssize_t high = 0, low = 0;
  bool has_high = high_o != nullptr && high_o != Py_None;
  bool has_low = low_o != nullptr && low_o != Py_None;
  if (has_high) {
    PyObject* i = PyNumber_Index(high_o);
    if (i == nullptr) return -1;
    high = PyLong_AsSsize_t(i);
    Py_DECREF(i);
    if (high == -1 && PyErr_Occurred()) return -1;
  }
  if (has_low) {
    PyObject* i = PyNumber_Index(low_o);
    if (i == nullptr) return -1;
    low = PyLong_AsSsize_t(i);
    Py_DECREF(i);
    if (low == -1 && PyErr_Occurred()) return -1;
  }
  if (!has_high) high = has_low ? 4 * low : kDefaultHighWater;
  if (!has_low) {
    // Python's floor division, for a negative high too.
    low = high >= 0 ? high / 4 : -((-high + 3) / 4);
  }
  if (!(high >= low && low >= 0)) {
    PyErr_Format(PyExc_ValueError, "high (%zd) must be >= low (%zd) must be >= 0", high, low);
    return -1;
  }
  t->high_water = high;
  t->low_water = low;
  return 0;
}

PyObject* parse_limits(T* t, PyObject* args, PyObject* kwds, bool then_maybe_pause) {
  static const char* kwlist[] = {"high", "low", nullptr};
  PyObject *high = Py_None, *low = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO:set_write_buffer_limits", (char**)kwlist, &high,
                                   &low)) {
    return nullptr;
  }
  if (set_limits(t, high, low) < 0) return nullptr;
  if (then_maybe_pause && maybe_pause_protocol(t) < 0) return nullptr;
  Py_RETURN_NONE;
}

// asyncio: the public method may pause the protocol at once; _set_write_buffer_limits does not.
PyObject* st_set_write_buffer_limits(T* t, PyObject* args, PyObject* kwds) {
  return parse_limits(t, args, kwds, true);
}
PyObject* st_set_write_buffer_limits_private(T* t, PyObject* args, PyObject* kwds) {
  return parse_limits(t, args, kwds, false);
}

PyObject* st_get_write_buffer_size(T* t, PyObject*) {
  // Bytes deferred to the phase end count as sent, as asyncio's immediate send would have them.
  if (t->flush_pending) send_queued_quietly(t);
  return PyLong_FromSize_t(queued_size(t));
}

PyObject* st_get_write_buffer_limits(T* t, PyObject*) {
  return Py_BuildValue("(nn)", t->low_water, t->high_water);
}

PyObject* st_maybe_pause_protocol(T* t, PyObject*) {
  if (maybe_pause_protocol(t) < 0) return nullptr;
  Py_RETURN_NONE;
}

PyObject* st_maybe_resume_protocol(T* t, PyObject*) {
  if (maybe_resume_protocol(t) < 0) return nullptr;
  Py_RETURN_NONE;
}

// sendfile (tideloop/_net.py _sendfile_native): a future resolved once the queue is empty.
PyObject* st_make_empty_waiter(T* t, PyObject*) {
  if (t->empty_waiter != nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "Empty waiter is already set");
    return nullptr;
  }
  if (t->loop == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "Transport is closed");
    return nullptr;
  }
  PyObject* fut = PyObject_CallMethodNoArgs((PyObject*)t->loop, N.create_future);
  if (fut == nullptr) return nullptr;
  if (!queued(t)) {
    PyObject* r = PyObject_CallMethodOneArg(fut, g.str_set_result, Py_None);
    if (r == nullptr) {
      Py_DECREF(fut);
      return nullptr;
    }
    Py_DECREF(r);
  }
  t->empty_waiter = fut;
  return Py_NewRef(fut);
}

PyObject* st_reset_empty_waiter(T* t, PyObject*) {
  Py_CLEAR(t->empty_waiter);
  Py_RETURN_NONE;
}

// The socket is lent to sock_sendfile, which watches the fd itself: leave the registry (the
// transport neither reads nor writes meanwhile).
PyObject* st_lend_fd(T* t, PyObject*) {
  if (t->lent) Py_RETURN_NONE;
  t->lent = true;
  detach_watcher(t);
  Py_RETURN_NONE;
}

PyObject* st_reclaim_fd(T* t, PyObject*) {
  if (!t->lent) Py_RETURN_NONE;
  t->lent = false;
  if (t->sock == nullptr || t->loop == nullptr || t->loop->closed) Py_RETURN_NONE;
  if (watcher_attach(t->loop, &t->watcher, t->fd) < 0) return nullptr;
  if (update_interest(t) < 0) return nullptr;
  Py_RETURN_NONE;
}

// --- getters --------------------------------------------------------------------------------

PyObject* or_none(PyObject* o) {
  return Py_NewRef(o ? o : Py_None);
}
PyObject* get_sock(T* t, void*) {
  return or_none(t->sock);
}
PyObject* get_sock_fd(T* t, void*) {
  return PyLong_FromLong(t->fd);
}
PyObject* get_loop(T* t, void*) {
  return or_none((PyObject*)t->loop);
}
PyObject* get_protocol_attr(T* t, void*) {
  return or_none(t->protocol);
}
PyObject* get_server(T* t, void*) {
  return or_none(t->server);
}
PyObject* get_extra(T* t, void*) {
  return or_none(t->extra);
}
PyObject* get_empty_waiter(T* t, void*) {
  return or_none(t->empty_waiter);
}
PyObject* get_closing(T* t, void*) {
  return PyBool_FromLong(t->closing);
}
PyObject* get_eof(T* t, void*) {
  return PyBool_FromLong(t->eof);
}
PyObject* get_paused(T* t, void*) {
  return PyBool_FromLong(t->paused);
}
PyObject* get_protocol_paused(T* t, void*) {
  return PyBool_FromLong(t->protocol_paused);
}
PyObject* get_protocol_connected(T* t, void*) {
  return PyBool_FromLong(t->protocol != nullptr);
}
PyObject* get_conn_lost(T* t, void*) {
  return PyLong_FromLong(t->conn_lost);
}
PyObject* get_high_water(T* t, void*) {
  return PyLong_FromSsize_t(t->high_water);
}
PyObject* get_low_water(T* t, void*) {
  return PyLong_FromSsize_t(t->low_water);
}

// --- type slots -----------------------------------------------------------------------------

PyObject* st_repr(T* t) {
  const char* state = t->sock == nullptr ? " closed" : (t->closing ? " closing" : "");
  if (t->loop == nullptr || t->loop->closed) {
    return PyUnicode_FromFormat("<tideloop.StreamTransport%s fd=%d>", state, t->fd);
  }
  bool reg = t->watcher.registered;
  const char* rd = reg && (t->watcher.interest & EPOLLIN) ? "polling" : "idle";
  const char* wr = reg && (t->watcher.interest & EPOLLOUT) ? "polling" : "idle";
  return PyUnicode_FromFormat("<tideloop.StreamTransport%s fd=%d read=%s write=<%s, bufsize=%zu>>",
                              state, t->fd, rd, wr, queued_size(t));
}

int st_traverse(T* t, visitproc visit, void* arg) {
  Py_VISIT(Py_TYPE(t));
  for (PyObject* o : t->inherited_slots) Py_VISIT(o);
  Py_VISIT((PyObject*)t->loop);
  Py_VISIT(t->sock);
  Py_VISIT(t->protocol);
  Py_VISIT(t->extra);
  Py_VISIT(t->server);
  Py_VISIT(t->empty_waiter);
  Py_VISIT(t->read_ctx);
  Py_VISIT(t->write_ctx);
  return 0;
}

int st_clear(T* t) {
  detach_watcher(t);
  Py_CLEAR(t->loop);
  Py_CLEAR(t->sock);
  Py_CLEAR(t->protocol);
  Py_CLEAR(t->extra);
  Py_CLEAR(t->server);
  Py_CLEAR(t->empty_waiter);
  Py_CLEAR(t->read_ctx);
  Py_CLEAR(t->write_ctx);
  for (PyObject*& o : t->inherited_slots) Py_CLEAR(o);
  if (t->wq != nullptr) t->wq->clear();
  return 0;
}

// asyncio's __del__: an unclosed transport warns and closes its socket.
void st_finalize(T* t) {
  if (t->sock == nullptr) return;
  PyObject *et, *ev, *etb;
  PyErr_Fetch(&et, &ev, &etb);
  if (PyErr_ResourceWarning((PyObject*)t, 1, "unclosed transport %R", (PyObject*)t) < 0) {
    PyErr_WriteUnraisable((PyObject*)t);
  }
  close_socket(t);
  PyErr_Restore(et, ev, etb);
}

void st_dealloc(T* t) {
  if (PyObject_CallFinalizerFromDealloc((PyObject*)t) < 0) return;  // resurrected
  PyObject_GC_UnTrack(t);
  if (t->weakreflist != nullptr) PyObject_ClearWeakRefs((PyObject*)t);
  st_clear(t);
  delete t->wq;
  t->wq = nullptr;
  PyTypeObject* tp = Py_TYPE(t);
  tp->tp_free((PyObject*)t);
  Py_DECREF(tp);
}

int st_init(PyObject*, PyObject*, PyObject*) {
  return 0;  // everything happens in tp_new; the Python base's __init__ must not run
}

// Fills the extra-info mapping as asyncio's _SelectorTransport.__init__ does.
int fill_extra(PyObject* extra, PyObject* sock) {
  PyObject* ts = PyObject_CallOneArg(N.transport_socket, sock);
  if (ts == nullptr || PyObject_SetItem(extra, N.key_socket, ts) < 0) {
    Py_XDECREF(ts);
    return -1;
  }
  Py_DECREF(ts);
  PyObject* name = PyObject_CallMethodNoArgs(sock, N.getsockname);
  if (name == nullptr) {
    if (!PyErr_ExceptionMatches(PyExc_OSError)) return -1;
    PyErr_Clear();
    name = Py_NewRef(Py_None);
  }
  int r = PyObject_SetItem(extra, N.key_sockname, name);
  Py_DECREF(name);
  if (r < 0) return -1;
  int has_peer = PySequence_Contains(extra, N.key_peername);
  if (has_peer < 0) return -1;
  if (!has_peer) {
    PyObject* peer = PyObject_CallMethodNoArgs(sock, N.getpeername);
    if (peer == nullptr) {
      if (!PyErr_ExceptionMatches(PyExc_OSError)) return -1;
      PyErr_Clear();
      peer = Py_NewRef(Py_None);
    }
    r = PyObject_SetItem(extra, N.key_peername, peer);
    Py_DECREF(peer);
    if (r < 0) return -1;
  }
  return 0;
}

// base_events._set_nodelay: TCP (family INET/INET6, SOCK_STREAM, proto IPPROTO_TCP) only.
int set_nodelay(PyObject* sock, int fd) {
  int family = 0, type = 0;
  socklen_t len = sizeof(int);
  if (::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &len) < 0) return 0;
  len = sizeof(int);
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) return 0;
  if ((family != AF_INET && family != AF_INET6) || type != SOCK_STREAM) return 0;
  PyObject* p = PyObject_GetAttr(sock, N.proto);
  if (p == nullptr) return -1;
  long proto = PyLong_AsLong(p);
  Py_DECREF(p);
  if (proto == -1 && PyErr_Occurred()) return -1;
  if (proto != IPPROTO_TCP) return 0;
  int one = 1;
  if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0) {
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
  }
  return 0;
}

// StreamTransport(loop, sock, protocol, waiter=None, extra=None, server=None): asyncio's
// _SelectorSocketTransport.__init__.
PyObject* st_new(PyTypeObject* type, PyObject* args, PyObject* kwds) {
  static const char* kwlist[] = {"loop", "sock", "protocol", "waiter", "extra", "server", nullptr};
  PyObject *loop_o, *sock, *protocol, *waiter = Py_None, *extra = Py_None, *server = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|OOO:StreamTransport", (char**)kwlist, &loop_o,
                                   &sock, &protocol, &waiter, &extra, &server)) {
    return nullptr;
  }
  if (!PyObject_TypeCheck(loop_o, &LoopCoreType)) {
    PyErr_Format(PyExc_TypeError, "StreamTransport needs a tideloop loop, not %R", loop_o);
    return nullptr;
  }
  auto* loop = reinterpret_cast<LoopObject*>(loop_o);
  if (check_closed(loop) < 0) return nullptr;
  PyObject* fdo = PyObject_CallMethodNoArgs(sock, N.fileno);
  if (fdo == nullptr) return nullptr;
  long fd = PyLong_AsLong(fdo);
  Py_DECREF(fdo);
  if (fd == -1 && PyErr_Occurred()) return nullptr;
  if (fd < 0 || fd > INT32_MAX) {
    PyErr_Format(PyExc_ValueError, "Invalid file descriptor: %ld", fd);
    return nullptr;
  }
  PyObject* ext = extra == Py_None ? PyDict_New() : Py_NewRef(extra);
  if (ext == nullptr) return nullptr;
  if (fill_extra(ext, sock) < 0) {
    Py_DECREF(ext);
    return nullptr;
  }

  T* t = reinterpret_cast<T*>(type->tp_alloc(type, 0));
  if (t == nullptr) {
    Py_DECREF(ext);
    return nullptr;
  }
  new (&t->watcher) Watcher();
  t->watcher.ops = &kStreamOps;
  t->loop = reinterpret_cast<LoopObject*>(Py_NewRef(loop_o));
  t->extra = ext;
  t->fd = static_cast<int>(fd);
  t->high_water = kDefaultHighWater;
  t->low_water = kDefaultHighWater / 4;
  PyObject* cb = nullptr;
  if (set_protocol_impl(t, protocol) < 0) goto fail;
  if (snapshot_context(&t->read_ctx) < 0) goto fail;
  t->held = true;  // watcher_attach takes the loop's reference (see `started`)
  if (watcher_attach(loop, &t->watcher, t->fd) < 0) {
    t->held = false;
    goto fail;
  }
  t->sock = Py_NewRef(sock);  // from here on, a failure does not close the caller's socket
  if (server != Py_None) {
    t->server = Py_NewRef(server);
    PyObject* r = PyObject_CallMethodNoArgs(server, N.attach);
    if (r == nullptr) goto fail;
    Py_DECREF(r);
  }
  if (set_nodelay(sock, t->fd) < 0) goto fail;
  // connection_made, then reading, then the waiter, each a handle of its own as in asyncio.
  cb = PyObject_GetAttr(protocol, N.connection_made);
  if (cb == nullptr || call_soon(t, cb, (PyObject*)t) < 0) goto fail;
  Py_CLEAR(cb);
  if (call_soon_method(t, N.start_reading) < 0) goto fail;
  if (waiter != Py_None && call_soon(t, N.set_result_unless_cancelled, waiter, Py_None) < 0) {
    goto fail;
  }
  return (PyObject*)t;

fail:
  Py_XDECREF(cb);
  detach_watcher(t);
  Py_CLEAR(t->sock);  // the caller still owns it (and closes it on error)
  Py_DECREF(t);
  return nullptr;
}

PyMethodDef st_methods[] = {
    {"write", (PyCFunction)st_write, METH_O, "write(data): send or queue bytes-like data"},
    {"writelines", (PyCFunction)st_writelines, METH_O,
     "writelines(list_of_data): write the pieces (one vectored send, no join)"},
    {"write_eof", (PyCFunction)st_write_eof, METH_NOARGS,
     "Shut the write side once the buffer is flushed"},
    {"can_write_eof", (PyCFunction)st_can_write_eof, METH_NOARGS, "True"},
    {"close", (PyCFunction)st_close, METH_NOARGS,
     "Close after flushing the buffer; connection_lost(None) follows"},
    {"abort", (PyCFunction)st_abort, METH_NOARGS,
     "Close now, dropping the buffer; connection_lost(None) follows"},
    {"is_closing", (PyCFunction)st_is_closing, METH_NOARGS, nullptr},
    {"is_reading", (PyCFunction)st_is_reading, METH_NOARGS, nullptr},
    {"pause_reading", (PyCFunction)st_pause_reading, METH_NOARGS, nullptr},
    {"resume_reading", (PyCFunction)st_resume_reading, METH_NOARGS, nullptr},
    {"set_protocol", (PyCFunction)st_set_protocol, METH_O, nullptr},
    {"get_protocol", (PyCFunction)st_get_protocol, METH_NOARGS, nullptr},
    {"get_extra_info", (PyCFunction)(void (*)(void))st_get_extra_info,
     METH_FASTCALL | METH_KEYWORDS, "get_extra_info(name, default=None)"},
    {"set_write_buffer_limits", (PyCFunction)(void (*)(void))st_set_write_buffer_limits,
     METH_VARARGS | METH_KEYWORDS, "set_write_buffer_limits(high=None, low=None)"},
    {"_set_write_buffer_limits", (PyCFunction)(void (*)(void))st_set_write_buffer_limits_private,
     METH_VARARGS | METH_KEYWORDS, nullptr},
    {"get_write_buffer_size", (PyCFunction)st_get_write_buffer_size, METH_NOARGS, nullptr},
    {"get_write_buffer_limits", (PyCFunction)st_get_write_buffer_limits, METH_NOARGS,
     "(low, high)"},
    {"_maybe_pause_protocol", (PyCFunction)st_maybe_pause_protocol, METH_NOARGS, nullptr},
    {"_maybe_resume_protocol", (PyCFunction)st_maybe_resume_protocol, METH_NOARGS, nullptr},
    {"_force_close", (PyCFunction)st_force_close, METH_O, nullptr},
    {"_fatal_error", (PyCFunction)(void (*)(void))st_fatal_error, METH_FASTCALL, nullptr},
    {"_call_connection_lost", (PyCFunction)st_call_connection_lost, METH_O, nullptr},
    {"_start_reading", (PyCFunction)st_start_reading, METH_NOARGS, nullptr},
    {"_make_empty_waiter", (PyCFunction)st_make_empty_waiter, METH_NOARGS, nullptr},
    {"_reset_empty_waiter", (PyCFunction)st_reset_empty_waiter, METH_NOARGS, nullptr},
    {"_lend_fd", (PyCFunction)st_lend_fd, METH_NOARGS,
     "Leave the loop's registry while sock_sendfile uses the socket"},
    {"_reclaim_fd", (PyCFunction)st_reclaim_fd, METH_NOARGS, "Undo _lend_fd()"},
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef st_getset[] = {
    {"_sock", (getter)get_sock, nullptr, nullptr, nullptr},
    {"_sock_fd", (getter)get_sock_fd, nullptr, nullptr, nullptr},
    {"_loop", (getter)get_loop, nullptr, nullptr, nullptr},
    {"_protocol", (getter)get_protocol_attr, nullptr, nullptr, nullptr},
    {"_server", (getter)get_server, nullptr, nullptr, nullptr},
    {"_extra", (getter)get_extra, nullptr, nullptr, nullptr},
    {"_empty_waiter", (getter)get_empty_waiter, nullptr, nullptr, nullptr},
    {"_closing", (getter)get_closing, nullptr, nullptr, nullptr},
    {"_eof", (getter)get_eof, nullptr, nullptr, nullptr},
    {"_paused", (getter)get_paused, nullptr, nullptr, nullptr},
    {"_protocol_paused", (getter)get_protocol_paused, nullptr, nullptr, nullptr},
    {"_protocol_connected", (getter)get_protocol_connected, nullptr, nullptr, nullptr},
    {"_conn_lost", (getter)get_conn_lost, nullptr, nullptr, nullptr},
    {"_high_water", (getter)get_high_water, nullptr, nullptr, nullptr},
    {"_low_water", (getter)get_low_water, nullptr, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyMemberDef st_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(T, weakreflist), READONLY, nullptr},
    {nullptr, 0, 0, 0, nullptr},
};

int init_names() {
  struct {
    PyObject** slot;
    const char* s;
  } names[] = {
      {&N.data_received, "data_received"},
      {&N.get_buffer, "get_buffer"},
      {&N.buffer_updated, "buffer_updated"},
      {&N.eof_received, "eof_received"},
      {&N.connection_made, "connection_made"},
      {&N.connection_lost, "connection_lost"},
      {&N.pause_writing, "pause_writing"},
      {&N.resume_writing, "resume_writing"},
      {&N.close, "close"},
      {&N.fileno, "fileno"},
      {&N.getsockname, "getsockname"},
      {&N.getpeername, "getpeername"},
      {&N.proto, "proto"},
      {&N.attach, "_attach"},
      {&N.detach, "_detach"},
      {&N.create_future, "create_future"},
      {&N.join, "join"},
      {&N.debug, "debug"},
      {&N.warning, "warning"},
      {&N.start_reading, "_start_reading"},
      {&N.call_connection_lost, "_call_connection_lost"},
      {&N.key_socket, "socket"},
      {&N.key_sockname, "sockname"},
      {&N.key_peername, "peername"},
      {&N.key_message, "message"},
      {&N.key_exception, "exception"},
      {&N.key_transport, "transport"},
      {&N.key_protocol, "protocol"},
      {&N.msg_send_raised, "socket.send() raised exception."},
  };
  for (auto& n : names) {
    if (intern(n.slot, n.s) < 0) return -1;
  }
  PyObject* exc_info = PyUnicode_InternFromString("exc_info");
  if (exc_info == nullptr) return -1;
  N.kw_exc_info = PyTuple_Pack(1, exc_info);
  Py_DECREF(exc_info);
  N.minus_one = PyLong_FromLong(-1);
  if (N.kw_exc_info == nullptr || N.minus_one == nullptr) return -1;
  N.flow_control_mixin = import_attr("asyncio.transports", "_FlowControlMixin");
  N.buffered_protocol = import_attr("asyncio.protocols", "BufferedProtocol");
  N.transport_socket = import_attr("asyncio.trsock", "TransportSocket");
  N.set_result_unless_cancelled = import_attr("asyncio.futures", "_set_result_unless_cancelled");
  N.logger = import_attr("asyncio.log", "logger");
  PyObject* mode = import_attr("asyncio.constants", "_SendfileMode");
  N.try_native = mode ? PyObject_GetAttrString(mode, "TRY_NATIVE") : nullptr;
  Py_XDECREF(mode);
  PyObject* thr = import_attr("asyncio.constants", "LOG_THRESHOLD_FOR_CONNLOST_WRITES");
  if (!N.flow_control_mixin || !N.buffered_protocol || !N.transport_socket ||
      !N.set_result_unless_cancelled || !N.logger || !N.try_native || !thr) {
    Py_XDECREF(thr);
    return -1;
  }
  N.connlost_threshold = PyLong_AsLong(thr);
  Py_DECREF(thr);
  if (N.connlost_threshold == -1 && PyErr_Occurred()) return -1;
  if (PyContext_Type.tp_as_mapping != nullptr) {
    g_context_len = PyContext_Type.tp_as_mapping->mp_length;
  }
  return 0;
}

}  // namespace

// --- WriteQueue -----------------------------------------------------------------------------

const char* WriteQueue::Piece::data() const {
  return (ref != nullptr ? PyBytes_AS_STRING(ref) : block) + head;
}

void WriteQueue::release(Piece& p) {
  if (p.ref != nullptr) {
    Py_DECREF(p.ref);
  } else if (p.block != nullptr) {
    if (p.cap == kBlockSize && g_block_pool.size() < kMaxPooledBlocks) {
      g_block_pool.push_back(p.block);
    } else {
      std::free(p.block);
    }
  }
  p.ref = nullptr;
  p.block = nullptr;
}

bool WriteQueue::append(const char* p, std::size_t n, PyObject* owner) {
  if (n == 0) return true;
  try {
    if (owner != nullptr && n >= kReferenceMin) {
      const char* base = PyBytes_AS_STRING(owner);
      pieces_.push_back(Piece{Py_NewRef(owner), nullptr, 0, static_cast<std::size_t>(p - base), n});
      size_ += n;
      return true;
    }
    std::size_t done = 0;
    if (!pieces_.empty()) {
      Piece& last = pieces_.back();
      if (last.block != nullptr) {
        std::size_t room = last.cap - (last.head + last.len);
        std::size_t k = std::min(room, n);
        if (k > 0) {
          std::memcpy(last.block + last.head + last.len, p, k);
          last.len += k;
          done = k;
        }
      }
    }
    if (done < n) {
      std::size_t rest = n - done;
      std::size_t cap = std::max(rest, kBlockSize);
      char* block = nullptr;
      if (cap == kBlockSize && !g_block_pool.empty()) {
        block = g_block_pool.back();
        g_block_pool.pop_back();
      } else {
        block = static_cast<char*>(std::malloc(cap));
      }
      if (block == nullptr) {
        if (done > 0) pieces_.back().len -= done;
        return false;
      }
      std::memcpy(block, p + done, rest);
      try {
        pieces_.push_back(Piece{nullptr, block, cap, 0, rest});
      } catch (...) {
        std::free(block);
        if (done > 0) pieces_.back().len -= done;
        return false;
      }
    }
    size_ += n;
    return true;
  } catch (...) {
    return false;
  }
}

int WriteQueue::fill(iovec* iov, int max) const {
  int n = 0;
  for (auto it = pieces_.begin(); it != pieces_.end() && n < max; ++it, ++n) {
    iov[n].iov_base = const_cast<char*>(it->data());
    iov[n].iov_len = it->len;
  }
  return n;
}

void WriteQueue::consume(std::size_t n) {
  size_ -= n;
  while (n > 0 && !pieces_.empty()) {
    Piece& p = pieces_.front();
    if (n < p.len) {
      p.head += n;
      p.len -= n;
      return;
    }
    n -= p.len;
    release(p);
    pieces_.pop_front();
  }
  // A copy block that was only partly consumed stays at the front; once it is empty and last it
  // is released above, so an idle queue holds no memory but the deque's own.
}

void WriteQueue::clear() {
  for (Piece& p : pieces_) release(p);
  pieces_.clear();
  size_ = 0;
}

// --- module ---------------------------------------------------------------------------------

int stream_types_ready(PyObject* module) {
  if (init_names() < 0) return -1;
  auto* base = reinterpret_cast<PyTypeObject*>(N.flow_control_mixin);
  if (!PyType_Check(N.flow_control_mixin) ||
      base->tp_basicsize > static_cast<Py_ssize_t>(offsetof(T, watcher)) ||
      base->tp_itemsize != 0 || base->tp_dictoffset != 0 || base->tp_weaklistoffset != 0) {
    PyErr_SetString(PyExc_ImportError,
                    "asyncio.transports._FlowControlMixin has an unexpected layout");
    return -1;
  }
  PyType_Slot slots[] = {
      {Py_tp_dealloc, (void*)st_dealloc},
      {Py_tp_traverse, (void*)st_traverse},
      {Py_tp_clear, (void*)st_clear},
      {Py_tp_finalize, (void*)st_finalize},
      {Py_tp_new, (void*)st_new},
      {Py_tp_init, (void*)st_init},
      {Py_tp_repr, (void*)st_repr},
      {Py_tp_methods, st_methods},
      {Py_tp_getset, st_getset},
      {Py_tp_members, st_members},
      {Py_tp_doc,
       (void*)"StreamTransport(loop, sock, protocol, waiter=None, extra=None, server=None)\n\n"
              "The transport of a TCP or Unix stream socket (asyncio's selector socket "
              "transport, in C++)."},
      {0, nullptr},
  };
  PyType_Spec spec = {"tideloop._tideloop.StreamTransport", static_cast<int>(sizeof(T)), 0,
                      Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, slots};
  PyObject* bases = PyTuple_Pack(1, N.flow_control_mixin);
  if (bases == nullptr) return -1;
  PyObject* type = PyType_FromSpecWithBases(&spec, bases);
  Py_DECREF(bases);
  if (type == nullptr) return -1;
  PyObject* max_size = PyLong_FromSize_t(kMaxRecv);
  if (max_size == nullptr || PyObject_SetAttrString(type, "max_size", max_size) < 0 ||
      PyObject_SetAttrString(type, "_start_tls_compatible", Py_True) < 0 ||
      PyObject_SetAttrString(type, "_sendfile_compatible", N.try_native) < 0) {
    Py_XDECREF(max_size);
    Py_DECREF(type);
    return -1;
  }
  Py_DECREF(max_size);
  g_type = reinterpret_cast<PyTypeObject*>(type);
  if (PyModule_AddObjectRef(module, "StreamTransport", type) < 0) return -1;
  return 0;
}

}  // namespace tideloop::bridge
