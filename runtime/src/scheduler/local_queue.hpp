// LocalQueue: a worker's bounded run queue. Only the owning worker pushes and
// pops; any other worker may steal half of it. Written by hand (not a library
// queue) because work stealing needs "steal half in one claim": a thief claims
// a batch with one CAS on `head`, copies it out, then publishes. No oneTBB/absl
// container offers that. Same algorithm family as Tokio's queue.rs.
//
// head packs two 32-bit positions: `steal` (where an in-progress steal began)
// and `real` (the next slot to pop). steal == real when nobody is stealing.
// Positions wrap at 2^32; slot = position & kMask.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "scheduler/injector.hpp"
#include "tideloop/internal/task_core.hpp"

namespace tideloop::internal {

#ifdef TIDELOOP_LOCAL_QUEUE_CAPACITY
inline constexpr std::uint32_t kLocalQueueCapacity = TIDELOOP_LOCAL_QUEUE_CAPACITY;
#else
// Tokio's choice: big enough that overflow to the injector is rare, small
// enough that stealing half is cheap. Tests shrink it to exercise wrap-around
// and overflow.
inline constexpr std::uint32_t kLocalQueueCapacity = 256;
#endif
static_assert((kLocalQueueCapacity & (kLocalQueueCapacity - 1)) == 0 && kLocalQueueCapacity >= 4,
              "capacity must be a power of two >= 4");

class LocalQueue {
 public:
  static constexpr std::uint32_t kMask = kLocalQueueCapacity - 1;

  // Owner only. On a full queue moves half of it plus `t` to the injector.
  // Returns true if an overflow happened.
  bool push_back(TaskHeader* t, Injector& inject) noexcept {
    for (;;) {
      const std::uint64_t head = head_.load(std::memory_order_acquire);
      const std::uint32_t steal = unpack_steal(head);
      const std::uint32_t real = unpack_real(head);
      const std::uint32_t tail = tail_.load(std::memory_order_relaxed);  // only we write it
      if (tail - steal < kLocalQueueCapacity) {
        buffer_[tail & kMask].store(t, std::memory_order_relaxed);
        tail_.store(tail + 1, std::memory_order_release);
        return false;
      }
      if (steal != real) {
        // A thief is mid-copy and will free space; don't wait for it.
        inject.push(t);
        return true;
      }
      if (push_overflow(t, real, tail, inject)) return true;
      // Lost a race with a thief: retry, there is room now.
    }
  }

  // Owner only.
  TaskHeader* pop() noexcept {
    std::uint64_t head = head_.load(std::memory_order_acquire);
    for (;;) {
      const std::uint32_t steal = unpack_steal(head);
      const std::uint32_t real = unpack_real(head);
      const std::uint32_t tail = tail_.load(std::memory_order_relaxed);
      if (real == tail) return nullptr;
      const std::uint32_t next_real = real + 1;
      const std::uint64_t next =
          steal == real ? pack(next_real, next_real) : pack(steal, next_real);
      if (head_.compare_exchange_weak(head, next, std::memory_order_acq_rel,
                                      std::memory_order_acquire)) {
        // Start loading the next task while this one runs: a burst of
        // thousands of queued tasks no longer fits in L2, and each would
        // otherwise stall on its header and frame (measured: spawn_many_local/2
        // 204 -> 167 ns, where a thief runs tasks another core wrote).
        // A stale peek (a thief took it) only wastes the prefetch.
        if (next_real != tail)
          prefetch_task(buffer_[next_real & kMask].load(std::memory_order_relaxed));
        return buffer_[real & kMask].load(std::memory_order_relaxed);
      }
    }
  }

  // Owner only, and only when no thread ever steals from this queue (a
  // runtime with one worker): pop() without the CAS, which would wait for the
  // store buffer to drain (yield_many/1: 32.5 -> 27.6 ns per yield). Other
  // threads only read head_ (len(), is_empty()).
  TaskHeader* pop_unshared() noexcept {
    const std::uint64_t head = head_.load(std::memory_order_relaxed);
    const std::uint32_t real = unpack_real(head);
    const std::uint32_t tail = tail_.load(std::memory_order_relaxed);
    if (real == tail) return nullptr;
    const std::uint32_t next_real = real + 1;
    head_.store(pack(next_real, next_real), std::memory_order_release);
    if (next_real != tail)
      prefetch_task(buffer_[next_real & kMask].load(std::memory_order_relaxed));
    return buffer_[real & kMask].load(std::memory_order_relaxed);
  }

  // Any thread: moves about half of this queue into `dst` (owned by the
  // caller) and returns one task to run, or null.
  TaskHeader* steal_into(LocalQueue& dst, std::uint32_t* moved) noexcept {
    const std::uint32_t dst_tail = dst.tail_.load(std::memory_order_relaxed);
    const std::uint32_t dst_steal = unpack_steal(dst.head_.load(std::memory_order_acquire));
    if (dst_tail - dst_steal > kLocalQueueCapacity / 2) return nullptr;  // dst is busy enough
    std::uint32_t n = steal_into2(dst, dst_tail);
    if (n == 0) return nullptr;
    *moved = n;
    --n;
    TaskHeader* ret = dst.buffer_[(dst_tail + n) & kMask].load(std::memory_order_relaxed);
    if (n > 0) dst.tail_.store(dst_tail + n, std::memory_order_release);
    return ret;
  }

  // Any thread; approximate.
  bool is_empty() const noexcept { return len() == 0; }
  std::uint32_t len() const noexcept {
    const std::uint64_t head = head_.load(std::memory_order_acquire);
    return tail_.load(std::memory_order_acquire) - unpack_real(head);
  }
  // Owner only: true when there is something to pop.
  bool has_tasks() const noexcept { return len() > 0; }

 private:
  // A task block's first three lines: header, output, frame prefix and the
  // start of a small coroutine frame.
  static void prefetch_task(const TaskHeader* t) noexcept {
    const char* p = reinterpret_cast<const char*>(t);
    __builtin_prefetch(p, 1);
    __builtin_prefetch(p + 64, 1);
    __builtin_prefetch(p + 128, 1);
  }
  static std::uint32_t unpack_steal(std::uint64_t h) { return static_cast<std::uint32_t>(h >> 32); }
  static std::uint32_t unpack_real(std::uint64_t h) { return static_cast<std::uint32_t>(h); }
  static std::uint64_t pack(std::uint32_t steal, std::uint32_t real) {
    return (static_cast<std::uint64_t>(steal) << 32) | real;
  }

  bool push_overflow(TaskHeader* t, std::uint32_t head, std::uint32_t tail,
                     Injector& inject) noexcept {
    constexpr std::uint32_t kHalf = kLocalQueueCapacity / 2;
    (void)tail;
    // Claim the first half for ourselves (no thief is active: steal == real).
    std::uint64_t prev = pack(head, head);
    if (!head_.compare_exchange_strong(prev, pack(head + kHalf, head + kHalf),
                                       std::memory_order_release, std::memory_order_relaxed)) {
      return false;
    }
    // The claimed tasks and `t` go to the injector as one batch of pointers
    // (the task headers themselves are not touched).
    TaskHeader* batch[kHalf + 1];
    for (std::uint32_t i = 0; i < kHalf; ++i)
      batch[i] = buffer_[(head + i) & kMask].load(std::memory_order_relaxed);
    batch[kHalf] = t;
    inject.push_n(batch, kHalf + 1);
    return true;
  }

  std::uint32_t steal_into2(LocalQueue& dst, std::uint32_t dst_tail) noexcept {
    std::uint64_t prev = head_.load(std::memory_order_acquire);
    std::uint64_t next;
    std::uint32_t n;
    for (;;) {
      const std::uint32_t src_steal = unpack_steal(prev);
      const std::uint32_t src_real = unpack_real(prev);
      if (src_steal != src_real) return 0;  // another thief is at work
      const std::uint32_t src_tail = tail_.load(std::memory_order_acquire);
      n = src_tail - src_real;
      n -= n / 2;
      if (n == 0) return 0;
      next = pack(src_steal, src_real + n);
      if (head_.compare_exchange_weak(prev, next, std::memory_order_acq_rel,
                                      std::memory_order_acquire))
        break;
    }
    const std::uint32_t first = unpack_steal(next);
    for (std::uint32_t i = 0; i < n; ++i) {
      TaskHeader* x = buffer_[(first + i) & kMask].load(std::memory_order_relaxed);
      dst.buffer_[(dst_tail + i) & kMask].store(x, std::memory_order_relaxed);
    }
    // Publish: our claimed range is done; let the owner reuse those slots.
    prev = next;
    for (;;) {
      const std::uint32_t real = unpack_real(prev);
      if (head_.compare_exchange_weak(prev, pack(real, real), std::memory_order_acq_rel,
                                      std::memory_order_acquire))
        return n;
    }
  }

  alignas(64) std::atomic<std::uint64_t> head_{0};
  alignas(64) std::atomic<std::uint32_t> tail_{0};
  // Slots are atomics only so that the race detector sees the hand-offs; all
  // ordering comes from head_/tail_ (relaxed slot access costs nothing on x86).
  alignas(64) std::atomic<TaskHeader*> buffer_[kLocalQueueCapacity] = {};
};

}  // namespace tideloop::internal
