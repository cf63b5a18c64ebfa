// JoinHandle<T>: the owner's side of a spawned task.
//   co_await handle        inside a task: the task's value, or its exception;
//                          TaskCancelled if it was aborted or dropped at shutdown
//   handle.join()          the same, blocking the calling thread; for threads
//                          outside the runtime (never call it from a worker)
//   handle.abort()         cancel: the task's frame is destroyed at its next
//                          poll (running tasks finish their current step first)
//   handle.detach()        let the task run on, its output discarded
//   destructor             same as detach()
// A JoinHandle is move-only; awaiting or joining consumes its value once.
#pragma once

#include <utility>

#include "tideloop/internal/task_core.hpp"

namespace tideloop {

template <class T>
class [[nodiscard]] JoinHandle {
 public:
  JoinHandle() = default;
  explicit JoinHandle(internal::TaskCell<T>* cell) noexcept : cell_(cell) {}
  JoinHandle(JoinHandle&& o) noexcept : cell_(std::exchange(o.cell_, nullptr)) {}
  JoinHandle& operator=(JoinHandle&& o) noexcept {
    if (this != &o) {
      detach();
      cell_ = std::exchange(o.cell_, nullptr);
    }
    return *this;
  }
  JoinHandle(const JoinHandle&) = delete;
  JoinHandle& operator=(const JoinHandle&) = delete;
  ~JoinHandle() { detach(); }

  bool valid() const noexcept { return cell_ != nullptr; }
  // True once the task completed (value, exception or cancellation).
  bool is_finished() const noexcept { return cell_ && internal::is_complete(cell_); }

  void abort() noexcept {
    if (cell_) internal::abort_task(cell_);
  }
  void detach() noexcept {
    if (!cell_) return;
    internal::TaskCell<T>* c = std::exchange(cell_, nullptr);
    if (!internal::join_drop_fresh(c)) internal::join_drop(c);
  }

  // Blocks until the task completes; returns its value or rethrows.
  T join() {
    if (!cell_) throw std::logic_error("tideloop: join() on an empty JoinHandle");
    internal::join_block(cell_);
    return take();
  }

  class Awaiter : public internal::LeafAwaiter<Awaiter> {
   public:
    explicit Awaiter(JoinHandle* h) : h_(h) {}
    bool poll_ready(internal::TaskHeader* self) override {
      if (!h_->cell_) return true;  // await_resume reports the misuse
      // Budget first, also for a finished task (as Tokio): a loop awaiting
      // many finished handles still yields every budget's worth.
      if (!internal::coop_poll_proceed(self)) return false;
      if (internal::is_complete(h_->cell_)) {
        internal::coop_spend();
        return true;
      }
      if (!waker_) waker_ = self->waker();
      if (internal::join_poll(h_->cell_, waker_)) {
        internal::coop_spend();
        return true;
      }
      return false;
    }
    T await_resume() {
      if (!h_->cell_) throw std::logic_error("tideloop: awaited an empty JoinHandle");
      return h_->take();
    }

   private:
    JoinHandle* h_;
    Waker waker_;
  };
  Awaiter operator co_await() & noexcept { return Awaiter(this); }
  Awaiter operator co_await() && noexcept { return Awaiter(this); }

 private:
  T take() {
    struct Release {
      JoinHandle* h;
      ~Release() { h->detach(); }
    } release{this};
    return cell_->take_output();
  }
  internal::TaskCell<T>* cell_ = nullptr;
};

}  // namespace tideloop
