// Parker: puts one thread to sleep until another unparks it, on a futex.
// A token protocol: unpark() before park() makes the next park() return at
// once, so a wake-up is never lost between "I found no work" and "I sleep".
// The unparker makes a syscall only when the target is actually asleep.
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <ctime>

namespace tideloop::internal {

class Parker {
 public:
  // Blocks until unpark() (possibly already delivered).
  void park() noexcept { park_impl(nullptr); }
  // Blocks until unpark() or `timeout` elapsed.
  void park_timeout(std::chrono::nanoseconds timeout) noexcept {
    if (timeout.count() <= 0) {
      std::uint32_t n = kNotified;
      state_.compare_exchange_strong(n, kEmpty, std::memory_order_acquire);
      return;
    }
    struct timespec ts;
    ts.tv_sec = static_cast<time_t>(timeout.count() / 1000000000);
    ts.tv_nsec = static_cast<long>(timeout.count() % 1000000000);
    park_impl(&ts);
  }
  // Wakes the parked thread, or makes its next park() return at once.
  void unpark() noexcept {
    if (state_.exchange(kNotified, std::memory_order_seq_cst) == kParked) {
      syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&state_), FUTEX_WAKE_PRIVATE, 1, nullptr,
              nullptr, 0);
    }
  }
  bool is_notified() const noexcept { return state_.load(std::memory_order_seq_cst) == kNotified; }

 private:
  static constexpr std::uint32_t kEmpty = 0, kParked = 1, kNotified = 2;

  void park_impl(const struct timespec* rel) noexcept {
    std::uint32_t n = kNotified;
    if (state_.compare_exchange_strong(n, kEmpty, std::memory_order_acquire)) return;
    std::uint32_t e = kEmpty;
    if (!state_.compare_exchange_strong(e, kParked, std::memory_order_acquire)) {
      // Only an unpark can have changed it: consume the token.
      state_.exchange(kEmpty, std::memory_order_acquire);
      return;
    }
    for (;;) {
      syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&state_), FUTEX_WAIT_PRIVATE, kParked,
              rel, nullptr, 0);
      n = kNotified;
      if (state_.compare_exchange_strong(n, kEmpty, std::memory_order_acquire)) return;
      if (rel != nullptr) {
        // Timed out (or spurious): leave the parked state; keep a racing token.
        if (state_.exchange(kEmpty, std::memory_order_acquire) == kNotified) return;
        return;
      }
    }
  }

  std::atomic<std::uint32_t> state_{kEmpty};
};

// A reference-counted Parker for wakers that may outlive the waiting call
// (a completing task may still be waking it after the waiter returned).
struct SharedParker {
  Parker parker;
  std::atomic<std::uint32_t> refs{1};
  void ref() noexcept { refs.fetch_add(1, std::memory_order_relaxed); }
  void unref() noexcept {
    if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }
};

// This thread's parker (created on first use, released at thread exit).
SharedParker* current_thread_parker();

}  // namespace tideloop::internal
