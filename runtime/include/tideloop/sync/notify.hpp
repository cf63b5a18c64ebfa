// Notify: wakes tasks waiting for an event that carries no data, with Tokio's
// tokio::sync::Notify semantics.
//
//   tideloop::Notify notify;
//   // waiter:                      // notifier:
//   co_await notify.notified();     notify.notify_one();
//
// notify_one() wakes the oldest waiter, or, if nobody waits, stores a single
// permit that the next notified() consumes at once (several notify_one()
// calls with nobody waiting still store one permit). notify_waiters() wakes
// every waiter that exists at that moment and stores no permit. A Notified
// future counts as waiting for notify_waiters() from the moment notified()
// returns it, even before it is first awaited (so "create, check a
// condition, await" cannot miss a broadcast); for notify_one() it waits from
// its first poll.
//
// Thread-safety: every member may be called from any thread. A Notify must
// outlive the Notified futures it created, and cannot be moved or copied.
//
// Implementation: a mutex guarding a permit flag and an intrusive FIFO of
// waiters (nodes inside the Notified futures: no allocation per wait);
// wakers are called after the lock is released.
#pragma once

#include <atomic>
#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "tideloop/internal/task_core.hpp"
#include "tideloop/sync/internal/sync_mutex.hpp"
#include "tideloop/sync/internal/wait_list.hpp"
#include "tideloop/waker.hpp"

namespace tideloop {

class Notify {
 public:
  Notify() = default;
  Notify(const Notify&) = delete;
  Notify& operator=(const Notify&) = delete;
  ~Notify() = default;

  // Wakes the oldest task waiting in notified(); if none waits, stores the
  // permit (at most one) for the next notified() to consume.
  // Complexity: O(1) under the lock, plus one wake.
  void notify_one();

  // Wakes every task currently waiting (and every Notified created but not
  // yet awaited); stores no permit.
  // Complexity: O(waiters) under the lock, plus one wake per waiter.
  void notify_waiters();

  // The future `co_await notify.notified()` waits on. See the header comment
  // for when it starts waiting.
  // Cancel-safe: destroying a waiting Notified withdraws it; destroying one
  // that notify_one() had already picked (but that had not completed yet)
  // passes that notification on to the next waiter or back to the permit, so
  // a cancelled waiter never swallows a notify_one().
  class Notified : public internal::LeafAwaiter<Notified> {
   public:
    explicit Notified(Notify* n) noexcept
        : notify_(n), generation_(n->generation_.load(std::memory_order_acquire)) {}
    Notified(const Notified&) = delete;
    Notified& operator=(const Notified&) = delete;
    ~Notified();
    bool poll_ready(internal::TaskHeader* self) override;
    void await_resume() noexcept {}

   private:
    friend class Notify;
    Notify* notify_;
    // notify_waiters() calls seen when this future was created.
    std::uint64_t generation_;
    internal::WaitNode node_;
    bool queued_ = false;  // node_ was put on the list (it may have left it since)
    bool done_ = false;    // completed: the notification was consumed
  };
  Notified notified() noexcept { return Notified(this); }

 private:
  // Outcomes of a waiter's node.
  static constexpr std::uint32_t kNotifiedOne = 2;
  static constexpr std::uint32_t kNotifiedAll = 3;

  // True when `w` completes at once (a broadcast since its creation, or a
  // stored permit); otherwise it is queued with make_waker's waker.
  bool start_waiting(Notified* w, internal::TaskHeader* self);
  void update_waker(Notified* w, internal::TaskHeader* self);
  void cancel(Notified* w) noexcept;
  // Hands one notification to the oldest waiter or to the permit. Returns the
  // waker to call once the lock is released.
  Waker notify_one_locked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  internal::SyncMutex mu_;
  internal::WaitList waiters_ ABSL_GUARDED_BY(mu_);
  bool permit_ ABSL_GUARDED_BY(mu_) = false;
  // notify_waiters() calls so far; written under mu_, read without it when a
  // Notified is created.
  std::atomic<std::uint64_t> generation_{0};
};

}  // namespace tideloop
