// AsyncMutex: a lock word for the uncontended path plus a FIFO of waiters
// under a small mutex. See tideloop/sync/mutex.hpp for the contract.
//
// Protocol. state_ is kUnlocked, kLocked or kLockedWaiters. The fast paths are
// one CAS each: lock kUnlocked->kLocked, unlock kLocked->kUnlocked. Every
// transition into or out of kLockedWaiters happens under mu_, and under mu_
// (while locked) state_ == kLockedWaiters exactly when waiters_ is non-empty.
// Unlocking with waiters hands the lock to the oldest waiter without ever
// passing through kUnlocked, so nobody can barge in.
#include "tideloop/sync/mutex.hpp"

#include "tideloop/sync/internal/thread_park.hpp"

namespace tideloop {

using internal::WaitNode;

bool AsyncMutex::acquire_or_enqueue(WaitNode* node, const void* key, Waker (*make)(void*),
                                    void* arg) {
  internal::SyncLock l(&mu_);
  std::uint32_t cur = state_.load(std::memory_order_relaxed);
  for (;;) {
    if (cur == kUnlocked) {
      if (state_.compare_exchange_weak(cur, kLocked, std::memory_order_acquire,
                                       std::memory_order_relaxed))
        return true;
    } else if (cur == kLocked) {
      // The holder may unlock (kLocked->kUnlocked) concurrently; whoever
      // wins, we retry with the new value.
      if (state_.compare_exchange_weak(cur, kLockedWaiters, std::memory_order_relaxed,
                                       std::memory_order_relaxed))
        break;
    } else {
      break;  // kLockedWaiters: only changes under mu_, which we hold
    }
  }
  node->waker = make(arg);
  node->key = key;
  node->state.store(WaitNode::kWaiting, std::memory_order_relaxed);
  waiters_.push_back(node);
  return false;
}

void AsyncMutex::update_waker(WaitNode* node, const void* key, Waker waker) {
  internal::SyncLock l(&mu_);
  if (node->state.load(std::memory_order_relaxed) != WaitNode::kWaiting) return;
  node->waker = std::move(waker);
  node->key = key;
}

bool AsyncMutex::cancel(WaitNode* node) noexcept {
  if (node->state.load(std::memory_order_acquire) == kGranted) return true;
  internal::SyncLock l(&mu_);
  if (node->state.load(std::memory_order_relaxed) != WaitNode::kWaiting) return true;
  waiters_.remove(node);
  node->waker.reset();
  node->state.store(WaitNode::kIdle, std::memory_order_relaxed);
  // Still locked by someone else; with no waiters left, drop the flag.
  if (waiters_.empty()) state_.store(kLocked, std::memory_order_relaxed);
  return false;
}

void AsyncMutex::unlock() noexcept {
  std::uint32_t expected = kLocked;
  if (state_.compare_exchange_strong(expected, kUnlocked, std::memory_order_release,
                                     std::memory_order_relaxed))
    return;
  unlock_slow();
}

void AsyncMutex::unlock_slow() noexcept {
  Waker w;
  {
    internal::SyncLock l(&mu_);
    WaitNode* next = waiters_.pop_front();
    if (next == nullptr) {
      // The last waiter cancelled after our fast path failed.
      state_.store(kUnlocked, std::memory_order_release);
      return;
    }
    if (waiters_.empty()) state_.store(kLocked, std::memory_order_relaxed);
    // The lock now belongs to `next`; complete() publishes that with a
    // release store, so our critical section happens-before its.
    w = next->complete(kGranted);
  }
  w.wake();
}

AsyncMutex::LockAwaiter::~LockAwaiter() {
  if (taken_) return;
  bool owns = acquired_;
  if (!owns && queued_) owns = m_->cancel(&node_);
  // Handed the lock but cancelled before using it: pass it on.
  if (owns) m_->unlock();
}

bool AsyncMutex::LockAwaiter::poll_ready(internal::TaskHeader* self) {
  if (acquired_) return true;
  if (!internal::coop_poll_proceed(self)) return false;
  if (!queued_) {
    if (m_->try_acquire() ||
        m_->acquire_or_enqueue(
            &node_, self, [](void* t) { return static_cast<internal::TaskHeader*>(t)->waker(); },
            self)) {
      acquired_ = true;
      internal::coop_spend();
      return true;
    }
    queued_ = true;
    return false;
  }
  if (node_.state.load(std::memory_order_acquire) == kGranted) {
    acquired_ = true;
    internal::coop_spend();
    return true;
  }
  if (node_.key != self) m_->update_waker(&node_, self, self->waker());
  return false;
}

AsyncMutex::Guard AsyncMutex::blocking_lock() {
  internal::assert_not_in_task(
      "AsyncMutex: blocking_lock() called from inside a task; co_await lock()");
  if (try_acquire()) return Guard(this);
  WaitNode node;
  if (acquire_or_enqueue(
          &node, internal::current_thread_waker_key(),
          [](void*) { return internal::thread_waker(); }, nullptr))
    return Guard(this);
  while (node.state.load(std::memory_order_acquire) != kGranted) internal::park_current_thread();
  return Guard(this);
}

}  // namespace tideloop
