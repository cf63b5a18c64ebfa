// Thread parking for the channels' blocking_* calls: a thin layer over the
// per-thread SharedParker that JoinHandle::join() also uses, so every blocking
// wait in the runtime sleeps on the same futex.
#include "tideloop/sync/internal/thread_park.hpp"

#include "scheduler/parker.hpp"

namespace tideloop::internal {

const void* current_thread_waker_key() noexcept {
  return current_thread_parker();
}

void park_current_thread() noexcept {
  current_thread_parker()->parker.park();
}

}  // namespace tideloop::internal
