// Injector: the runtime-wide FIFO for spawns and wake-ups that come from
// outside a worker, and for local-queue overflow. An intrusive list under a
// mutex: pushes are rare relative to local-queue traffic (workers poll it
// every `global_queue_interval` ticks or when idle), and the atomic length
// lets idle checks skip the lock.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>

#include "tideloop/internal/task_core.hpp"

namespace tideloop::internal {

class Injector {
 public:
  // Once closed, pushed notifications are dropped (the tasks were already
  // cancelled by shutdown) and false is returned.
  bool push(TaskHeader* t) noexcept {
    t->queue_next = nullptr;
    return push_batch(t, t, 1);
  }
  // Pushes the linked list first..last (n tasks). Returns false once closed.
  bool push_batch(TaskHeader* first, TaskHeader* last, std::size_t n) noexcept {
    last->queue_next = nullptr;
    std::unique_lock<std::mutex> g(mu_);
    if (closed_) {
      g.unlock();
      for (TaskHeader* t = first; t != nullptr;) {
        TaskHeader* nx = t->queue_next;
        drop_notified(t);
        t = nx;
      }
      return false;
    }
    if (tail_) {
      tail_->queue_next = first;
    } else {
      head_ = first;
    }
    tail_ = last;
    len_.store(len_.load(std::memory_order_relaxed) + n, std::memory_order_release);
    return true;
  }
  TaskHeader* pop() noexcept {
    if (is_empty()) return nullptr;
    std::lock_guard<std::mutex> g(mu_);
    return pop_locked();
  }
  // Pops up to `max` tasks into out[]; returns how many.
  std::size_t pop_n(TaskHeader** out, std::size_t max) noexcept {
    if (is_empty()) return 0;
    std::lock_guard<std::mutex> g(mu_);
    std::size_t n = 0;
    while (n < max) {
      TaskHeader* t = pop_locked();
      if (!t) break;
      out[n++] = t;
    }
    return n;
  }
  bool is_empty() const noexcept { return len_.load(std::memory_order_acquire) == 0; }
  std::size_t len() const noexcept { return len_.load(std::memory_order_acquire); }
  // Returns true for the call that closed it.
  bool close() noexcept {
    std::lock_guard<std::mutex> g(mu_);
    if (closed_) return false;
    closed_ = true;
    closed_flag_.store(true, std::memory_order_release);
    return true;
  }
  bool is_closed() const noexcept { return closed_flag_.load(std::memory_order_acquire); }
  // Takes everything (for draining at shutdown, even when closed).
  TaskHeader* take_all() noexcept {
    std::lock_guard<std::mutex> g(mu_);
    TaskHeader* h = head_;
    head_ = tail_ = nullptr;
    len_.store(0, std::memory_order_release);
    return h;
  }

 private:
  TaskHeader* pop_locked() noexcept {
    TaskHeader* t = head_;
    if (!t) return nullptr;
    head_ = t->queue_next;
    if (!head_) tail_ = nullptr;
    t->queue_next = nullptr;
    len_.store(len_.load(std::memory_order_relaxed) - 1, std::memory_order_release);
    return t;
  }

  std::mutex mu_;
  TaskHeader* head_ = nullptr;  // guarded by mu_
  TaskHeader* tail_ = nullptr;  // guarded by mu_
  bool closed_ = false;         // guarded by mu_
  std::atomic<std::size_t> len_{0};
  std::atomic<bool> closed_flag_{false};
};

}  // namespace tideloop::internal
