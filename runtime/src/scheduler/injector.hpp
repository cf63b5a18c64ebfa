// Injector: the runtime-wide FIFO for spawns and wake-ups that come from
// outside a worker, and for local-queue overflow. A queue of fixed-size
// segments (arrays of task pointers) under a mutex.
//
// Why segments and not an intrusive list through the tasks: an overflow moves
// half a local queue (128 tasks) at once, and a burst of thousands of spawned
// tasks is far larger than the caches. Linking them would write every task
// header on overflow and read it again on pop, a cache miss each; copying
// pointers touches only the segment. Measured on spawn_many_local/1: the
// intrusive list's pop was a quarter of the profile.
//
// Pushes are rare relative to local-queue traffic (workers look here every
// `global_queue_interval` ticks or when idle), and the atomic length lets
// idle checks skip the lock.
#pragma once

#include <atomic>
#include <cstdint>

#include "tideloop/internal/annotated_mutex.hpp"
#include "tideloop/internal/task_core.hpp"

namespace tideloop::internal {

class Injector {
 public:
  Injector() = default;
  Injector(const Injector&) = delete;
  Injector& operator=(const Injector&) = delete;
  ~Injector() {
    free_segments(head_);
    delete spare_;
  }

  // Once closed, pushed notifications are dropped (the tasks were already
  // cancelled by shutdown) and false is returned.
  bool push(TaskHeader* t) noexcept { return push_n(&t, 1); }

  bool push_n(TaskHeader* const* ts, std::size_t n) noexcept {
    UniqueLock g(mu_);
    if (closed_) {
      g.unlock();
      for (std::size_t i = 0; i < n; ++i) drop_notified(ts[i]);
      return false;
    }
    for (std::size_t i = 0; i < n;) {
      if (tail_ == nullptr || tail_->end == kSegmentCap) append_segment();
      const std::size_t k = std::min<std::size_t>(n - i, kSegmentCap - tail_->end);
      for (std::size_t j = 0; j < k; ++j) tail_->items[tail_->end + j] = ts[i + j];
      tail_->end += static_cast<std::uint32_t>(k);
      i += k;
    }
    len_.store(len_.load(std::memory_order_relaxed) + n, std::memory_order_release);
    return true;
  }

  TaskHeader* pop() noexcept {
    TaskHeader* t = nullptr;
    return pop_n(&t, 1) ? t : nullptr;
  }

  // Pops up to `max` tasks (FIFO) into out[]; returns how many.
  std::size_t pop_n(TaskHeader** out, std::size_t max) noexcept {
    if (is_empty()) return 0;
    LockGuard<StdMutex> g(mu_);
    std::size_t n = 0;
    while (n < max && head_ != nullptr) {
      Segment* s = head_;
      const std::size_t k = std::min<std::size_t>(max - n, s->end - s->begin);
      for (std::size_t j = 0; j < k; ++j) out[n + j] = s->items[s->begin + j];
      s->begin += static_cast<std::uint32_t>(k);
      n += k;
      if (s->begin == s->end) {
        if (s == tail_) {
          s->begin = s->end = 0;  // keep the last segment, now empty
          break;
        }
        head_ = s->next;
        recycle(s);
      }
    }
    len_.store(len_.load(std::memory_order_relaxed) - n, std::memory_order_release);
    return n;
  }

  bool is_empty() const noexcept { return len_.load(std::memory_order_acquire) == 0; }
  std::size_t len() const noexcept { return len_.load(std::memory_order_acquire); }

  // Returns true for the call that closed it.
  bool close() noexcept {
    LockGuard<StdMutex> g(mu_);
    if (closed_) return false;
    closed_ = true;
    closed_flag_.store(true, std::memory_order_release);
    return true;
  }
  bool is_closed() const noexcept { return closed_flag_.load(std::memory_order_acquire); }

  // Drops every queued notification (shutdown; works when closed too).
  void drain_and_drop() noexcept {
    TaskHeader* batch[64];
    for (;;) {
      std::size_t n;
      {
        LockGuard<StdMutex> g(mu_);
        n = 0;
        while (n < 64 && head_ != nullptr) {
          Segment* s = head_;
          while (n < 64 && s->begin < s->end) batch[n++] = s->items[s->begin++];
          if (s->begin == s->end) {
            if (s == tail_) {
              s->begin = s->end = 0;
              break;
            }
            head_ = s->next;
            recycle(s);
          }
        }
        len_.store(len_.load(std::memory_order_relaxed) - n, std::memory_order_release);
      }
      if (n == 0) return;
      for (std::size_t i = 0; i < n; ++i) drop_notified(batch[i]);
    }
  }

 private:
  static constexpr std::uint32_t kSegmentCap = 256;
  struct Segment {
    Segment* next = nullptr;
    std::uint32_t begin = 0;
    std::uint32_t end = 0;
    TaskHeader* items[kSegmentCap];
  };

  void append_segment() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Segment* s = spare_ ? std::exchange(spare_, nullptr) : new Segment();
    s->next = nullptr;
    s->begin = s->end = 0;
    if (tail_) {
      tail_->next = s;
    } else {
      head_ = s;
    }
    tail_ = s;
  }
  void recycle(Segment* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (spare_ == nullptr) {
      spare_ = s;
    } else {
      delete s;
    }
  }
  static void free_segments(Segment* s) {
    while (s) delete std::exchange(s, s->next);
  }

  StdMutex mu_;
  Segment* head_ ABSL_GUARDED_BY(mu_) = nullptr;
  Segment* tail_ ABSL_GUARDED_BY(mu_) = nullptr;
  Segment* spare_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<std::size_t> len_{0};
  std::atomic<bool> closed_flag_{false};
};

}  // namespace tideloop::internal
