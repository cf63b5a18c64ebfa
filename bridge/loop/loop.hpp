// LoopCore: the C base of tideloop.Loop. It owns the ready queue, the timer queue, the poller with
// its fd registry, and the inbox; runs the tick (loop/tick.cpp); and exposes the hot asyncio
// methods (call_soon, call_later, call_at, call_soon_threadsafe, time, create_future,
// run_forever, add_reader...) as METH_FASTCALL methods. The Python subclass
// (python_pkg/tideloop/_loop.py) adds the rarely-called rest.
//
// Rooms: loop/ is the loop object itself (this header, the type and run/stop/close in loop.cpp,
// the tick in tick.cpp, the fd registry glue in registry.cpp, argument checks in args.cpp, the
// clock in clock.cpp); handles/ holds one file per handle kind; native/ the threads that run
// Python code; engine/ the parts without Python.h (poller, registry, ready ring, timer queue,
// inbox). docs/architecture.md says how a new handle kind is added.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "engine/fd_registry.hpp"
#include "engine/inbox.hpp"
#include "engine/poller.hpp"
#include "engine/ready_queue.hpp"
#include "engine/timer_queue.hpp"
#include "engine/watcher.hpp"
#include "internal.hpp"

namespace tideloop::bridge {

// How the loop talks to one kind of watcher (engine/watcher.hpp). Every function runs on the
// bridge thread with the GIL held. A new handle kind defines one static WatcherOps.
struct WatcherOps {
  const char* kind;  // for error messages and _stats(): "fd", "transport", "server"...
  // The poller reported `events` (EPOLLIN/OUT/HUP/ERR) for w. Returns 0, or -1 with a Python
  // exception that must stop the loop (SystemExit, KeyboardInterrupt...): ordinary errors of a
  // callback go to the exception handler instead, as in asyncio.
  int (*on_events)(Watcher* w, LoopObject* loop, std::uint32_t events);
  // The Python object w is embedded in (borrowed), or nullptr for the loop's own records. The
  // loop holds one strong reference to it while w is attached (loop/registry.cpp).
  PyObject* (*owner)(Watcher* w);
  // References the loop owns through w besides its owner (nullptr: none). For tp_traverse.
  int (*traverse)(Watcher* w, visitproc visit, void* arg);
  // The loop is closing (or being collected) and w is already detached: drop what the loop
  // owns through w and stop using the loop. nullptr: nothing to do.
  void (*loop_closing)(Watcher* w, LoopObject* loop);
  // The Python object w belongs to (borrowed) even while the loop holds no reference to it (an
  // idle transport): what _fd_owner(fd) and "used by transport" errors name. nullptr: `owner`.
  PyObject* (*object)(Watcher* w) = nullptr;
};

// add_reader/add_writer registration of one fd: the handles run when it becomes ready
// (handles/fd_watch.cpp). One record per fd number, created on first use and kept until the
// loop closes, so its address stays valid for any batch of events that mentions it.
struct FdWatch {
  Watcher watcher;                 // first member: the Watcher pointer is the record pointer
  HandleObject* reader = nullptr;  // strong references
  HandleObject* writer = nullptr;
};

// C++ state of a loop; placement-constructed in tp_new, destroyed in tp_dealloc. Touched only
// with the GIL held, except `core`, which native threads reach through their own shared_ptr.
struct LoopState {
  ReadyQueue<HandleObject> ready;
  std::shared_ptr<BridgeCore> core = std::make_shared<BridgeCore>();
  Poller poller;
  FdRegistry registry{poller};  // every watched fd; after `poller`, which it uses
  std::vector<std::unique_ptr<FdWatch>> fd_watches;  // add_reader records, indexed by fd
  Watcher wake_watcher;                              // core's eventfd (loop/tick.cpp)
  Watcher signal_watcher;                            // signal_rfd (handles/signal.cpp)
  // Work deferred to the end of the current phase of the tick (after the dispatch of a batch of
  // events, after the run of ready handles): transports' coalesced writes (handles/stream.cpp).
  // Each entry holds a reference to its object. See defer_to_phase_end().
  struct PhaseEnd {
    PyObject* obj;
    int (*run)(PyObject* obj);  // GIL held; -1 with an exception that must stop the loop
  };
  std::vector<PhaseEnd> phase_end;
  // Owners of watchers detached while a batch of events is dispatched: released after the batch
  // (engine/watcher.hpp, "Lifetime rule").
  std::vector<PyObject*> release_after_batch;
  bool dispatching = false;
  // signal.set_wakeup_fd target: Python's C signal handler writes the signal number here, which
  // ends the wait even when the signal was delivered to another thread.
  int signal_rfd = -1;
  int signal_wfd = -1;
  bool wakeup_installed_for_run = false;  // installed by the current run_forever, restore at exit
  bool wakeup_permanent = false;          // installed by add_signal_handler (Python side)
  bool has_signal_handlers = false;
  std::vector<InboxNode*> inbox_scratch;  // reused by every drain: no allocation per tick
  // run_in_executor jobs submitted to the native pool and not yet delivered.
  std::int64_t executor_in_flight = 0;
  PyObject* executor_idle_waiter = nullptr;  // future resolved when in-flight drops to 0
  // call_later/call_at, on the runtime's TimerWheel. Last: the wheel's 3 KiB of slots would
  // otherwise spread the fields above over more cache lines.
  TimerQueue timers{monotonic_now()};
};

struct LoopObject {
  PyObject_HEAD LoopState* st;
  unsigned long thread_id;  // valid while running
  bool running;
  bool stopping;
  bool closed;
  bool debug;
  bool origin_tracking;
  PyObject* current_handle;  // debug mode: the handle being run
  PyObject* agen_firstiter;  // bound methods, cached at the first run_forever
  PyObject* agen_finalizer;
};

inline LoopState& S(LoopObject* self) {
  return *self->st;
}

// --- loop/registry.cpp: the fd registry, with Python ownership ----------------------------
// Makes w the owner of fd (taking a reference to ops->owner(w)). An add_reader/add_writer record
// on that fd is evicted (its handles cancelled), as asyncio's selector replaces the callback of
// a re-registered fd; another owner is an error. Returns 0 or -1 with OSError/RuntimeError set.
int watcher_attach(LoopObject* loop, Watcher* w, int fd);
// Sets the events waited for; returns 0 or -1 with OSError set.
int watcher_set_interest(LoopObject* loop, Watcher* w, std::uint32_t events);
// Ends the ownership; the owner's reference is released now or, during a batch, after it.
void watcher_detach(LoopObject* loop, Watcher* w);
// Drops a reference now, or after the batch of events being dispatched.
void release_after_batch(LoopState& st, PyObject* obj);
void flush_batch_releases(LoopState& st);
// Detaches every watcher (loop close / collection), calling ops->loop_closing on each.
void registry_close_all(LoopObject* loop);
// The Python object of fd's watcher (borrowed: WatcherOps::object, else owner), or nullptr.
PyObject* fd_owner_object(LoopObject* loop, int fd);

// --- loop/tick.cpp --------------------------------------------------------------------------
int loop_tick(LoopObject* self, bool* wakeup_checked);
// Runs run(obj) at the end of the tick's current phase, before the loop can block again: the
// phase ends after the batch of events being dispatched, or after the ready handles of this
// tick. Takes a reference to obj until then. The caller makes sure it defers an object at most
// once per phase (a flag of its own). Only while the loop runs, on its thread.
void defer_to_phase_end(LoopObject* loop, PyObject* obj, int (*run)(PyObject*));
int run_phase_end(LoopObject* loop);
extern const WatcherOps kWakeWatcherOps;
void drain_inbox(LoopObject* self);
void discard_inbox(LoopObject* self);

// --- handles/timer.cpp ------------------------------------------------------------------
PyObject* loop_call_later(LoopObject* self, PyObject* const* args, Py_ssize_t nargsf,
                          PyObject* kwnames);
PyObject* loop_call_at(LoopObject* self, PyObject* const* args, Py_ssize_t nargsf,
                       PyObject* kwnames);
inline TimerHandleObject* timer_of(TimerEntry* e) {
  return reinterpret_cast<TimerHandleObject*>(reinterpret_cast<char*>(e) -
                                              offsetof(TimerHandleObject, timer));
}
void drop_timer(TimerEntry* e);  // the queue's reference to a timer that left without running
void move_expired_timers(LoopObject* self);
std::int64_t timer_timeout_ns(LoopState& st);  // until the earliest timer, -1: none

// --- handles/handle.cpp (scheduling) ----------------------------------------------------
PyObject* loop_call_soon(LoopObject* self, PyObject* const* args, Py_ssize_t nargsf,
                         PyObject* kwnames);
PyObject* loop_call_soon_threadsafe(LoopObject* self, PyObject* const* args, Py_ssize_t nargsf,
                                    PyObject* kwnames);
// Visits the references the loop owns through a handle only it holds (handles are not
// GC-tracked; handles/handle.cpp).
int visit_owned_handle(HandleObject* h, visitproc visit, void* arg);

// --- handles/fd_watch.cpp ---------------------------------------------------------------
PyObject* loop_add_reader(LoopObject* self, PyObject* const* args, Py_ssize_t nargsf,
                          PyObject* kwnames);
PyObject* loop_add_writer(LoopObject* self, PyObject* const* args, Py_ssize_t nargsf,
                          PyObject* kwnames);
PyObject* loop_remove_reader(LoopObject* self, PyObject* fd);
PyObject* loop_remove_writer(LoopObject* self, PyObject* fd);
extern const WatcherOps kFdWatchOps;
// _add_reader & co. (asyncio's internal variants) and _fd_owner: LoopCore methods of this room.
const PyMethodDef* fd_watch_loop_methods();
// Cancels and drops an add_reader record's handles (evicted by another owner, or loop close).
void fd_watch_clear(FdWatch* w);

// --- handles/signal.cpp -------------------------------------------------------------------
extern const WatcherOps kSignalWatcherOps;
void install_wakeup_for_run(LoopObject* self, bool* checked);
void restore_wakeup_after_run(LoopObject* self);
void close_signal_socket(LoopState& st);
PyObject* loop_signal_wakeup_fd(LoopObject* self, PyObject*);
PyObject* loop_set_signal_state(LoopObject* self, PyObject* const* args, Py_ssize_t nargs);

// --- handles/stream.cpp, handles/udp.cpp, handles/sock.cpp --------------------------------
// Each room that adds LoopCore methods returns a sentinel-terminated table; loop_type_ready()
// concatenates them after the loop's own (a new room adds one line there).
const PyMethodDef* sock_loop_methods();
// Each room that defines Python types readies them and adds them to the module.
int stream_types_ready(PyObject* module);
int udp_types_ready(PyObject* module);

}  // namespace tideloop::bridge
