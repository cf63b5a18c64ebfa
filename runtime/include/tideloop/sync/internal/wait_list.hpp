// WaitList: the intrusive FIFO of parked waiters that the lock-based sync
// primitives (mpsc senders on a full channel, Notify, Mutex) share. Not part of
// the public API; names here may change.
//
// A WaitNode lives inside the waiter's awaiter (so inside the waiting task's
// coroutine frame) or on a blocked thread's stack: no allocation per wait.
// Every field except `state` and `key` is guarded by the owning primitive's lock. A
// waker takes the node off the list, moves its Waker out and only then
// publishes the outcome in `state` (release); after that store it never
// touches the node again, so the waiter may read `state` without the lock
// (acquire) and destroy the node as soon as it sees a final value.
#pragma once

#include <atomic>
#include <cstdint>

#include "tideloop/waker.hpp"

namespace tideloop::internal {

struct WaitNode {
  // Lifecycle, written under the primitive's lock. Final values are the
  // primitive's own (granted, closed...), any value other than kIdle and
  // kWaiting.
  static constexpr std::uint32_t kIdle = 0;     // not queued
  static constexpr std::uint32_t kWaiting = 1;  // on the list
  std::atomic<std::uint32_t> state{kIdle};
  WaitNode* prev = nullptr;
  WaitNode* next = nullptr;
  Waker waker;
  // Identity of the task (or thread parker) `waker` wakes; lets a re-poll by
  // the same task skip replacing it. Written only by the waiter (under the
  // lock), so the waiter may read it without the lock; wakers never touch it.
  const void* key = nullptr;

  // Under the lock: hands the node its outcome. Returns the waker to call
  // after the lock is released.
  Waker complete(std::uint32_t outcome) noexcept {
    Waker w = std::move(waker);
    state.store(outcome, std::memory_order_release);
    return w;
  }
};

// Doubly linked FIFO of WaitNodes. All operations O(1); guarded by the
// owning primitive's lock.
class WaitList {
 public:
  bool empty() const noexcept { return head_ == nullptr; }
  WaitNode* front() const noexcept { return head_; }

  void push_back(WaitNode* n) noexcept {
    n->next = nullptr;
    n->prev = tail_;
    if (tail_ != nullptr) {
      tail_->next = n;
    } else {
      head_ = n;
    }
    tail_ = n;
  }

  WaitNode* pop_front() noexcept {
    WaitNode* n = head_;
    if (n != nullptr) remove(n);
    return n;
  }

  void remove(WaitNode* n) noexcept {
    if (n->prev != nullptr) {
      n->prev->next = n->next;
    } else {
      head_ = n->next;
    }
    if (n->next != nullptr) {
      n->next->prev = n->prev;
    } else {
      tail_ = n->prev;
    }
    n->prev = n->next = nullptr;
  }

  // Detaches the whole list (for close/notify-all); walk it with `next`.
  WaitNode* take_all() noexcept {
    WaitNode* h = head_;
    head_ = tail_ = nullptr;
    return h;
  }

 private:
  WaitNode* head_ = nullptr;
  WaitNode* tail_ = nullptr;
};

}  // namespace tideloop::internal
