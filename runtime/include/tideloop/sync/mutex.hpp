// Async mutexes: a lock a task can hold across co_await, Tokio's
// tokio::sync::Mutex.
//
//   tideloop::Mutex<std::vector<int>> m;
//   {
//     auto guard = co_await m.lock();   // waits without blocking the thread
//     guard->push_back(1);
//     co_await something();             // still held
//   }                                   // released here
//
// AsyncMutex is the bare lock (no data); Mutex<T> owns a T reachable only
// through a guard.
//
// Fairness: strictly FIFO. When the lock is released with tasks waiting, it
// is handed directly to the oldest waiter (nobody can barge in between), and
// try_lock() fails while anybody waits.
//
// Prefer std::mutex / absl::Mutex for short critical sections that never
// await: they are cheaper. Use this one when the section awaits.
//
// Thread-safety: every member may be called from any thread; a guard may be
// released on a different thread than the one that acquired it. The mutex
// must outlive its guards and lock futures, and cannot be moved or copied.
//
// Cost: an uncontended lock and unlock are one CAS each, no syscall. With
// waiters, a mutex-protected FIFO of intrusive nodes (inside the waiting lock
// futures: no allocation per wait) and one wake per hand-over.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "tideloop/internal/task_core.hpp"
#include "tideloop/sync/internal/sync_mutex.hpp"
#include "tideloop/sync/internal/wait_list.hpp"
#include "tideloop/waker.hpp"

namespace tideloop {

class AsyncMutex {
 public:
  AsyncMutex() = default;
  AsyncMutex(const AsyncMutex&) = delete;
  AsyncMutex& operator=(const AsyncMutex&) = delete;
  ~AsyncMutex() = default;

  // Owns the lock; releases it on destruction (or unlock()). Move-only.
  class [[nodiscard]] Guard {
   public:
    Guard() = default;
    explicit Guard(AsyncMutex* m) noexcept : m_(m) {}
    Guard(Guard&& o) noexcept : m_(std::exchange(o.m_, nullptr)) {}
    Guard& operator=(Guard&& o) noexcept {
      if (this != &o) {
        unlock();
        m_ = std::exchange(o.m_, nullptr);
      }
      return *this;
    }
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    ~Guard() { unlock(); }
    // Releases early; no-op on an empty guard.
    void unlock() noexcept {
      if (m_ != nullptr) std::exchange(m_, nullptr)->unlock();
    }
    bool owns_lock() const noexcept { return m_ != nullptr; }
    AsyncMutex* mutex() const noexcept { return m_; }

   private:
    AsyncMutex* m_ = nullptr;
  };

  // `co_await m.lock()`: a Guard once the lock is ours; waiters are served
  // FIFO. Cancel-safe: destroying a waiting LockAwaiter leaves the queue (no
  // waker left behind); if the lock had already been handed to it, it is
  // passed on to the next waiter (or released), never leaked.
  // Complexity: O(1).
  class LockAwaiter : public internal::LeafAwaiter<LockAwaiter> {
   public:
    explicit LockAwaiter(AsyncMutex* m) noexcept : m_(m) {}
    LockAwaiter(const LockAwaiter&) = delete;
    LockAwaiter& operator=(const LockAwaiter&) = delete;
    ~LockAwaiter();
    bool poll_ready(internal::TaskHeader* self) override;
    Guard await_resume() noexcept {
      taken_ = true;
      return Guard(m_);
    }

   private:
    friend class AsyncMutex;
    AsyncMutex* m_;
    internal::WaitNode node_;
    bool queued_ = false;    // node_ was put on the waiter list
    bool acquired_ = false;  // the lock is ours (fast path or hand-over)
    bool taken_ = false;     // ownership moved into a Guard
  };
  LockAwaiter lock() noexcept { return LockAwaiter(this); }

  // Takes the lock if it is free and nobody waits. Complexity: one CAS.
  std::optional<Guard> try_lock() noexcept {
    if (try_acquire()) return Guard(this);
    return std::nullopt;
  }

  // Blocks the calling thread until the lock is ours (FIFO with the tasks).
  // For threads outside the runtime: throws std::logic_error inside a task.
  Guard blocking_lock();

  // True while somebody holds the lock. A snapshot, for tests and asserts.
  bool is_locked() const noexcept { return state_.load(std::memory_order_acquire) != kUnlocked; }

 private:
  friend class Guard;
  // state_: who holds the lock and whether anybody waits.
  static constexpr std::uint32_t kUnlocked = 0;
  static constexpr std::uint32_t kLocked = 1;
  // Locked, and waiters_ is non-empty. Entered and left only under mu_.
  static constexpr std::uint32_t kLockedWaiters = 2;
  // Outcome of a waiter's node: the lock was handed to it.
  static constexpr std::uint32_t kGranted = 2;

  bool try_acquire() noexcept {
    std::uint32_t expected = kUnlocked;
    return state_.compare_exchange_strong(expected, kLocked, std::memory_order_acquire,
                                          std::memory_order_relaxed);
  }
  // Acquires now (true), or queues `node` with `waker` (false).
  bool acquire_or_enqueue(internal::WaitNode* node, const void* key, Waker (*make)(void*),
                          void* arg);
  void update_waker(internal::WaitNode* node, const void* key, Waker waker);
  // A queued waiter goes away. Returns true if the lock had been handed to it
  // (the caller now owns it and must unlock).
  bool cancel(internal::WaitNode* node) noexcept;
  void unlock() noexcept;
  void unlock_slow() noexcept;

  std::atomic<std::uint32_t> state_{kUnlocked};
  internal::SyncMutex mu_;
  internal::WaitList waiters_ ABSL_GUARDED_BY(mu_);
};

template <class T>
class Mutex;

// Access to the value of a Mutex<T> while holding its lock. Move-only.
template <class T>
class [[nodiscard]] MutexGuard {
 public:
  MutexGuard() = default;
  T& operator*() const noexcept { return *value_; }
  T* operator->() const noexcept { return value_; }
  // Releases early; the guard is empty afterwards.
  void unlock() noexcept {
    guard_.unlock();
    value_ = nullptr;
  }
  bool owns_lock() const noexcept { return guard_.owns_lock(); }

 private:
  friend class Mutex<T>;
  MutexGuard(AsyncMutex::Guard g, T* v) noexcept : guard_(std::move(g)), value_(v) {}
  AsyncMutex::Guard guard_;
  T* value_ = nullptr;
};

// A T that tasks access one at a time through an async lock.
template <class T>
class Mutex {
 public:
  template <class... Args>
  explicit Mutex(Args&&... args) : value_(std::forward<Args>(args)...) {}
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  // `co_await m.lock()`: a MutexGuard<T>. Same contract as AsyncMutex::lock().
  class LockAwaiter : public internal::LeafAwaiter<LockAwaiter> {
   public:
    explicit LockAwaiter(Mutex* m) noexcept : m_(m), inner_(&m->raw_) {}
    bool poll_ready(internal::TaskHeader* self) override { return inner_.poll_ready(self); }
    MutexGuard<T> await_resume() noexcept {
      return MutexGuard<T>(inner_.await_resume(), &m_->value_);
    }

   private:
    Mutex* m_;
    AsyncMutex::LockAwaiter inner_;
  };
  LockAwaiter lock() noexcept { return LockAwaiter(this); }

  std::optional<MutexGuard<T>> try_lock() noexcept {
    if (auto g = raw_.try_lock()) return MutexGuard<T>(std::move(*g), &value_);
    return std::nullopt;
  }
  MutexGuard<T> blocking_lock() { return MutexGuard<T>(raw_.blocking_lock(), &value_); }

  // Direct access when no other reference can exist (Tokio's get_mut); the
  // caller guarantees nobody holds or waits for the lock.
  T& get_mut() noexcept { return value_; }
  bool is_locked() const noexcept { return raw_.is_locked(); }

 private:
  AsyncMutex raw_;
  T value_;
};

}  // namespace tideloop
