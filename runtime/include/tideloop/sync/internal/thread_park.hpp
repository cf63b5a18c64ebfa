// Blocking the calling thread (not a task) until a Waker fires: what the
// channels' blocking_recv()/blocking_send() use from threads outside the
// runtime. Not part of the public API; names here may change.
#pragma once

#include <stdexcept>

#include "tideloop/internal/task_core.hpp"
#include "tideloop/waker.hpp"

namespace tideloop::internal {

// A waker that unparks the calling thread (defined in task/task_state.cpp).
// Each call adds a reference to this thread's parker.
Waker thread_waker();

// Identity of the waker thread_waker() returns on this thread: two calls on
// the same thread yield equal keys. Stable while any waker of this thread is
// alive (the waker keeps the parker, hence the key, from being reused).
const void* current_thread_waker_key() noexcept;

// Sleeps until this thread's waker fires (returns at once if it already fired
// since the last park). May return spuriously: callers re-check their event.
void park_current_thread() noexcept;

// Throws std::logic_error when called from inside a tideloop task: blocking a
// worker thread would deadlock the tasks it should be running.
inline void assert_not_in_task(const char* what) {
  if (tl_current_task != nullptr) throw std::logic_error(what);
}

}  // namespace tideloop::internal
