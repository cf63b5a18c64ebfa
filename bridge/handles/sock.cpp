// sock_* fast paths: loop.sock_recv, sock_recv_into, sock_recvfrom, sock_recvfrom_into,
// sock_sendall, sock_sendto, sock_connect and sock_accept on sockets the caller owns.
//
// Each public method is a thin `async def` in tideloop/_sock.py over one C method here
// (`_sock_recv_now`...), which validates its arguments, tries the syscall at once on the fd and
// returns the result when it completes. Only when the kernel says EAGAIN does it return a future:
// the fd gets a SockWait record (below) whose reader side or writer side holds the pending
// operation, and readiness runs the syscall again right inside the tick's dispatch, resolving the
// future there. The only Python-level calls on that path are sock.fileno() at the start and the
// future's done()/set_result(); no Python frame runs.
//
// What stays asyncio's, by delegation rather than by imitation:
//  * an object that is not a socket.socket (duck typing) runs asyncio's selector coroutine;
//  * an fd that already has an add_reader/add_writer handle waits through asyncio's own
//    callbacks over our _add_reader/_add_writer (Loop._sock_via_selector), so sock_recv replaces
//    that reader exactly as asyncio's does;
//  * address families and addresses we do not decode in C (not AF_INET/AF_INET6/AF_UNIX, host
//    names, scoped IPv6...) go through the socket object's own method, at the same points.
//
// Differences from asyncio, on purpose:
//  * recv/send use MSG_DONTWAIT, so a blocking socket (accepted without debug mode, as asyncio
//    does) never blocks the loop in them: the call waits for readiness instead. accept and
//    connect on a blocking socket block, as with asyncio.
//  * asyncio's readiness runs a handle that resolves the future, and the task resumes in the
//    next iteration; here the future is resolved during dispatch, so the task resumes in the
//    same tick's ready batch.
//  * While a sock_* operation waits, the fd belongs to its SockWait record: add_reader,
//    add_writer or a transport on that fd raise RuntimeError (the registry's one-owner rule)
//    where asyncio would silently replace the waiting callback.
//
// Why the registration ends with the last waiting operation, costing an epoll_ctl ADD and DEL
// per wait (17% of the CPU time of an in-process sock_* echo): a record kept attached while idle
// would still own the fd after the socket is closed, and a transport or add_reader given the
// reused fd number would then fail. Keeping it needs the registry to evict an idle record when
// another owner attaches (as it evicts add_reader records today).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <new>

#include "loop/args.hpp"
#include "loop/loop.hpp"
// After Python.h (loop.hpp): T_INT, for the member descriptors of _socket.socket.
#include <structmember.h>

namespace tideloop::bridge {
namespace {

// --- Python objects this room uses, looked up at the first sock_* call ----------------------

struct SockNames {
  bool ready = false;
  PyTypeObject* sock_type = nullptr;  // _socket.socket: the C type every socket.socket extends
  PyObject* socket_class = nullptr;   // socket.socket: sock_accept builds connections with it
  PyObject* ssl_socket = nullptr;     // ssl.SSLSocket (None without the ssl module)
  // Offsets of the int members `family` and `type` of _socket.socket, read from its member
  // descriptors; -1 when they are not plain int members (then family-dependent paths go through
  // the socket's own methods).
  Py_ssize_t off_family = -1;
  Py_ssize_t off_type = -1;
  Py_ssize_t off_proto = -1;
  PyObject* str_fileno = nullptr;
  PyObject* str_gettimeout = nullptr;
  PyObject* str_setblocking = nullptr;
  PyObject* str_done = nullptr;
  PyObject* str_via_selector = nullptr;
  PyObject* selector_events = nullptr;  // asyncio.selector_events.BaseSelectorEventLoop
};
SockNames sn;

enum class Kind : std::uint8_t {
  kNone,
  kRecv,
  kRecvInto,
  kRecvFrom,
  kRecvFromInto,
  kAccept,
  kSendAll,
  kSendTo,
  kConnect,
};

// asyncio's names for each operation: its coroutine (duck-typed sockets), its readiness callback
// (fds that have an add_reader/add_writer handle), the socket method used when we do not decode
// the address in C.
struct KindNames {
  const char* coroutine;
  const char* callback;
  const char* method;
};
constexpr KindNames kNames[] = {
    {nullptr, nullptr, nullptr},
    {"sock_recv", "_sock_recv", "recv"},
    {"sock_recv_into", "_sock_recv_into", "recv_into"},
    {"sock_recvfrom", "_sock_recvfrom", "recvfrom"},
    {"sock_recvfrom_into", "_sock_recvfrom_into", "recvfrom_into"},
    {"sock_accept", "_sock_accept", "accept"},
    {"sock_sendall", "_sock_sendall", "send"},
    {"sock_sendto", "_sock_sendto", "sendto"},
    {"sock_connect", "_sock_connect_cb", "connect"},
};
const KindNames& names_of(Kind k) {
  return kNames[static_cast<int>(k)];
}

Py_ssize_t int_member_offset(PyTypeObject* type, const char* name) {
  PyObject* d = PyDict_GetItemString(type->tp_dict, name);  // borrowed
  if (d == nullptr || !PyObject_TypeCheck(d, &PyMemberDescr_Type)) return -1;
  PyMemberDef* m = reinterpret_cast<PyMemberDescrObject*>(d)->d_member;
  return m->type == T_INT ? m->offset : -1;
}

int sock_wait_type_ready();

int sock_names_init() {
  if (intern(&sn.str_fileno, "fileno") < 0 || intern(&sn.str_gettimeout, "gettimeout") < 0 ||
      intern(&sn.str_setblocking, "setblocking") < 0 || intern(&sn.str_done, "done") < 0 ||
      intern(&sn.str_via_selector, "_sock_via_selector") < 0) {
    return -1;
  }
  PyObject* t = import_attr("_socket", "socket");
  if (t == nullptr) return -1;
  if (!PyType_Check(t)) {
    Py_DECREF(t);
    PyErr_SetString(PyExc_ImportError, "_socket.socket is not a type");
    return -1;
  }
  sn.sock_type = reinterpret_cast<PyTypeObject*>(t);
  sn.off_family = int_member_offset(sn.sock_type, "family");
  sn.off_type = int_member_offset(sn.sock_type, "type");
  sn.off_proto = int_member_offset(sn.sock_type, "proto");
  if ((sn.socket_class = import_attr("socket", "socket")) == nullptr) return -1;
  sn.ssl_socket = import_attr("ssl", "SSLSocket");
  if (sn.ssl_socket == nullptr) {
    PyErr_Clear();
    sn.ssl_socket = Py_NewRef(Py_None);
  }
  sn.selector_events = import_attr("asyncio.selector_events", "BaseSelectorEventLoop");
  if (sn.selector_events == nullptr || sock_wait_type_ready() < 0) return -1;
  sn.ready = true;
  return 0;
}

inline int ensure_names() {
  return sn.ready ? 0 : sock_names_init();
}

int int_member(PyObject* sock, Py_ssize_t off) {
  return *reinterpret_cast<int*>(reinterpret_cast<char*>(sock) + off);
}
// The socket's address family, or -1 when unknown (then the socket's methods are used).
int family_of(PyObject* sock) {
  return sn.off_family >= 0 ? int_member(sock, sn.off_family) : -1;
}
bool family_decoded(int family) {
  return family == AF_INET || family == AF_INET6 || family == AF_UNIX;
}

// --- one pending operation, and the per-fd record holding a reader side and a writer side ---

// Everything an operation needs to be retried at the next readiness. Strong references.
struct SockOp {
  Kind kind = Kind::kNone;
  bool via_method = false;  // run as sock.<method>(...) (addresses or families not decoded here)
  bool has_view = false;
  PyObject* fut = nullptr;    // the future the caller awaits (NULL for the first attempt)
  PyObject* sock = nullptr;   // the socket object
  PyObject* obj = nullptr;    // recv_into/recvfrom_into: the buffer; sendto: the data
  PyObject* extra = nullptr;  // sendto, connect: the address object
  Py_buffer view{};           // sendall: the data, held for the whole call (asyncio's memoryview)
  Py_ssize_t n = 0;           // recv/recvfrom: bufsize; recvfrom_into: nbytes; sendall: sent
  socklen_t addrlen = 0;      // sendto: the address decoded here (AF_INET or AF_INET6)
  sockaddr_in6 addr{};

  void release() {
    Py_CLEAR(fut);
    Py_CLEAR(sock);
    Py_CLEAR(obj);
    Py_CLEAR(extra);
    if (has_view) PyBuffer_Release(&view);
    has_view = false;
    kind = Kind::kNone;
  }
  // Moves the operation out (the slot is left empty); no reference changes hands twice.
  SockOp take() {
    SockOp o = *this;
    *this = SockOp();
    return o;
  }
};

// The record of one fd with sock_* operations waiting (created when the first one must wait,
// released when none is left). A Python object only for its reference count: the registry's
// lifetime rule defers the release of an owner detached during a batch of events
// (engine/watcher.hpp), and release_after_batch() takes objects. WatcherOps::owner is NULL: the
// record is the loop's own, so _fd_owner(fd) stays None and add_reader's transport check passes.
struct SockWait {
  PyObject_HEAD Watcher watcher;
  LoopObject* loop;  // borrowed: the record never outlives its attachment to the loop
  int fd;
  // Set while on_events works on the record: Python code that runs meanwhile (an accepted
  // socket's __init__, a GC pass) may empty both sides, and the record must stay attached
  // until on_events is done with it.
  bool busy;
  SockOp reader;
  SockOp writer;
};

// pymalloc serves up to 512 bytes; a record is allocated per wait that finds the fd idle.
static_assert(sizeof(SockWait) <= 512, "keep SockWait in pymalloc's size classes");

SockWait* wait_of(Watcher* w) {
  return reinterpret_cast<SockWait*>(reinterpret_cast<char*>(w) - offsetof(SockWait, watcher));
}

void sock_wait_dealloc(PyObject* o) {
  auto* rec = reinterpret_cast<SockWait*>(o);
  rec->reader.release();
  rec->writer.release();
  rec->reader.~SockOp();
  rec->writer.~SockOp();
  rec->watcher.~Watcher();
  PyObject_Free(o);
}

PyTypeObject SockWaitType = {PyVarObject_HEAD_INIT(nullptr, 0)};

extern const WatcherOps kSockWaitOps;

// Not added to the module: nothing outside this file sees a record.
int sock_wait_type_ready() {
  SockWaitType.tp_name = "tideloop._tideloop._SockWait";
  SockWaitType.tp_basicsize = sizeof(SockWait);
  SockWaitType.tp_flags = Py_TPFLAGS_DEFAULT;
  SockWaitType.tp_dealloc = sock_wait_dealloc;
  return PyType_Ready(&SockWaitType);
}

SockWait* sock_wait_new(LoopObject* loop, int fd) {
  auto* rec = PyObject_New(SockWait, &SockWaitType);
  if (rec == nullptr) return nullptr;
  new (&rec->watcher) Watcher();
  new (&rec->reader) SockOp();
  new (&rec->writer) SockOp();
  rec->watcher.ops = &kSockWaitOps;
  rec->loop = loop;
  rec->fd = fd;
  rec->busy = false;
  return rec;
}

// Brings the registration in line with the sides: attached with EPOLLIN for a reader and
// EPOLLOUT for a writer, detached (and the record released) when both are empty. While attached
// the record holds one reference to itself, given back through release_after_batch().
int sync_interest(SockWait* rec) {
  std::uint32_t events = (rec->reader.kind != Kind::kNone ? EPOLLIN : 0u) |
                         (rec->writer.kind != Kind::kNone ? EPOLLOUT : 0u);
  LoopObject* loop = rec->loop;
  if (events == 0) {
    if (!rec->watcher.registered) return 0;
    if (rec->busy) return watcher_set_interest(loop, &rec->watcher, 0);
    watcher_detach(loop, &rec->watcher);
    release_after_batch(S(loop), (PyObject*)rec);
    return 0;
  }
  if (!rec->watcher.registered) {
    if (watcher_attach(loop, &rec->watcher, rec->fd) < 0) return -1;
    Py_INCREF(rec);
  }
  return watcher_set_interest(loop, &rec->watcher, events);
}

// --- argument checks (asyncio's, and the socket methods' own messages) ---------------------

bool is_socket(PyObject* o) {
  return PyObject_TypeCheck(o, sn.sock_type);
}

// asyncio's base_events._check_ssl_socket and its debug-mode blocking check.
int check_socket(LoopObject* self, PyObject* sock) {
  if ((PyObject*)Py_TYPE(sock) != sn.socket_class && sn.ssl_socket != Py_None) {
    int r = PyObject_IsInstance(sock, sn.ssl_socket);
    if (r < 0) return -1;
    if (r) {
      PyErr_SetString(PyExc_TypeError, "Socket cannot be of type SSLSocket");
      return -1;
    }
  }
  if (self->debug) {
    PyObject* t = PyObject_CallMethodNoArgs(sock, sn.str_gettimeout);
    if (t == nullptr) return -1;
    int blocking = 1;
    if (t != Py_None) {
      double d = PyFloat_AsDouble(t);
      blocking = !(d == 0.0);
      if (d == -1.0 && PyErr_Occurred()) blocking = -1;
    }
    Py_DECREF(t);
    if (blocking < 0) return -1;
    if (blocking) {
      PyErr_SetString(PyExc_ValueError, "the socket must be non-blocking");
      return -1;
    }
  }
  return 0;
}

// sock.fileno() (-1 for a closed socket: the syscall then fails with EBADF, as the socket's own
// method would). Returns -2 with an exception.
int fileno_of(PyObject* sock) {
  PyObject* r = PyObject_CallMethodNoArgs(sock, sn.str_fileno);
  if (r == nullptr) return -2;
  long fd = PyLong_AsLong(r);
  Py_DECREF(r);
  if (fd == -1 && PyErr_Occurred()) return -2;
  return fd < 0 || fd > INT32_MAX ? -1 : static_cast<int>(fd);
}

// A buffer size as the socket methods parse it ('n': an index), ValueError when negative.
int parse_size(PyObject* o, const char* method, Py_ssize_t* out) {
  Py_ssize_t n = PyNumber_AsSsize_t(o, PyExc_OverflowError);
  if (n == -1 && PyErr_Occurred()) return -1;
  if (n < 0) {
    PyErr_Format(PyExc_ValueError, "negative buffersize in %s", method);
    return -1;
  }
  *out = n;
  return 0;
}

int get_writable(PyObject* buf, const char* method, Py_buffer* view) {
  if (PyObject_GetBuffer(buf, view, PyBUF_WRITABLE) == 0) return 0;
  PyErr_Format(PyExc_TypeError, "%s() argument 1 must be read-write bytes-like object, not %.50s",
               method, Py_TYPE(buf)->tp_name);
  return -1;
}

int get_readable(PyObject* data, Py_buffer* view) {
  if (PyObject_GetBuffer(data, view, PyBUF_SIMPLE) == 0) return 0;
  PyErr_Format(PyExc_TypeError, "a bytes-like object is required, not '%.100s'",
               Py_TYPE(data)->tp_name);
  return -1;
}

// A numeric (host, port[, flowinfo[, scope_id]]) for AF_INET/AF_INET6, decoded exactly where
// the socket module would take the same inet_pton shortcut. false: leave it to the socket's
// method (names, '', '<broadcast>', scoped hosts, wrong types or ranges, other families), which
// also raises the right exception.
// `ss` has room for either family.
bool decode_inet_address(int family, PyObject* a, sockaddr_in6* ss, socklen_t* len) {
  if (!PyTuple_CheckExact(a)) return false;
  Py_ssize_t n = PyTuple_GET_SIZE(a);
  if (family == AF_INET ? n != 2 : (family != AF_INET6 || n < 2 || n > 4)) return false;
  PyObject* host = PyTuple_GET_ITEM(a, 0);
  if (!PyUnicode_CheckExact(host) || !PyUnicode_IS_ASCII(host)) return false;
  Py_ssize_t hlen;
  const char* h = PyUnicode_AsUTF8AndSize(host, &hlen);
  if (h == nullptr || hlen == 0 || static_cast<Py_ssize_t>(std::strlen(h)) != hlen) {
    PyErr_Clear();
    return false;
  }
  unsigned long vals[3] = {0, 0, 0};  // port, flowinfo, scope_id
  const unsigned long limits[3] = {0xffff, 0xfffff, 0xffffffff};
  for (Py_ssize_t i = 1; i < n; ++i) {
    PyObject* v = PyTuple_GET_ITEM(a, i);
    if (!PyLong_CheckExact(v)) return false;
    int overflow = 0;
    long x = PyLong_AsLongAndOverflow(v, &overflow);
    if (overflow != 0 || x < 0 || static_cast<unsigned long>(x) > limits[i - 1]) return false;
    vals[i - 1] = static_cast<unsigned long>(x);
  }
  std::memset(ss, 0, sizeof(*ss));
  if (family == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(ss);
    if (inet_pton(AF_INET, h, &sin->sin_addr) != 1) return false;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(static_cast<std::uint16_t>(vals[0]));
    *len = sizeof(sockaddr_in);
    return true;
  }
  if (std::strchr(h, '%') != nullptr) return false;
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(ss);
  if (inet_pton(AF_INET6, h, &sin6->sin6_addr) != 1) return false;
  sin6->sin6_family = AF_INET6;
  sin6->sin6_port = htons(static_cast<std::uint16_t>(vals[0]));
  sin6->sin6_flowinfo = htonl(static_cast<std::uint32_t>(vals[1]));
  sin6->sin6_scope_id = static_cast<std::uint32_t>(vals[2]);
  *len = sizeof(sockaddr_in6);
  return true;
}

// The Python form of a received address, as the socket module builds it for these families:
// None when the kernel gave none, (host, port) for AF_INET, (host, port, flowinfo, scope_id) for
// AF_INET6, a str path (bytes for Linux's abstract namespace) for AF_UNIX.
PyObject* make_address(const sockaddr_storage& ss, socklen_t len) {
  if (len == 0) Py_RETURN_NONE;
  char host[INET6_ADDRSTRLEN];
  switch (ss.ss_family) {
    case AF_INET: {
      const auto* sin = reinterpret_cast<const sockaddr_in*>(&ss);
      if (inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host)) == nullptr) {
        return PyErr_SetFromErrno(PyExc_OSError);
      }
      return Py_BuildValue("(si)", host, static_cast<int>(ntohs(sin->sin_port)));
    }
    case AF_INET6: {
      const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&ss);
      if (inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host)) == nullptr) {
        return PyErr_SetFromErrno(PyExc_OSError);
      }
      return Py_BuildValue("(siII)", host, static_cast<int>(ntohs(sin6->sin6_port)),
                           static_cast<unsigned int>(ntohl(sin6->sin6_flowinfo)),
                           static_cast<unsigned int>(sin6->sin6_scope_id));
    }
    case AF_UNIX: {
      const auto* sun = reinterpret_cast<const sockaddr_un*>(&ss);
      std::size_t plen = len > offsetof(sockaddr_un, sun_path)
                             ? static_cast<std::size_t>(len) - offsetof(sockaddr_un, sun_path)
                             : 0;
      if (plen > 0 && sun->sun_path[0] == '\0') {
        return PyBytes_FromStringAndSize(sun->sun_path, static_cast<Py_ssize_t>(plen));
      }
      // `ss` is zeroed before the call and larger than sockaddr_un: the path is NUL-terminated.
      return PyUnicode_DecodeFSDefault(sun->sun_path);
    }
    default: {
      const auto* sa = reinterpret_cast<const sockaddr*>(&ss);
      return Py_BuildValue("(iy#)", static_cast<int>(sa->sa_family), sa->sa_data,
                           static_cast<Py_ssize_t>(sizeof(sa->sa_data)));
    }
  }
}

// --- running an operation ---------------------------------------------------------------------

enum class Outcome { kAgain, kDone, kError };

// errno after a failed syscall: EAGAIN means wait; EINTR runs the signal handlers (whose
// exception ends the call, as in the socket module) and retries.
enum class Errno { kAgain, kRetry, kError };
Errno classify_errno() {
  int e = errno;
  if (e == EAGAIN || e == EWOULDBLOCK) return Errno::kAgain;
  if (e == EINTR) return PyErr_CheckSignals() < 0 ? Errno::kError : Errno::kRetry;
  PyErr_SetFromErrno(PyExc_OSError);
  return Errno::kError;
}

// An OSError the socket methods raise for "try later": BlockingIOError or InterruptedError.
bool clear_if_would_block() {
  if (PyErr_ExceptionMatches(PyExc_BlockingIOError) ||
      PyErr_ExceptionMatches(PyExc_InterruptedError)) {
    PyErr_Clear();
    return true;
  }
  return false;
}

// sock.<method>(*args) for the cases decoded by the socket module itself.
Outcome run_method(SockOp& op, PyObject** result) {
  PyObject* args[3] = {op.sock, nullptr, nullptr};
  std::size_t nargs = 1;
  PyObject* tmp = nullptr;
  switch (op.kind) {
    case Kind::kRecvFrom:
      tmp = args[1] = PyLong_FromSsize_t(op.n);
      nargs = 2;
      break;
    case Kind::kRecvFromInto:
      args[1] = op.obj;
      tmp = args[2] = PyLong_FromSsize_t(op.n);
      nargs = 3;
      break;
    case Kind::kSendTo:
      args[1] = op.obj;
      args[2] = op.extra;
      nargs = 3;
      break;
    case Kind::kConnect:
      args[1] = op.extra;
      nargs = 2;
      break;
    default:
      break;
  }
  if (nargs > 1 && args[nargs - 1] == nullptr) return Outcome::kError;
  PyObject* name = PyUnicode_FromString(names_of(op.kind).method);
  PyObject* r = name ? PyObject_VectorcallMethod(name, args, nargs, nullptr) : nullptr;
  Py_XDECREF(name);
  Py_XDECREF(tmp);
  if (r == nullptr) return clear_if_would_block() ? Outcome::kAgain : Outcome::kError;
  if (op.kind == Kind::kAccept) {
    // (conn, address): the connection is made non-blocking, as asyncio does.
    PyObject* conn = PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 2 ? PyTuple_GET_ITEM(r, 0) : r;
    PyObject* ok = PyObject_CallMethodOneArg(conn, sn.str_setblocking, Py_False);
    if (ok == nullptr) {
      Py_DECREF(r);
      return Outcome::kError;
    }
    Py_DECREF(ok);
  }
  *result = r;
  return Outcome::kDone;
}

Outcome run_recv(SockOp& op, int fd, PyObject** result) {
  PyObject* b = PyBytes_FromStringAndSize(nullptr, op.n);
  if (b == nullptr) return Outcome::kError;
  for (;;) {
    ssize_t got = ::recv(fd, PyBytes_AS_STRING(b), op.n, MSG_DONTWAIT);
    if (got >= 0) {
      if (got != op.n && _PyBytes_Resize(&b, got) < 0) return Outcome::kError;
      *result = b;
      return Outcome::kDone;
    }
    Errno e = classify_errno();
    if (e == Errno::kRetry) continue;
    Py_DECREF(b);
    return e == Errno::kAgain ? Outcome::kAgain : Outcome::kError;
  }
}

// recv_into, recvfrom_into: the buffer is taken again at each attempt (asyncio holds the object,
// not an export, so a bytearray may be resized between attempts).
Outcome run_recv_into(SockOp& op, int fd, PyObject** result) {
  const bool from = op.kind == Kind::kRecvFromInto;
  Py_buffer view;
  if (get_writable(op.obj, from ? "recvfrom_into" : "recv_into", &view) < 0) return Outcome::kError;
  Py_ssize_t want = view.len;
  if (from && op.n != 0) {
    if (op.n > view.len) {
      PyBuffer_Release(&view);
      PyErr_SetString(PyExc_ValueError, "nbytes is greater than the length of the buffer");
      return Outcome::kError;
    }
    want = op.n;
  }
  sockaddr_storage ss;
  socklen_t slen = sizeof(ss);
  for (;;) {
    ssize_t got;
    if (from) {
      std::memset(&ss, 0, sizeof(ss));
      slen = sizeof(ss);
      got = ::recvfrom(fd, view.buf, want, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&ss), &slen);
    } else {
      got = ::recv(fd, view.buf, want, MSG_DONTWAIT);
    }
    if (got >= 0) {
      PyBuffer_Release(&view);
      if (!from) {
        *result = PyLong_FromSsize_t(got);
      } else {
        PyObject* addr = make_address(ss, slen);
        *result = addr ? Py_BuildValue("(nN)", static_cast<Py_ssize_t>(got), addr) : nullptr;
      }
      return *result ? Outcome::kDone : Outcome::kError;
    }
    Errno e = classify_errno();
    if (e == Errno::kRetry) continue;
    PyBuffer_Release(&view);
    return e == Errno::kAgain ? Outcome::kAgain : Outcome::kError;
  }
}

Outcome run_recvfrom(SockOp& op, int fd, PyObject** result) {
  PyObject* b = PyBytes_FromStringAndSize(nullptr, op.n);
  if (b == nullptr) return Outcome::kError;
  for (;;) {
    sockaddr_storage ss;
    std::memset(&ss, 0, sizeof(ss));
    socklen_t slen = sizeof(ss);
    ssize_t got = ::recvfrom(fd, PyBytes_AS_STRING(b), op.n, MSG_DONTWAIT,
                             reinterpret_cast<sockaddr*>(&ss), &slen);
    if (got >= 0) {
      if (got != op.n && _PyBytes_Resize(&b, got) < 0) return Outcome::kError;
      PyObject* addr = make_address(ss, slen);
      if (addr == nullptr) {
        Py_DECREF(b);
        return Outcome::kError;
      }
      *result = PyTuple_Pack(2, b, addr);
      Py_DECREF(b);
      Py_DECREF(addr);
      return *result ? Outcome::kDone : Outcome::kError;
    }
    Errno e = classify_errno();
    if (e == Errno::kRetry) continue;
    Py_DECREF(b);
    return e == Errno::kAgain ? Outcome::kAgain : Outcome::kError;
  }
}

// One send per readiness (asyncio's rule); done when the whole buffer has gone.
Outcome run_sendall(SockOp& op, int fd, PyObject** result) {
  for (;;) {
    const char* p = static_cast<const char*>(op.view.buf) + op.n;
    ssize_t sent = ::send(fd, p, op.view.len - op.n, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (sent >= 0) {
      op.n += sent;
      if (op.n < op.view.len) return Outcome::kAgain;
      *result = Py_NewRef(Py_None);
      return Outcome::kDone;
    }
    Errno e = classify_errno();
    if (e == Errno::kRetry) continue;
    return e == Errno::kAgain ? Outcome::kAgain : Outcome::kError;
  }
}

Outcome run_sendto(SockOp& op, int fd, PyObject** result) {
  Py_buffer view;
  if (get_readable(op.obj, &view) < 0) return Outcome::kError;
  for (;;) {
    ssize_t sent = ::sendto(fd, view.buf, view.len, MSG_DONTWAIT | MSG_NOSIGNAL,
                            reinterpret_cast<const sockaddr*>(&op.addr), op.addrlen);
    if (sent >= 0) {
      PyBuffer_Release(&view);
      *result = PyLong_FromSsize_t(sent);
      return *result ? Outcome::kDone : Outcome::kError;
    }
    Errno e = classify_errno();
    if (e == Errno::kRetry) continue;
    PyBuffer_Release(&view);
    return e == Errno::kAgain ? Outcome::kAgain : Outcome::kError;
  }
}

// The connection was started and the fd became writable: SO_ERROR says how it ended
// (asyncio's message: "Connect call failed <address>").
Outcome run_connect_done(SockOp& op, int fd, PyObject** result) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
    Errno e = classify_errno();
    return e == Errno::kError ? Outcome::kError : Outcome::kAgain;
  }
  if (err == 0) {
    *result = Py_NewRef(Py_None);
    return Outcome::kDone;
  }
  PyObject* exc = PyObject_CallFunction(PyExc_OSError, "iN", err,
                                        PyUnicode_FromFormat("Connect call failed %S", op.extra));
  if (exc != nullptr) {
    PyErr_SetObject((PyObject*)Py_TYPE(exc), exc);
    Py_DECREF(exc);
  }
  return Outcome::kError;
}

Outcome run_accept(SockOp& op, int fd, PyObject** result) {
  sockaddr_storage ss;
  socklen_t slen;
  int cfd;
  for (;;) {
    std::memset(&ss, 0, sizeof(ss));
    slen = sizeof(ss);
    cfd = ::accept4(fd, reinterpret_cast<sockaddr*>(&ss), &slen, SOCK_CLOEXEC);
    if (cfd >= 0) break;
    Errno e = classify_errno();
    if (e == Errno::kRetry) continue;
    return e == Errno::kAgain ? Outcome::kAgain : Outcome::kError;
  }
  // socket.socket(family, type, proto, fileno): the listening socket's kind, no syscall to ask
  // the fd; then non-blocking, as asyncio's sock_accept leaves it.
  PyObject* conn = PyObject_CallFunction(
      sn.socket_class, "iiii", int_member(op.sock, sn.off_family), int_member(op.sock, sn.off_type),
      int_member(op.sock, sn.off_proto), cfd);
  if (conn == nullptr) {
    ::close(cfd);
    return Outcome::kError;
  }
  PyObject* ok = PyObject_CallMethodOneArg(conn, sn.str_setblocking, Py_False);
  PyObject* addr = ok ? make_address(ss, slen) : nullptr;
  Py_XDECREF(ok);
  if (addr == nullptr) {
    Py_DECREF(conn);
    return Outcome::kError;
  }
  *result = PyTuple_Pack(2, conn, addr);
  Py_DECREF(conn);
  Py_DECREF(addr);
  return *result ? Outcome::kDone : Outcome::kError;
}

// One attempt of op on fd: kDone with *result, kAgain (nothing happened, wait for readiness) or
// kError with the exception set.
Outcome run_op(SockOp& op, int fd, PyObject** result) {
  *result = nullptr;
  if (op.via_method) return run_method(op, result);
  switch (op.kind) {
    case Kind::kRecv:
      return run_recv(op, fd, result);
    case Kind::kRecvInto:
    case Kind::kRecvFromInto:
      return run_recv_into(op, fd, result);
    case Kind::kRecvFrom:
      return run_recvfrom(op, fd, result);
    case Kind::kSendAll:
      return run_sendall(op, fd, result);
    case Kind::kSendTo:
      return run_sendto(op, fd, result);
    case Kind::kConnect:
      return run_connect_done(op, fd, result);
    case Kind::kAccept:
      return run_accept(op, fd, result);
    case Kind::kNone:
      break;
  }
  PyErr_SetString(PyExc_SystemError, "sock_*: no operation");
  return Outcome::kError;
}

bool is_writer(Kind k) {
  return k == Kind::kSendAll || k == Kind::kSendTo || k == Kind::kConnect;
}

// --- readiness ------------------------------------------------------------------------------

// An error the loop cannot give to a future: asyncio's exception handler, as for a callback.
int report_to_handler(LoopObject* loop, const char* message) {
  PyObject *et, *ev, *etb;
  PyErr_Fetch(&et, &ev, &etb);
  PyErr_NormalizeException(&et, &ev, &etb);
  if (ev != nullptr && etb != nullptr) PyException_SetTraceback(ev, etb);
  PyObject* ctx = Py_BuildValue("{s:s,s:O}", "message", message, "exception", ev ? ev : Py_None);
  Py_XDECREF(et);
  Py_XDECREF(ev);
  Py_XDECREF(etb);
  if (ctx == nullptr) return -1;
  PyObject* r = PyObject_CallMethodOneArg((PyObject*)loop, g.str_call_exception_handler, ctx);
  Py_DECREF(ctx);
  if (r == nullptr) return -1;
  Py_DECREF(r);
  return 0;
}

// Resolves fut with *result (stolen) or with the pending exception. Returns -1 only for what
// must stop the loop (SystemExit, KeyboardInterrupt, a failing exception handler).
int resolve(LoopObject* loop, PyObject* fut, Outcome o, PyObject* result) {
  PyObject* r;
  if (o == Outcome::kDone) {
    r = PyObject_CallMethodOneArg(fut, g.str_set_result, result);
    Py_DECREF(result);
  } else {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_SystemError, "sock_*: error without exception");
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyErr_NormalizeException(&et, &ev, &etb);
    if (etb != nullptr) PyException_SetTraceback(ev, etb);
    r = PyObject_CallMethodOneArg(fut, g.str_set_exception, ev);
    Py_XDECREF(et);
    Py_XDECREF(ev);
    Py_XDECREF(etb);
  }
  if (r != nullptr) {
    Py_DECREF(r);
    return 0;
  }
  return report_to_handler(loop, "sock_* operation could not resolve its future");
}

bool is_fatal_pending() {
  return PyErr_ExceptionMatches(PyExc_SystemExit) ||
         PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
}

// Runs one side's operation after readiness. The operation is moved out of the record while it
// runs (Python code may run meanwhile and touch the record) and put back when it must wait.
int run_side(SockWait* rec, SockOp& slot) {
  PyObject* done = PyObject_CallMethodNoArgs(slot.fut, sn.str_done);
  if (done == nullptr) return -1;
  const bool finished = done == Py_True;
  Py_DECREF(done);
  SockOp op = slot.take();
  if (finished) {  // cancelled: the bytes stay in the socket for the next call
    op.release();
    return 0;
  }
  PyObject* result;
  Outcome o = run_op(op, rec->fd, &result);
  if (o == Outcome::kAgain || (o == Outcome::kError && is_fatal_pending())) {
    // Still waiting (SystemExit/KeyboardInterrupt leave it registered, as asyncio's handle).
    if (slot.kind == Kind::kNone) {
      slot = op;
    } else {
      op.release();  // replaced meanwhile by a newer call
    }
    return o == Outcome::kAgain ? 0 : -1;
  }
  int r = resolve(rec->loop, op.fut, o, result);
  op.release();
  return r;
}

// Both sides fail with the pending exception (the poller refused the registration).
int fail_all(SockWait* rec) {
  PyObject *et, *ev, *etb;
  PyErr_Fetch(&et, &ev, &etb);
  int r = 0;
  for (SockOp* side : {&rec->reader, &rec->writer}) {
    if (side->kind == Kind::kNone) continue;
    SockOp op = side->take();
    Py_XINCREF(et);
    Py_XINCREF(ev);
    Py_XINCREF(etb);
    PyErr_Restore(et, ev, etb);
    if (resolve(rec->loop, op.fut, Outcome::kError, nullptr) < 0) r = -1;
    op.release();
    if (r < 0) break;
  }
  if (r == 0 && sync_interest(rec) < 0) PyErr_Clear();
  Py_XDECREF(et);
  Py_XDECREF(ev);
  Py_XDECREF(etb);
  return r;
}

// Like selectors.EpollSelector, an error or hang-up wakes both directions; the syscall then
// reports what happened.
int sock_wait_on_events(Watcher* w, LoopObject*, std::uint32_t ev) {
  SockWait* rec = wait_of(w);
  Py_INCREF(rec);
  rec->busy = true;
  int r = 0;
  if ((ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) && rec->reader.kind != Kind::kNone) {
    r = run_side(rec, rec->reader);
  }
  if (r == 0 && (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR)) && rec->writer.kind != Kind::kNone) {
    r = run_side(rec, rec->writer);
  }
  rec->busy = false;
  if (r == 0) {
    if (sync_interest(rec) < 0) r = fail_all(rec);
  } else {
    PyObject *et, *evv, *etb;
    PyErr_Fetch(&et, &evv, &etb);
    if (sync_interest(rec) < 0) PyErr_Clear();
    PyErr_Restore(et, evv, etb);
  }
  Py_DECREF(rec);
  return r;
}

int sock_wait_traverse(Watcher* w, visitproc visit, void* arg) {
  SockWait* rec = wait_of(w);
  for (SockOp* s : {&rec->reader, &rec->writer}) {
    Py_VISIT(s->fut);
    Py_VISIT(s->sock);
    Py_VISIT(s->obj);
    Py_VISIT(s->extra);
    if (s->has_view) Py_VISIT(s->view.obj);
  }
  return 0;
}

// The loop closes: pending futures stay pending (asyncio's close does not resolve them either).
// The record's memory is still read by registry_close_all after this returns, so its release
// goes through the batch list that registry_close_all flushes at its end.
void sock_wait_loop_closing(Watcher* w, LoopObject* loop) {
  SockWait* rec = wait_of(w);
  rec->reader.release();
  rec->writer.release();
  S(loop).release_after_batch.push_back((PyObject*)rec);
}

// --- starting an operation --------------------------------------------------------------------

// The fd must wait through asyncio's own callbacks (it has an add_reader/add_writer handle):
// Loop._sock_via_selector(fd, writer, self.<asyncio callback>, *args).
PyObject* wait_via_selector(LoopObject* self, int fd, SockOp& op) {
  PyObject* cb = PyObject_GetAttrString((PyObject*)self, names_of(op.kind).callback);
  if (cb == nullptr) return nullptr;
  PyObject* fdo = PyLong_FromLong(fd);
  PyObject* args = nullptr;
  switch (op.kind) {
    case Kind::kRecv:
    case Kind::kRecvFrom:
      args = Py_BuildValue("(NOOOn)", fdo, Py_False, cb, op.sock, op.n);
      break;
    case Kind::kRecvInto:
      args = Py_BuildValue("(NOOOO)", fdo, Py_False, cb, op.sock, op.obj);
      break;
    case Kind::kRecvFromInto:
      args = Py_BuildValue("(NOOOOn)", fdo, Py_False, cb, op.sock, op.obj, op.n);
      break;
    case Kind::kAccept:
      args = Py_BuildValue("(NOOO)", fdo, Py_False, cb, op.sock);
      break;
    case Kind::kSendAll: {
      // asyncio's _sock_sendall(fut, sock, memoryview(data), [sent]), over bytes.
      PyObject* mv = PyMemoryView_FromObject(op.view.obj);
      if (mv != nullptr && PyMemoryView_GET_BUFFER(mv)->itemsize != 1) {
        PyObject* cast = PyObject_CallMethod(mv, "cast", "s", "B");  // cold path
        Py_SETREF(mv, cast);
      }
      args = mv ? Py_BuildValue("(NOOON[n])", fdo, Py_True, cb, op.sock, mv, op.n) : nullptr;
      if (mv == nullptr) Py_XDECREF(fdo);
      break;
    }
    case Kind::kSendTo:
      args = Py_BuildValue("(NOOOOO)", fdo, Py_True, cb, op.sock, op.obj, op.extra);
      break;
    case Kind::kConnect:
      args = Py_BuildValue("(NOOOO)", fdo, Py_True, cb, op.sock, op.extra);
      break;
    case Kind::kNone:
      Py_XDECREF(fdo);
      break;
  }
  Py_DECREF(cb);
  if (args == nullptr) return nullptr;
  PyObject* m = PyObject_GetAttr((PyObject*)self, sn.str_via_selector);
  PyObject* fut = m ? PyObject_Call(m, args, nullptr) : nullptr;
  Py_XDECREF(m);
  Py_DECREF(args);
  return fut;
}

PyObject* new_future(LoopObject* self) {
  PyObject* argv[1] = {(PyObject*)self};
  return PyObject_Vectorcall(g.future_type, argv, 0, g.kwnames_loop);
}

// The first attempt said EAGAIN: op (its references are taken over) waits on fd's record.
// Returns the future to await, or NULL with the exception asyncio raises at that point.
PyObject* wait_for_readiness(LoopObject* self, int fd, SockOp& op) {
  if (check_closed(self) < 0) {
    op.release();
    return nullptr;
  }
  LoopState& st = S(self);
  Watcher* owner = st.registry.owner(fd);
  SockWait* rec = nullptr;
  bool fresh = false;
  if (owner == nullptr) {
    rec = sock_wait_new(self, fd);
    if (rec == nullptr) {
      op.release();
      return nullptr;
    }
    fresh = true;
  } else if (owner->ops == &kSockWaitOps) {
    rec = wait_of(owner);
  } else if (owner->ops == &kFdWatchOps) {
    PyObject* fut = wait_via_selector(self, fd, op);
    op.release();
    return fut;
  } else {
    PyObject* o = owner->ops->owner ? owner->ops->owner(owner) : nullptr;
    if (o != nullptr) {
      PyErr_Format(PyExc_RuntimeError, "File descriptor %d is used by transport %R", fd, o);
    } else {
      PyErr_Format(PyExc_RuntimeError, "File descriptor %d is used by the loop itself", fd);
    }
    op.release();
    return nullptr;
  }
  PyObject* fut = new_future(self);
  if (fut == nullptr) {
    op.release();
    if (fresh) Py_DECREF(rec);
    return nullptr;
  }
  op.fut = Py_NewRef(fut);
  SockOp& slot = is_writer(op.kind) ? rec->writer : rec->reader;
  // A second call of the same direction replaces the first, whose future then stays pending:
  // asyncio's _add_reader does the same. Its registration is redone from scratch, in case the fd
  // was closed and its number reused under the old call.
  SockOp old = slot.take();
  if (old.kind != Kind::kNone && rec->watcher.registered && !rec->busy) {
    if (watcher_set_interest(self, &rec->watcher, 0) < 0) PyErr_Clear();
  }
  slot = op;
  op = SockOp();
  if (sync_interest(rec) < 0) {
    SockOp undo = slot.take();
    undo.release();
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    if (sync_interest(rec) < 0) PyErr_Clear();
    PyErr_Restore(et, ev, etb);
    Py_CLEAR(fut);
  }
  old.release();
  if (fresh) Py_DECREF(rec);  // attached: the attachment holds its own reference
  return fut;
}

// The common head of every method: the object is a socket (else asyncio's coroutine runs
// instead: *fallback), the checks pass, and its fd. Returns the fd, -1 for a closed socket, or
// -2 with an exception / with *fallback set.
int begin(LoopObject* self, Kind kind, PyObject* const* args, Py_ssize_t nargs, Py_ssize_t min,
          Py_ssize_t max, PyObject** fallback) {
  *fallback = nullptr;
  if (nargs < min || nargs > max) {
    PyErr_Format(PyExc_TypeError, "_%s_now() takes %zd to %zd arguments (%zd given)",
                 names_of(kind).coroutine, min, max, nargs);
    return -2;
  }
  if (ensure_names() < 0) return -2;
  PyObject* sock = args[0];
  if (!is_socket(sock)) {
    // Not a socket.socket: asyncio's coroutine calls its methods (duck typing).
    PyObject* f = PyObject_GetAttrString(sn.selector_events, names_of(kind).coroutine);
    if (f == nullptr) return -2;
    PyObject* argv[5] = {(PyObject*)self};
    for (Py_ssize_t i = 0; i < nargs; ++i) argv[i + 1] = args[i];
    *fallback = PyObject_Vectorcall(f, argv, nargs + 1, nullptr);
    Py_DECREF(f);
    return -2;
  }
  if (check_socket(self, sock) < 0) return -2;
  return fileno_of(sock);
}

// Finishes a method: the first attempt's outcome, or the wait.
PyObject* finish(LoopObject* self, int fd, SockOp& op, Outcome o, PyObject* result) {
  if (o == Outcome::kDone) {
    op.release();
    return result;
  }
  if (o == Outcome::kError) {
    op.release();
    return nullptr;
  }
  return wait_for_readiness(self, fd, op);
}

#define SOCK_BEGIN(KIND, MIN, MAX)                              \
  PyObject* fallback;                                           \
  int fd = begin(self, KIND, args, nargs, MIN, MAX, &fallback); \
  if (fd == -2) return fallback;                                \
  SockOp op;                                                    \
  op.kind = KIND;                                               \
  op.sock = Py_NewRef(args[0]);

// --- the C methods ---------------------------------------------------------------------------

PyObject* sock_recv_now(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  SOCK_BEGIN(Kind::kRecv, 2, 2)
  if (parse_size(args[1], "recv", &op.n) < 0) return finish(self, fd, op, Outcome::kError, nullptr);
  PyObject* result;
  Outcome o = run_recv(op, fd, &result);
  return finish(self, fd, op, o, result);
}

PyObject* sock_recv_into_now(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  SOCK_BEGIN(Kind::kRecvInto, 2, 2)
  op.obj = Py_NewRef(args[1]);
  PyObject* result;
  Outcome o = run_recv_into(op, fd, &result);
  return finish(self, fd, op, o, result);
}

PyObject* sock_recvfrom_now(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  SOCK_BEGIN(Kind::kRecvFrom, 2, 2)
  if (parse_size(args[1], "recvfrom", &op.n) < 0) {
    return finish(self, fd, op, Outcome::kError, nullptr);
  }
  op.via_method = !family_decoded(family_of(args[0]));
  PyObject* result;
  Outcome o = run_op(op, fd, &result);
  return finish(self, fd, op, o, result);
}

// (sock, buf, nbytes=0): asyncio reads len(buf) bytes when nbytes is false.
PyObject* sock_recvfrom_into_now(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  SOCK_BEGIN(Kind::kRecvFromInto, 2, 3)
  op.obj = Py_NewRef(args[1]);
  int given = nargs > 2 ? PyObject_IsTrue(args[2]) : 0;
  if (given < 0) return finish(self, fd, op, Outcome::kError, nullptr);
  if (given) {
    Py_ssize_t n = PyNumber_AsSsize_t(args[2], PyExc_OverflowError);
    if (n == -1 && PyErr_Occurred()) return finish(self, fd, op, Outcome::kError, nullptr);
    if (n < 0) {
      PyErr_SetString(PyExc_ValueError, "negative buffersize in recvfrom_into");
      return finish(self, fd, op, Outcome::kError, nullptr);
    }
    op.n = n;
  } else {
    op.n = PyObject_Length(args[1]);
    if (op.n < 0) return finish(self, fd, op, Outcome::kError, nullptr);
  }
  op.via_method = !family_decoded(family_of(args[0]));
  PyObject* result;
  Outcome o = run_op(op, fd, &result);
  return finish(self, fd, op, o, result);
}

PyObject* sock_sendall_now(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  SOCK_BEGIN(Kind::kSendAll, 2, 2)
  if (get_readable(args[1], &op.view) < 0) return finish(self, fd, op, Outcome::kError, nullptr);
  op.has_view = true;
  PyObject* result;
  Outcome o = run_sendall(op, fd, &result);
  return finish(self, fd, op, o, result);
}

PyObject* sock_sendto_now(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  SOCK_BEGIN(Kind::kSendTo, 3, 3)
  op.obj = Py_NewRef(args[1]);
  op.extra = Py_NewRef(args[2]);
  op.via_method = !decode_inet_address(family_of(args[0]), args[2], &op.addr, &op.addrlen);
  PyObject* result;
  Outcome o = run_op(op, fd, &result);
  return finish(self, fd, op, o, result);
}

// (sock, address), the address already resolved by the Python wrapper. In progress: wait until
// writable, then SO_ERROR.
PyObject* sock_connect_now(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  SOCK_BEGIN(Kind::kConnect, 2, 2)
  op.extra = Py_NewRef(args[1]);
  sockaddr_in6 ss;
  socklen_t len;
  Outcome o;
  PyObject* result = nullptr;
  if (decode_inet_address(family_of(args[0]), args[1], &ss, &len)) {
    o = Outcome::kDone;
    for (;;) {
      if (::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) == 0) break;
      if (errno == EINPROGRESS) {
        o = Outcome::kAgain;
        break;
      }
      // EINTR: the connection goes on in the background; like asyncio, wait for writability.
      if (errno == EINTR) {
        o = PyErr_CheckSignals() < 0 ? Outcome::kError : Outcome::kAgain;
        break;
      }
      Errno e = classify_errno();
      o = e == Errno::kAgain ? Outcome::kAgain : Outcome::kError;
      break;
    }
    if (o == Outcome::kDone) result = Py_NewRef(Py_None);
  } else {
    op.via_method = true;
    o = run_method(op, &result);
    if (o == Outcome::kDone) Py_SETREF(result, Py_NewRef(Py_None));
  }
  op.via_method = false;  // what is left to do is the SO_ERROR check
  return finish(self, fd, op, o, result);
}

PyObject* sock_accept_now(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  SOCK_BEGIN(Kind::kAccept, 1, 1)
  op.via_method = !family_decoded(family_of(args[0])) || sn.off_type < 0 || sn.off_proto < 0;
  PyObject* result;
  Outcome o = run_op(op, fd, &result);
  return finish(self, fd, op, o, result);
}

#undef SOCK_BEGIN

// (sock, fut): the awaiting coroutine left before fut was resolved (cancelled, closed): its side
// of the fd's record is emptied now, so no registration outlives it. Never raises.
PyObject* sock_abandon(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2 || self->closed || !sn.ready) Py_RETURN_NONE;
  PyObject* fut = args[1];
  LoopState& st = S(self);
  int fd = is_socket(args[0]) ? fileno_of(args[0]) : -1;
  if (fd == -2) PyErr_Clear();
  SockWait* found = nullptr;
  auto holds = [fut](Watcher* w) {
    if (w->ops != &kSockWaitOps) return false;
    SockWait* r = wait_of(w);
    return r->reader.fut == fut || r->writer.fut == fut;
  };
  if (Watcher* w = fd >= 0 ? st.registry.owner(fd) : nullptr; w != nullptr && holds(w)) {
    found = wait_of(w);
  } else {
    // The socket was closed meanwhile (fileno() is -1): look through the records.
    st.registry.for_each([&](Watcher* w) {
      if (found == nullptr && holds(w)) found = wait_of(w);
    });
  }
  if (found == nullptr) Py_RETURN_NONE;
  SockOp op = (found->reader.fut == fut ? found->reader : found->writer).take();
  Py_INCREF(found);
  if (sync_interest(found) < 0) PyErr_WriteUnraisable((PyObject*)self);
  Py_DECREF(found);
  op.release();
  Py_RETURN_NONE;
}

PyMethodDef sock_methods[] = {
    {"_sock_recv_now", (PyCFunction)(void (*)(void))sock_recv_now, METH_FASTCALL,
     "_sock_recv_now(sock, n) -> bytes, or a future when it must wait"},
    {"_sock_recv_into_now", (PyCFunction)(void (*)(void))sock_recv_into_now, METH_FASTCALL,
     "_sock_recv_into_now(sock, buf) -> int, or a future"},
    {"_sock_recvfrom_now", (PyCFunction)(void (*)(void))sock_recvfrom_now, METH_FASTCALL,
     "_sock_recvfrom_now(sock, bufsize) -> (bytes, address), or a future"},
    {"_sock_recvfrom_into_now", (PyCFunction)(void (*)(void))sock_recvfrom_into_now, METH_FASTCALL,
     "_sock_recvfrom_into_now(sock, buf, nbytes=0) -> (int, address), or a future"},
    {"_sock_sendall_now", (PyCFunction)(void (*)(void))sock_sendall_now, METH_FASTCALL,
     "_sock_sendall_now(sock, data) -> None when all was sent, else a future"},
    {"_sock_sendto_now", (PyCFunction)(void (*)(void))sock_sendto_now, METH_FASTCALL,
     "_sock_sendto_now(sock, data, address) -> int, or a future"},
    {"_sock_connect_now", (PyCFunction)(void (*)(void))sock_connect_now, METH_FASTCALL,
     "_sock_connect_now(sock, resolved_address) -> None when connected, else a future"},
    {"_sock_accept_now", (PyCFunction)(void (*)(void))sock_accept_now, METH_FASTCALL,
     "_sock_accept_now(sock) -> (conn, address), or a future"},
    {"_sock_abandon", (PyCFunction)(void (*)(void))sock_abandon, METH_FASTCALL,
     "_sock_abandon(sock, fut): forget the wait of fut (its awaiter left)"},
    {nullptr, nullptr, 0, nullptr},
};

const WatcherOps kSockWaitOps = {"sock", sock_wait_on_events, nullptr, sock_wait_traverse,
                                 sock_wait_loop_closing};

}  // namespace

const PyMethodDef* sock_loop_methods() {
  return sock_methods;
}

}  // namespace tideloop::bridge
