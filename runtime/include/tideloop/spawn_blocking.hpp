// spawn_blocking: run a blocking function (file I/O, a C library that
// sleeps, CPU-heavy work) on the runtime's blocking pool, never on a worker.
//
//   auto h = tideloop::spawn_blocking([] { return read_whole_file("x"); });
//   std::string s = co_await h;                  // or h.join() off-runtime
//
// The pool (tideloop/blocking.hpp) starts threads on demand up to
// RuntimeConfig::max_blocking_threads (512) and reaps them after 10 s idle.
// The JoinHandle behaves like a spawned task's: it yields the function's
// value or rethrows its exception. abort() only cancels a job that has not
// started; a running function cannot be interrupted and always runs to its
// end (runtime shutdown waits for it, like Tokio). Jobs still queued when the
// runtime shuts down are dropped and their handles report TaskCancelled.
// Inside the function, Handle::current() and tideloop::spawn() target the
// runtime that spawned it.
#pragma once

#include <type_traits>
#include <utility>

#include "tideloop/join_handle.hpp"
#include "tideloop/runtime.hpp"
#include "tideloop/task.hpp"

namespace tideloop {

namespace internal {
Scheduler* blocking_scheduler(RuntimeCore* core);
void blocking_spawn(RuntimeCore* core, TaskHeader* t);

template <class F>
auto spawn_blocking_on(RuntimeCore* core, F&& f) {
  using Fn = std::decay_t<F>;
  using R = std::invoke_result_t<Fn&>;
  static_assert(!IsTask<R>::value, "spawn_blocking() runs plain functions; spawn() runs tasks");
  auto* cell = new FnCell<Fn, R>(blocking_scheduler(core), Fn(std::forward<F>(f)));
  blocking_spawn(core, cell);
  return JoinHandle<R>(cell);
}
}  // namespace internal

// Runs `f` on the blocking pool of the calling task's runtime. Throws
// std::logic_error outside a runtime.
template <class F>
requires std::is_invocable_v < std::decay_t<F>
& > auto spawn_blocking(F&& f) {
  return internal::spawn_blocking_on(internal::current_core_or_throw(), std::forward<F>(f));
}

}  // namespace tideloop
