// The async synchronisation primitives, in one include:
//   tideloop::oneshot   one value from one task (or thread) to another
//   tideloop::mpsc      multi-producer single-consumer FIFO channels, bounded
//                       (back-pressure) and unbounded
//   tideloop::Notify    wake one waiter (or store a permit) / wake all waiters
//   tideloop::Mutex<T>  an async lock held across co_await (AsyncMutex: no data)
// All are usable from tasks on either runtime flavour, and through their
// blocking_* members from plain threads. See each header for contracts,
// thread-safety and costs.
#pragma once

#include "tideloop/sync/mpsc.hpp"
#include "tideloop/sync/mutex.hpp"
#include "tideloop/sync/notify.hpp"
#include "tideloop/sync/oneshot.hpp"
