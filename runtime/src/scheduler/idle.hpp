// Idle: who is searching for work and who sleeps. The policy that keeps
// wake-ups rare (a cross-core wake-up costs tens of microseconds here):
//  - a push wakes a sleeper only if no worker is searching already, because a
//    searcher will find the work (and, finding it, wakes the next one);
//  - at most half of the workers search at once, so idle workers do not all
//    hammer each other's queues.
// `state_` packs the number of searching workers (low 16 bits) and of
// unparked workers (the rest); sleepers is a stack under a mutex (touched only
// when parking or waking, never on the task hot path).
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include "tideloop/internal/annotated_mutex.hpp"

namespace tideloop::internal {

class Idle {
 public:
  explicit Idle(std::size_t num_workers)
      : num_workers_(num_workers), state_(num_workers << kUnparkShift) {
    sleepers_.reserve(num_workers);
  }

  // Index of a worker to wake, or -1 if waking is unnecessary.
  long worker_to_notify() {
    if (!notify_should_wakeup()) return -1;
    LockGuard<StdMutex> g(mu_);
    if (!notify_should_wakeup()) return -1;
    if (sleepers_.empty()) return -1;
    // The woken worker starts out searching.
    state_.fetch_add(1 | (std::size_t{1} << kUnparkShift), std::memory_order_seq_cst);
    long w = static_cast<long>(sleepers_.back());
    sleepers_.pop_back();
    return w;
  }

  bool transition_worker_to_searching() {
    const std::size_t s = state_.load(std::memory_order_seq_cst);
    if (2 * num_searching(s) >= num_workers_) return false;
    state_.fetch_add(1, std::memory_order_seq_cst);
    return true;
  }

  // True if this was the last searching worker.
  bool transition_worker_from_searching() {
    const std::size_t prev = state_.fetch_sub(1, std::memory_order_seq_cst);
    return num_searching(prev) == 1;
  }

  // True if the worker was the last searcher (it must then check for work).
  bool transition_worker_to_parked(std::size_t worker, bool is_searching) {
    LockGuard<StdMutex> g(mu_);
    const std::size_t dec = (std::size_t{1} << kUnparkShift) | (is_searching ? 1 : 0);
    const std::size_t prev = state_.fetch_sub(dec, std::memory_order_seq_cst);
    sleepers_.push_back(worker);
    return is_searching && num_searching(prev) == 1;
  }

  // Removes `worker` from the sleepers if it is there (it woke on its own).
  // True if it was there.
  bool unpark_worker_by_id(std::size_t worker) {
    LockGuard<StdMutex> g(mu_);
    for (std::size_t i = 0; i < sleepers_.size(); ++i) {
      if (sleepers_[i] == worker) {
        sleepers_[i] = sleepers_.back();
        sleepers_.pop_back();
        state_.fetch_add(std::size_t{1} << kUnparkShift, std::memory_order_seq_cst);
        return true;
      }
    }
    return false;
  }

  bool is_parked(std::size_t worker) {
    LockGuard<StdMutex> g(mu_);
    for (std::size_t w : sleepers_)
      if (w == worker) return true;
    return false;
  }

  // A hint (plain load, may be stale): could a worker be asleep with no one
  // searching? Callers that must not miss a sleeper use worker_to_notify().
  bool maybe_sleeping() const {
    const std::size_t s = state_.load(std::memory_order_relaxed);
    return num_searching(s) == 0 && num_unparked(s) < num_workers_;
  }

  // A hint (plain load): is every other worker asleep?
  bool others_asleep() const { return num_unparked(state_.load(std::memory_order_relaxed)) <= 1; }

  std::size_t searching() const { return num_searching(state_.load(std::memory_order_relaxed)); }

 private:
  static constexpr unsigned kUnparkShift = 16;
  static std::size_t num_searching(std::size_t s) { return s & 0xffff; }
  static std::size_t num_unparked(std::size_t s) { return s >> kUnparkShift; }
  bool notify_should_wakeup() {
    // An RMW, not a load: the caller just published work (a queue-tail
    // store) and must not have this read ordered before that store, or it
    // can miss a worker that, having found no work, is parking right now
    // (Dekker pairing with transition_worker_to_parked's RMW followed by its
    // queue check). A plain seq_cst load does not order an earlier release
    // store on x86 (store buffer). Tokio uses fetch_add(0, SeqCst) too.
    const std::size_t s = state_.fetch_add(0, std::memory_order_seq_cst);
    return num_searching(s) == 0 && num_unparked(s) < num_workers_;
  }

  const std::size_t num_workers_;
  std::atomic<std::size_t> state_;
  StdMutex mu_;
  std::vector<std::size_t> sleepers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tideloop::internal
