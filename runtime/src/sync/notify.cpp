// Notify: a permit flag and a FIFO of waiters under one mutex. See
// tideloop/sync/notify.hpp for the contract.
#include "tideloop/sync/notify.hpp"

#include <vector>

namespace tideloop {

using internal::WaitNode;

Waker Notify::notify_one_locked() {
  if (WaitNode* n = waiters_.pop_front()) return n->complete(kNotifiedOne);
  permit_ = true;
  return Waker();
}

void Notify::notify_one() {
  Waker w;
  {
    internal::SyncLock l(&mu_);
    w = notify_one_locked();
  }
  w.wake();
}

void Notify::notify_waiters() {
  std::vector<Waker> wake;
  {
    internal::SyncLock l(&mu_);
    generation_.fetch_add(1, std::memory_order_release);
    while (WaitNode* n = waiters_.pop_front()) wake.push_back(n->complete(kNotifiedAll));
  }
  for (Waker& w : wake) w.wake();
}

bool Notify::start_waiting(Notified* w, internal::TaskHeader* self) {
  internal::SyncLock l(&mu_);
  // A broadcast since the future was created counts (without using up the
  // permit, which stays for the next waiter).
  if (generation_.load(std::memory_order_relaxed) != w->generation_) return true;
  if (permit_) {
    permit_ = false;
    return true;
  }
  w->node_.waker = self->waker();
  w->node_.key = self;
  w->node_.state.store(WaitNode::kWaiting, std::memory_order_relaxed);
  waiters_.push_back(&w->node_);
  return false;
}

void Notify::update_waker(Notified* w, internal::TaskHeader* self) {
  internal::SyncLock l(&mu_);
  if (w->node_.state.load(std::memory_order_relaxed) != WaitNode::kWaiting) return;
  w->node_.waker = self->waker();
  w->node_.key = self;
}

void Notify::cancel(Notified* w) noexcept {
  Waker forward;
  {
    internal::SyncLock l(&mu_);
    const std::uint32_t st = w->node_.state.load(std::memory_order_relaxed);
    if (st == WaitNode::kWaiting) {
      waiters_.remove(&w->node_);
      w->node_.waker.reset();
      w->node_.state.store(WaitNode::kIdle, std::memory_order_relaxed);
      return;
    }
    // Picked by notify_one() but never completed: pass it on.
    if (st == kNotifiedOne && !w->done_) forward = notify_one_locked();
  }
  forward.wake();
}

Notify::Notified::~Notified() {
  if (queued_ && !done_) notify_->cancel(this);
}

bool Notify::Notified::poll_ready(internal::TaskHeader* self) {
  if (done_) return true;
  if (!internal::coop_poll_proceed(self)) return false;
  if (!queued_) {
    if (notify_->start_waiting(this, self)) {
      done_ = true;
      internal::coop_spend();
      return true;
    }
    queued_ = true;
    return false;
  }
  const std::uint32_t st = node_.state.load(std::memory_order_acquire);
  if (st == kNotifiedOne || st == kNotifiedAll) {
    done_ = true;
    internal::coop_spend();
    return true;
  }
  if (node_.key != self) notify_->update_waker(this, self);
  return false;
}

}  // namespace tideloop
