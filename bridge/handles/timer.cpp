// call_later/call_at and the glue between TimerHandle objects and the loop's TimerQueue
// (engine/timer_queue.hpp: the runtime's timer wheel with asyncio's ordering rules). The queue
// holds one reference per scheduled timer; cancel() unlinks in O(1) and drops it at once.
#include <cmath>

#include "loop/args.hpp"
#include "loop/loop.hpp"

namespace tideloop::bridge {
namespace {

// asyncio's constants (base_events.py), kept so that behaviour matches.
constexpr double kMaximumSelectTimeout = 24 * 3600;
// time.get_clock_info('monotonic').resolution on Linux: timers due within it count as expired.
constexpr double kClockResolution = 1e-9;

PyObject* schedule_timer(LoopObject* self, double when, PyObject* const* args, Py_ssize_t nargs,
                         PyObject* context, const char* method) {
  if (check_closed(self) < 0) return nullptr;
  if (self->debug && check_thread(self) < 0) return nullptr;
  if (check_callback(self, args[0], method) < 0) return nullptr;
  TimerHandleObject* t = timer_handle_new(when, args[0], args + 1, nargs - 1, context, self);
  if (t == nullptr) return nullptr;
  Py_INCREF(t);
  S(self).timers.insert(&t->timer, when);
  return (PyObject*)t;
}

}  // namespace

// Drops the queue's reference to a timer that left it without running (cancelled).
void drop_timer(TimerEntry* e) {
  Py_DECREF(timer_of(e));
}

void move_expired_timers(LoopObject* self) {
  LoopState& st = S(self);
  if (st.timers.empty()) return;
  double end_time = monotonic_now() + kClockResolution;
  st.timers.collect_due(
      end_time,
      [&](TimerEntry* e) {
        st.ready.push(&timer_of(e)->base);  // the queue's reference moves to the ready queue
      },
      drop_timer);
}

// Nanoseconds until the earliest timer (-1: none), asyncio's clamp to MAXIMUM_SELECT_TIMEOUT.
// Only before a blocking wait: kept out of the tick's hot code.
[[gnu::noinline]] std::int64_t timer_timeout_ns(LoopState& st) {
  if (st.timers.empty()) return -1;
  double dt = st.timers.next_wait(monotonic_now(), drop_timer);
  if (dt < 0) return -1;
  if (dt > kMaximumSelectTimeout) dt = kMaximumSelectTimeout;
  return static_cast<std::int64_t>(std::ceil(dt * 1e9));
}

PyObject* loop_call_later(LoopObject* self, PyObject* const* args, Py_ssize_t nargsf,
                          PyObject* kwnames) {
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  PyObject* context;
  if (parse_call_args("call_later", args, nargs, kwnames, 2,
                      "required arguments 'delay' and 'callback'", &context) < 0)
    return nullptr;
  if (args[0] == Py_None) {
    PyErr_SetString(PyExc_TypeError, "delay must not be None");
    return nullptr;
  }
  double delay;
  if (as_seconds(args[0], &delay) < 0) return nullptr;
  return schedule_timer(self, monotonic_now() + delay, args + 1, nargs - 1, context, "call_later");
}

PyObject* loop_call_at(LoopObject* self, PyObject* const* args, Py_ssize_t nargsf,
                       PyObject* kwnames) {
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  PyObject* context;
  if (parse_call_args("call_at", args, nargs, kwnames, 2,
                      "required arguments 'when' and 'callback'", &context) < 0)
    return nullptr;
  if (args[0] == Py_None) {
    PyErr_SetString(PyExc_TypeError, "when cannot be None");
    return nullptr;
  }
  double when;
  if (as_seconds(args[0], &when) < 0) return nullptr;
  return schedule_timer(self, when, args + 1, nargs - 1, context, "call_at");
}

void loop_timer_forget(LoopObject* loop, TimerHandleObject* t) {
  if (loop->st != nullptr) loop->st->timers.forget(&t->timer);
}

void loop_timer_cancelled(LoopObject* loop, TimerHandleObject* t) {
  if (loop->st == nullptr) return;
  if (loop->st->timers.cancel(&t->timer)) drop_timer(&t->timer);
}

}  // namespace tideloop::bridge
