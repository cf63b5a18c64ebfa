// Shared internals of the CPython extension `tideloop._tideloop` (one header, like libuv's
// internal.h): the object layouts of Handle, TimerHandle and LoopCore, the module-wide cache of
// interned names and asyncio callables, and the functions the files of bridge/ call on each
// other. Nothing here is public API; the Python-facing contract is python_pkg/tideloop/*.pyi.
//
// Threading rule for everything in this header: a field of a Python object is touched only by a
// thread that holds the GIL. The only state native threads touch is BridgeCore
// (engine/inbox.hpp), which is lock-free; a node posted to it carries no reference its producer
// must drop later.
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstdint>
#include <memory>

#include "engine/inbox.hpp"
#include "engine/timer_queue.hpp"

namespace tideloop::bridge {

struct LoopObject;

// A callback scheduled by call_soon/call_soon_threadsafe/add_reader: asyncio.Handle's contract
// (cancel(), cancelled(), get_context(), _run()) in a C object recycled through a free list.
// Not a GC-tracked container: see handles/handle.cpp for why and how cycles are still collected.
struct HandleObject {
  PyObject_HEAD PyObject* callback;  // NULL once cancelled (asyncio drops callback and args)
  PyObject* arg1;                    // the argument when nargs == 1
  PyObject* args;                    // a tuple when nargs >= 2, else NULL
  Py_ssize_t nargs;
  // contextvars.Context the callback runs in. NULL: an empty context not created yet (the caller
  // had no variable set); context_of() creates it on first use.
  PyObject* context;
  LoopObject* loop;            // strong reference, like asyncio.Handle._loop
  PyObject* repr;              // repr frozen at cancel() time in debug mode (asyncio does the same)
  PyObject* source_traceback;  // debug mode only: where the handle was created
  PyObject* weakreflist;
  bool cancelled;
  bool is_timer;
  bool repeating;  // add_reader/add_writer handles run many times; the others run once
};
// 96 bytes, pymalloc's 96-byte class: a burst of call_soon_threadsafe allocates tens of thousands
// of handles at once, and every 16 bytes are fresh pages the producer faults in.
static_assert(sizeof(HandleObject) <= 96, "keep handles in pymalloc's 96-byte class");

// A callback scheduled by call_later/call_at: asyncio.TimerHandle's contract (when(),
// ordering by `when`, hash(when)).
// 160 bytes, kept small on purpose: creating 50k timers measured ~10% slower at 192 bytes (a
// padded build), from memory traffic alone. "Scheduled" is timer.where != TimerQueue::kNone.
struct TimerHandleObject {
  HandleObject base;
  TimerEntry timer;  // timer.when: the loop.time() deadline, seconds (exactly as given)
};
static_assert(sizeof(TimerHandleObject) <= 160, "keep timer handles in pymalloc's 160-byte class");

extern PyTypeObject HandleType;
extern PyTypeObject TimerHandleType;
extern PyTypeObject LoopCoreType;

// Interned names and cached callables, filled once by module init (module.cpp) and by
// tideloop/_loop.py through _tideloop._init_helpers().
struct ModuleState {
  PyObject* str_context;
  PyObject* str_loop;
  PyObject* str_call_exception_handler;
  PyObject* str_firstiter;
  PyObject* str_finalizer;
  PyObject* str_asyncgen_firstiter_hook;
  PyObject* str_asyncgen_finalizer_hook;
  PyObject* str_set_coroutine_origin_tracking;
  PyObject* str_slow_callback_duration;
  PyObject* str_handle_signal;
  PyObject* str_warn_on_full_buffer;
  PyObject* str_cancelled;
  PyObject* str_set_result;
  PyObject* str_set_exception;
  PyObject* kwnames_context;     // ("context",)
  PyObject* kwnames_loop;        // ("loop",)
  PyObject* kwnames_agen_hooks;  // ("firstiter", "finalizer")
  PyObject* kwnames_wakeup;      // ("warn_on_full_buffer",)
  PyObject* future_type;         // _asyncio.Future
  PyObject* get_running_loop;    // _asyncio._get_running_loop
  PyObject* set_running_loop;    // _asyncio._set_running_loop
  PyObject* sys_get_asyncgen_hooks;
  PyObject* sys_set_asyncgen_hooks;
  PyObject* signal_set_wakeup_fd;
  // Python helpers from tideloop/_loop.py (NULL until _init_helpers ran):
  PyObject* h_callback_exception;  // (handle, exc) -> calls loop.call_exception_handler
  PyObject* h_handle_repr;         // (handle) -> str
  PyObject* h_extract_stack;       // () -> list, the caller's stack (debug mode)
  PyObject* h_check_callback;      // (callback, method) -> raises TypeError (debug mode)
  PyObject* h_log_slow_callback;   // (handle, seconds)
};
extern ModuleState g;

// --- module.cpp: init helpers of every room -----------------------------------------------
// module.name, a new reference (NULL with an exception).
PyObject* import_attr(const char* module, const char* name);
// *slot = the interned string s; -1 with an exception.
int intern(PyObject** slot, const char* s);

// Test-visible counters (see _tideloop._debug_stats()). Native threads update them.
struct DebugCounters;
DebugCounters& debug_counters();

// --- handles/handle.cpp -------------------------------------------------------------------------
int handle_types_ready();
// Creates a handle owning new references to callback/args/context. `context` may be NULL or
// None (then the current context is copied, as asyncio does). Returns NULL with an exception.
HandleObject* handle_new(PyObject* callback, PyObject* const* args, Py_ssize_t nargs,
                         PyObject* context, LoopObject* loop);
TimerHandleObject* timer_handle_new(double when, PyObject* callback, PyObject* const* args,
                                    Py_ssize_t nargs, PyObject* context, LoopObject* loop);
// Runs the callback in its context. Returns 0 when the loop may go on (an ordinary exception was
// given to the exception handler) and -1 with an exception set when it must propagate
// (SystemExit, KeyboardInterrupt, or a failure of the exception handler itself).
int handle_run(HandleObject* h);
// The handle's context (borrowed), created now if it was left for later; NULL with an exception.
PyObject* context_of(HandleObject* h);
// Drops callback and arguments (after a one-shot handle ran while someone else still holds it).
void handle_release_callback(HandleObject* h);

// --- loop/loop.cpp ----------------------------------------------------------------------
int loop_type_ready();
bool loop_debug(LoopObject* loop);

// --- handles/timer.cpp ------------------------------------------------------------------
// A scheduled timer was cancelled: the loop unlinks it (O(1)) and drops its reference.
void loop_timer_cancelled(LoopObject* loop, TimerHandleObject* t);
// A timer handle is being deallocated: the loop forgets it (TimerQueue::forget).
void loop_timer_forget(LoopObject* loop, TimerHandleObject* t);

// --- loop/clock.cpp ---------------------------------------------------------------------
double monotonic_now();  // loop.time(): time.monotonic() (+ the test clock offset)
std::int64_t clock_offset_ns();
void set_clock_offset_ns(std::int64_t ns);

// --- native/executor.cpp ----------------------------------------------------------------
// Submits func(*args) to the native blocking pool; returns an asyncio future of `loop`.
// Completions come back as inbox nodes with their own deliver/discard functions.
PyObject* executor_submit(LoopObject* loop, PyObject* func, PyObject* args);
// Shuts the native pool down (GIL held; released while joining). Called at interpreter exit.
void executor_shutdown_pool();
PyObject* executor_debug_stats();
// Test hook: keep-alive of idle pool threads, effective only before the pool is created.
bool executor_set_keep_alive_ms(long ms);
void executor_debug_reset();
PyObject* debug_probe_native_without_gil();

}  // namespace tideloop::bridge
