// Task<T>: a lazily started C++20 coroutine. A Task does nothing until it is
// spawned (tideloop::spawn, Runtime::spawn, Runtime::block_on) or co_awaited
// from another task; awaiting runs it inline on the awaiting task's thread
// through symmetric transfer, with no scheduling round trip.
//
//   tideloop::Task<int> answer() { co_return 42; }
//   tideloop::Task<> main_task() { int v = co_await answer(); ... }
//
// Exceptions escaping a coroutine are stored and rethrown to whoever awaits or
// joins it. Frames come from the scalable allocator (oneTBB's tbbmalloc).
#pragma once

#include <coroutine>
#include <cstdint>
#include <exception>
#include <new>
#include <optional>
#include <type_traits>
#include <utility>

#include "tideloop/internal/task_core.hpp"

namespace tideloop {

template <class T = void>
class Task;

namespace internal {

template <class T>
class CoroCell;

// Coroutine frames are allocated with room in front for the task cell, so a
// spawned coroutine costs one allocation, not two. A frame that is never
// spawned (a child awaited inline) just leaves that room unused.
//   [ cell space | FramePrefix | coroutine frame ... ]
struct FramePrefix {
  static constexpr std::uint32_t kMagic = 0x7431c0deu;
  std::uint32_t magic;
  std::uint32_t cell_space;
  std::uint32_t block_bytes;  // the whole block, for the sized task_free
  bool has_cell;              // the cell in front owns the block; frame delete keeps it
  char pad[3];
};
static_assert(sizeof(FramePrefix) == 16);

inline void* frame_alloc(std::size_t frame, std::size_t cell_space) {
  const std::size_t bytes = cell_space + sizeof(FramePrefix) + frame;
  auto* base = static_cast<char*>(task_alloc(bytes));
  auto* pre = reinterpret_cast<FramePrefix*>(base + cell_space);
  pre->magic = FramePrefix::kMagic;
  pre->cell_space = static_cast<std::uint32_t>(cell_space);
  pre->block_bytes = static_cast<std::uint32_t>(bytes);
  pre->has_cell = false;
  return pre + 1;
}
inline void frame_free(void* p) noexcept {
  auto* pre = static_cast<FramePrefix*>(p) - 1;
  if (pre->has_cell) return;  // freed with the cell
  task_free(reinterpret_cast<char*>(pre) - pre->cell_space, pre->block_bytes);
}
template <class T>
constexpr std::size_t cell_space() {
  return (sizeof(CoroCell<T>) + 15) & ~std::size_t{15};
}

struct PromiseBase {
  std::coroutine_handle<> continuation;
  std::exception_ptr exception;

  static void operator delete(void* p, std::size_t) noexcept { frame_free(p); }

  std::suspend_always initial_suspend() noexcept { return {}; }
  struct FinalAwaiter {
    bool await_ready() noexcept { return false; }
    template <class P>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<P> h) noexcept {
      auto c = h.promise().continuation;
      return c ? c : std::noop_coroutine();
    }
    void await_resume() noexcept {}
  };
  FinalAwaiter final_suspend() noexcept { return {}; }
  void unhandled_exception() noexcept { exception = std::current_exception(); }
};

template <class T>
struct Promise : PromiseBase {
  static void* operator new(std::size_t n) { return frame_alloc(n, cell_space<T>()); }
  std::optional<T> value;
  Task<T> get_return_object() noexcept;
  template <class U = T>
  requires std::is_convertible_v<U&&, T>
  void return_value(U&& v) { value.emplace(std::forward<U>(v)); }
  T take() {
    if (exception) std::rethrow_exception(exception);
    return std::move(*value);
  }
};

template <>
struct Promise<void> : PromiseBase {
  static void* operator new(std::size_t n);
  Task<void> get_return_object() noexcept;
  void return_void() noexcept {}
  void take() {
    if (exception) std::rethrow_exception(exception);
  }
};

}  // namespace internal

template <class T>
class [[nodiscard]] Task {
 public:
  using promise_type = internal::Promise<T>;
  using value_type = T;
  using Handle = std::coroutine_handle<promise_type>;

  Task() = default;
  explicit Task(Handle h) noexcept : h_(h) {}
  Task(Task&& o) noexcept : h_(std::exchange(o.h_, {})) {}
  Task& operator=(Task&& o) noexcept {
    if (this != &o) {
      if (h_) h_.destroy();
      h_ = std::exchange(o.h_, {});
    }
    return *this;
  }
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;
  ~Task() {
    if (h_) h_.destroy();
  }

  bool valid() const noexcept { return static_cast<bool>(h_); }

  // Runs the child inline on the awaiting task (symmetric transfer).
  auto operator co_await() && noexcept {
    struct Awaiter {
      Handle h;
      bool await_ready() noexcept { return false; }
      std::coroutine_handle<> await_suspend(std::coroutine_handle<> parent) noexcept {
        h.promise().continuation = parent;
        return h;
      }
      T await_resume() { return h.promise().take(); }
    };
    return Awaiter{h_};
  }

  // Gives up ownership of the coroutine frame (used by spawn).
  Handle release() noexcept { return std::exchange(h_, {}); }

 private:
  Handle h_;
};

namespace internal {
template <class T>
Task<T> Promise<T>::get_return_object() noexcept {
  return Task<T>(std::coroutine_handle<Promise<T>>::from_promise(*this));
}
inline Task<void> Promise<void>::get_return_object() noexcept {
  return Task<void>(std::coroutine_handle<Promise<void>>::from_promise(*this));
}

template <class X>
struct IsTask : std::false_type {};
template <class T>
struct IsTask<Task<T>> : std::true_type {};

// A spawned coroutine: the root frame plus the output slot. Lives in the
// space reserved in front of the root frame (see FramePrefix).
template <class T>
class CoroCell final : public TaskCell<T> {
 public:
  // Places the cell in front of `root`'s frame (falls back to a separate
  // block if the frame was not allocated by a tideloop promise).
  static CoroCell* make(Scheduler* s, typename Task<T>::Handle root) {
    auto* pre = static_cast<FramePrefix*>(root.address()) - 1;
    void* mem;
    std::uint32_t block_bytes;
    if (pre->magic == FramePrefix::kMagic && pre->cell_space >= sizeof(CoroCell)) {
      pre->has_cell = true;
      mem = reinterpret_cast<char*>(pre) - pre->cell_space;
      block_bytes = pre->block_bytes;
    } else {
      mem = task_alloc(sizeof(CoroCell));
      block_bytes = sizeof(CoroCell);
    }
    return ::new (mem) CoroCell(s, root, block_bytes);
  }

  bool poll_future() override {
    if (this->pending != nullptr) {
      if (!this->pending->poll_ready(this)) return false;
      this->pending = nullptr;
    }
    this->resume_point.resume();
    if (!root_.done()) return false;
    auto& p = root_.promise();
    if (p.exception) {
      this->out_.template emplace<2>(p.exception);
    } else if constexpr (std::is_void_v<T>) {
      this->out_.template emplace<1>();
    } else {
      this->out_.template emplace<1>(std::move(*p.value));
    }
    drop_frame();
    return true;
  }
  void cancel_future() override {
    drop_frame();
    this->out_.template emplace<3>();
  }
  void destroy() override {
    const std::uint32_t bytes = block_bytes_;
    this->~CoroCell();
    task_free(this, bytes);  // the whole block: cell space + (dead) frame
  }

 private:
  CoroCell(Scheduler* s, typename Task<T>::Handle root, std::uint32_t block_bytes)
      : TaskCell<T>(s), root_(root), block_bytes_(block_bytes) {
    this->resume_point = root;
  }
  ~CoroCell() { drop_frame(); }
  void drop_frame() noexcept {
    this->pending = nullptr;
    this->resume_point = {};
    if (root_) std::exchange(root_, {}).destroy();
  }
  typename Task<T>::Handle root_;
  std::uint32_t block_bytes_;  // what destroy() hands back to task_free
};

// A spawned plain callable: runs once, to completion.
template <class F, class T>
class FnCell final : public TaskCell<T> {
 public:
  FnCell(Scheduler* s, F&& f) : TaskCell<T>(s) { new (&fn_) F(std::move(f)); }
  // The sized delete below is this new's usual deallocation function.
  // NOLINTNEXTLINE(misc-new-delete-overloads)
  static void* operator new(std::size_t n) { return task_alloc(n); }
  static void operator delete(void* p, std::size_t n) noexcept { task_free(p, n); }

  bool poll_future() override {
    try {
      if constexpr (std::is_void_v<T>) {
        fn()();
        this->out_.template emplace<1>();
      } else {
        this->out_.template emplace<1>(fn()());
      }
    } catch (...) {
      this->out_.template emplace<2>(std::current_exception());
    }
    drop_fn();
    return true;
  }
  void cancel_future() override {
    drop_fn();
    this->out_.template emplace<3>();
  }
  void destroy() override { delete this; }

 private:
  ~FnCell() { drop_fn(); }
  F& fn() { return *std::launder(reinterpret_cast<F*>(&fn_)); }
  void drop_fn() noexcept {
    if (alive_) {
      alive_ = false;
      fn().~F();
    }
  }
  alignas(F) unsigned char fn_[sizeof(F)];
  bool alive_ = true;
};

inline void* Promise<void>::operator new(std::size_t n) {
  return frame_alloc(n, cell_space<void>());
}

}  // namespace internal
}  // namespace tideloop
