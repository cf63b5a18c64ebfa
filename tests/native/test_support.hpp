// Helpers shared by the native tests: sanitizer detection, per-build sizes
// for stress tests, events tasks can await (Gate, Signal), polling with a
// deadline, destructor counters, a hand-polled probe task, and the runtime
// of a flavour-parametrised test.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <thread>
#include <utility>

#include "tideloop/runtime.hpp"

#if defined(__SANITIZE_THREAD__)
#define TL_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TL_TSAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define TL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TL_ASAN 1
#endif
#endif

namespace tltest {

// Release / ASan / TSan sizes.
constexpr long scaled(long release, long asan, long tsan) {
#if defined(TL_TSAN)
  (void)release;
  (void)asan;
  return tsan;
#elif defined(TL_ASAN)
  (void)release;
  (void)tsan;
  return asan;
#else
  (void)asan;
  (void)tsan;
  return release;
#endif
}

// An event tasks await and any thread sets (waking by value). kAutoReset:
// a completed wait consumes it (Signal); otherwise it stays open (Gate).
template <bool kAutoReset>
class Event {
 public:
  void set() {
    tideloop::Waker w;
    {
      std::lock_guard<std::mutex> g(mu_);
      set_ = true;
      w = std::move(waker_);
    }
    w.wake();
  }
  void open() { set(); }
  class Awaiter : public tideloop::internal::LeafAwaiter<Awaiter> {
   public:
    explicit Awaiter(Event* e) : e_(e) {}
    bool poll_ready(tideloop::internal::TaskHeader* t) {
      std::lock_guard<std::mutex> lk(e_->mu_);
      if (e_->set_) {
        if (kAutoReset) e_->set_ = false;
        return true;
      }
      e_->waker_ = t->waker();
      return false;
    }
    void await_resume() noexcept {}

   private:
    Event* e_;
  };
  Awaiter wait() { return Awaiter(this); }

 private:
  std::mutex mu_;
  bool set_ = false;
  tideloop::Waker waker_;
};
// Opened once, stays open.
using Gate = Event<false>;
// Each set() lets one wait through.
using Signal = Event<true>;

// Polls f every millisecond until it holds or `timeout` passes.
template <class F>
bool eventually(F&& f, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!f()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// Counts its own destruction (moved-from instances do not count).
template <class N>
struct BasicTracked {
  std::atomic<N>* destroyed;
  explicit BasicTracked(std::atomic<N>* d) : destroyed(d) {}
  BasicTracked(BasicTracked&& o) noexcept : destroyed(std::exchange(o.destroyed, nullptr)) {}
  BasicTracked(const BasicTracked&) = delete;
  BasicTracked& operator=(BasicTracked&& o) noexcept {
    if (this != &o) {
      if (destroyed) destroyed->fetch_add(1);
      destroyed = std::exchange(o.destroyed, nullptr);
    }
    return *this;
  }
  ~BasicTracked() {
    if (destroyed) destroyed->fetch_add(1);
  }
};
using Tracked = BasicTracked<int>;

// Counts live instances (copies and moved-from ones included).
struct Counted {
  static inline std::atomic<int> live{0};
  int v = 0;
  explicit Counted(int x) : v(x) { live.fetch_add(1); }
  Counted(const Counted& o) : v(o.v) { live.fetch_add(1); }
  Counted(Counted&& o) noexcept : v(o.v) { live.fetch_add(1); }
  Counted& operator=(Counted&&) = default;
  ~Counted() { live.fetch_sub(1); }
};

// A stand-in task for polling awaiters by hand: its reference count shows
// whether a waker is still registered anywhere, and it counts wake-ups.
class ProbeTask final : public tideloop::internal::TaskHeader,
                        public tideloop::internal::Scheduler {
 public:
  ProbeTask() : TaskHeader(this) {
    // One reference and no notification: just "idle".
    state.store(tideloop::internal::st::kRefOne, std::memory_order_relaxed);
  }
  std::uint64_t refs() const { return state.load() >> 6; }
  int wakes() const { return wakes_.load(); }
  bool poll_future() override { return false; }
  void cancel_future() override {}
  void drop_output() override {}
  void destroy() override {}
  void schedule(TaskHeader* t) override {
    wakes_.fetch_add(1);
    t->state.fetch_and(~tideloop::internal::st::kNotified);
    tideloop::internal::ref_dec(t);
  }
  void yield_task(TaskHeader* t) override { schedule(t); }
  bool release(TaskHeader*) override { return false; }

 private:
  std::atomic<int> wakes_{0};
};

// The runtime of a test parametrised over both flavours (true: multi-thread
// with 2 workers).
inline tideloop::Runtime make_runtime(bool multi) {
  return multi ? tideloop::Runtime::Builder::multi_thread().worker_threads(2).build()
               : tideloop::Runtime::Builder::current_thread().build();
}

}  // namespace tltest
