// StreamTransport: the transport of TCP and Unix stream sockets (handles/stream.cpp), asyncio
// 3.11's selector_events._SelectorSocketTransport in C++, driven from the loop's tick.
//
// What differs from asyncio's design, and why:
//  * Reading runs inside the tick (WatcherOps::on_events), in the same GIL hold as the wait that
//    reported it: no Handle per readiness, no bound-method call, recv() straight into a buffer
//    shared by every transport of the process (it is copied into the bytes handed to
//    data_received before any Python code runs, so one buffer is enough).
//  * write() sends at once when nothing is queued (as asyncio does); what the kernel did not
//    take goes into a WriteQueue owned by the transport and EPOLLOUT is watched only while it is
//    non-empty. The queue is drained with one sendmsg() over up to kMaxIov pieces.
//  * The type subclasses asyncio.transports._FlowControlMixin, so isinstance checks of asyncio
//    (the sendfile fallback requires a _FlowControlMixin) and of users hold. The mixin's
//    __slots__ occupy the start of the object (`inherited_slots`); this type shadows every one
//    of them with its own getter, so they stay NULL (unless someone calls the base class's
//    descriptors explicitly: then they are traversed and cleared like the other references).
//
// Threading: every field is touched by the bridge thread only, with the GIL held.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <deque>

#include "loop/loop.hpp"

namespace tideloop::bridge {

// The bytes write() could not send yet, in order. Small writes are copied into blocks (so many
// small writes drain in one iovec); a bytes object of kReferenceMin bytes or more is queued by
// reference, not copied: it is immutable, so what is sent is what was written (bytearray and
// memoryview contents can change after write() returns, so they are always copied).
// Complexity: append O(n) for copies, O(1) for references; consume O(pieces released).
class WriteQueue {
 public:
  static constexpr std::size_t kReferenceMin = 16 * 1024;
  // A copy block; blocks of exactly this size are recycled through a small process-wide pool.
  static constexpr std::size_t kBlockSize = 64 * 1024;
  // Pieces per sendmsg(): more rarely helps (each one is a kernel copy of its own).
  static constexpr int kMaxIov = 64;

  WriteQueue() = default;
  WriteQueue(const WriteQueue&) = delete;
  WriteQueue& operator=(const WriteQueue&) = delete;
  ~WriteQueue() { clear(); }

  bool empty() const { return size_ == 0; }
  std::size_t size() const { return size_; }

  // Queues n bytes at p. `owner`: the bytes object p points into (then it may be referenced
  // instead of copied), or nullptr. Returns false when out of memory (nothing queued).
  bool append(const char* p, std::size_t n, PyObject* owner);
  // The first pieces, for sendmsg(). Returns how many iov entries were filled.
  int fill(iovec* iov, int max) const;
  // Drops the first n bytes (n <= size()).
  void consume(std::size_t n);
  void clear();

 private:
  struct Piece {
    PyObject* ref;     // a bytes object held by reference, or nullptr
    char* block;       // a copy block (cap bytes), or nullptr
    std::size_t cap;   // the block's size
    std::size_t head;  // offset of the first unsent byte in the block / bytes
    std::size_t len;   // unsent bytes
    const char* data() const;
  };
  static void release(Piece& p);
  std::deque<Piece> pieces_;
  std::size_t size_ = 0;
};

struct StreamTransportObject {
  PyObject_HEAD
      // asyncio's BaseTransport._extra and _FlowControlMixin's _loop/_protocol_paused/_high_water/
      // _low_water: the layout of the Python base class (checked in stream_types_ready).
      PyObject* inherited_slots[5];
  Watcher watcher;         // in the registry from construction to _call_connection_lost
  LoopObject* loop;        // strong; NULL after connection_lost or once the loop closed
  PyObject* sock;          // the socket.socket; NULL once closed
  PyObject* protocol;      // NULL after connection_lost
  PyObject* extra;         // the extra-info mapping
  PyObject* server;        // asyncio.Server or NULL
  PyObject* empty_waiter;  // sendfile's future: resolved when the queue is empty
  // The contextvars.Context the protocol's read callbacks run in (asyncio: the context of the
  // reader handle, a copy taken when reading started), and the one of write-side callbacks (a
  // copy taken when the queue became non-empty, as asyncio's writer handle). NULL: an empty
  // context, created when first entered.
  PyObject* read_ctx;
  PyObject* write_ctx;
  PyObject* weakreflist;
  WriteQueue* wq;  // created on first use
  Py_ssize_t high_water;
  Py_ssize_t low_water;
  long conn_lost;  // asyncio's _conn_lost: >0 once connection_lost is scheduled (counts writes)
  int fd;          // asyncio's _sock_fd (kept after close, for repr)
  bool closing;
  bool eof;              // write_eof() was called
  bool paused;           // pause_reading()
  bool reader_on;        // asyncio "has a reader registered" (EPOLLIN wanted)
  bool protocol_paused;  // pause_writing() was called, resume_writing() not yet
  bool buffered;         // the protocol is an asyncio.BufferedProtocol
  bool lent;             // the fd is lent to sock_sendfile (detached from the registry)
  // The loop holds a reference (WatcherOps::owner returns the transport) only while some event
  // is wanted, as asyncio's selector holds the reader/writer handles only while registered: an
  // idle transport nobody else references is collected (ResourceWarning, socket closed), as in
  // asyncio. The fd stays in the registry meanwhile, so nobody else can watch it, and
  // WatcherOps::object still names the transport (_fd_owner, "used by transport" errors). From
  // construction until reading first starts (`started`) the reference is held too.
  bool held;
  bool started;
  // Bytes written by a callback of the running loop wait in the queue for the end of the tick's
  // phase (defer_to_phase_end) and leave in one sendmsg with whatever else was written
  // meanwhile; set while such a flush is scheduled. See may_defer() in stream.cpp.
  bool flush_pending;
};

}  // namespace tideloop::bridge
