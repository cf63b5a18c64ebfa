// LoopCore: the C base of tideloop.Loop. It owns the ready queue, the timer queue, the poller and
// the inbox, runs the tick (loop.cpp), and exposes the hot asyncio methods (call_soon,
// call_later, call_at, call_soon_threadsafe, time, create_future, run_forever...) as METH_FASTCALL
// methods. The Python subclass (python_pkg/tideloop/_loop.py) adds the rarely-called rest.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "internal.hpp"
#include "poller.hpp"
#include "ready_queue.hpp"
#include "timer_queue.hpp"

namespace tideloop::bridge {

// add_reader/add_writer registration of one fd: the handles run when it becomes ready.
struct FdWatch {
  HandleObject* reader = nullptr;  // strong references
  HandleObject* writer = nullptr;
  bool registered = false;  // present in the epoll set
};

// C++ state of a loop; placement-constructed in tp_new, destroyed in tp_dealloc. Touched only
// with the GIL held, except `core`, which native threads reach through their own shared_ptr.
struct LoopState {
  ReadyQueue<HandleObject> ready;
  std::shared_ptr<BridgeCore> core = std::make_shared<BridgeCore>();
  Poller poller;
  std::vector<FdWatch> fds;  // indexed by fd
  std::size_t watched_fds = 0;
  // signal.set_wakeup_fd target: Python's C signal handler writes the signal number here, which
  // ends the wait even when the signal was delivered to another thread.
  int signal_rfd = -1;
  int signal_wfd = -1;
  bool wakeup_installed_for_run = false;  // installed by the current run_forever, restore at exit
  bool wakeup_permanent = false;          // installed by add_signal_handler (Python side)
  bool has_signal_handlers = false;
  // run_in_executor jobs submitted to the native pool and not yet delivered.
  std::vector<InboxNode*> inbox_scratch;  // reused by every drain: no allocation per tick
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

}  // namespace tideloop::bridge
