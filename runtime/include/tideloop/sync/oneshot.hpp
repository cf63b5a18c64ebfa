// oneshot: a channel for sending a single value between tasks (or threads),
// Tokio's tokio::sync::oneshot.
//
//   auto [tx, rx] = tideloop::oneshot::channel<int>();
//   tideloop::spawn([tx = std::move(tx)]() mutable { tx.send(42); });
//   int v = co_await rx;              // throws oneshot::RecvError if tx is
//                                     // dropped without sending
//
// Both halves are move-only and may live on, be used from and be destroyed on
// any thread, but each half must be used by one thread at a time (like any
// non-const object). A Sender sends at most once; a Receiver yields its value
// at most once.
//
// Cost: one allocation (tbbmalloc) shared by both halves, no lock. A send is
// one CAS when the receiver is not waiting yet, or one CAS + one wake + one
// atomic AND when it is; a receive that finds the value is one load, and
// dropping the receiver afterwards is one CAS (the last half frees the block).
//
// T = void is supported: `send()` takes no argument and `co_await rx` yields
// void.
#pragma once

#include <atomic>
#include <cstdint>
#include <new>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tideloop/internal/task_core.hpp"
#include "tideloop/sync/internal/alloc.hpp"
#include "tideloop/sync/internal/thread_park.hpp"
#include "tideloop/waker.hpp"

namespace tideloop {
namespace internal {

// The block both halves of a oneshot share.
//
// State word (one atomic; every transition is one read-modify-write):
//   kRxTaskSet  rx_waker is published: the sender may read it (to wake the
//               receiver) until it has completed; the receiver leaves it alone.
//               While clear, only the receiver touches rx_waker.
//   kTxTaskSet  tx_waker is published (Sender::closed()); same rule mirrored:
//               the receiver may read it until it has closed.
//   kValueSent  the value slot holds a value the receiver owns (set together
//               with kComplete, and only when the receiver had not closed).
//   kComplete   the sender is done: it sent, or was dropped without sending.
//   kClosed     the receiver is done: it called close() or was dropped.
//   kTxAlive    the Sender still refers to the block.
//   kRxAlive    the Receiver still refers to the block.
// Whoever clears the last *Alive bit frees the block. A half that has to read
// the other half's waker after its completing transition keeps its *Alive bit
// across the wake and clears it with a second RMW; otherwise the completing
// transition clears it too (the common, one-RMW case).
namespace oneshot_bits {
inline constexpr std::uint32_t kRxTaskSet = 1;
inline constexpr std::uint32_t kTxTaskSet = 2;
inline constexpr std::uint32_t kValueSent = 4;
inline constexpr std::uint32_t kComplete = 8;
inline constexpr std::uint32_t kClosed = 16;
inline constexpr std::uint32_t kTxAlive = 32;
inline constexpr std::uint32_t kRxAlive = 64;
}  // namespace oneshot_bits

template <class T>
struct OneshotShared {
  using Stored = std::conditional_t<std::is_void_v<T>, Unit, T>;

  static void* operator new(std::size_t n) { return sync_alloc(n); }
  static void operator delete(void* p, std::size_t n) noexcept { sync_free(p, n); }

  Stored* value() noexcept { return std::launder(reinterpret_cast<Stored*>(slot)); }

  std::atomic<std::uint32_t> state{oneshot_bits::kTxAlive | oneshot_bits::kRxAlive};
  // See the state word for who may touch these. Whatever a slot holds when
  // the block is freed is dropped then (a waker that was published and then
  // raced with completion stays in place until that point).
  Waker rx_waker;
  Waker tx_waker;
  // Written by the sender before kComplete|kValueSent is published; owned by
  // the receiver afterwards (or by the sender again if the receiver closed
  // first). Never destroyed by the block itself.
  alignas(Stored) unsigned char slot[sizeof(Stored)];
};

// Registers a waker in `slot`, published by the bit `flag`, unless one of
// `done` is set. Returns true when `done` was seen (nothing left registered
// for the other side to read), false when a waker is in place. `key` caches
// the identity of the waker last published so a re-poll by the same waiter
// costs one load. Only the waiting half calls this.
template <class MakeWaker>
bool oneshot_register(std::atomic<std::uint32_t>& state, Waker& slot, std::uint32_t flag,
                      std::uint32_t done, const void*& key, const void* new_key,
                      MakeWaker&& make) noexcept {
  std::uint32_t cur = state.load(std::memory_order_acquire);
  if (cur & done) return true;
  if (cur & flag) {
    if (key == new_key) return false;  // our waker is already in place
    cur = state.fetch_and(~flag, std::memory_order_acq_rel) & ~flag;
    // safety: the other half completed while the waker was published, so it
    // may be reading the slot right now; leave it for the block's destructor.
    if (cur & done) return true;
  }
  slot = make();
  key = new_key;
  for (;;) {
    if (cur & done) {
      key = nullptr;  // the flag stays clear: the slot is ours, just unused
      return true;
    }
    if (state.compare_exchange_weak(cur, cur | flag, std::memory_order_acq_rel,
                                    std::memory_order_acquire))
      return false;
  }
}

// Withdraws a waker published by oneshot_register (a waiter is going away).
inline void oneshot_deregister(std::atomic<std::uint32_t>& state, Waker& slot, std::uint32_t flag,
                               std::uint32_t done, const void*& key) noexcept {
  if (key == nullptr) return;
  key = nullptr;
  const std::uint32_t prev = state.fetch_and(~flag, std::memory_order_acq_rel);
  // safety: with `done` set the other half may be reading the slot.
  if ((prev & flag) && !(prev & done)) slot.reset();
}

}  // namespace internal

namespace oneshot {

// What awaiting (or blocking_recv on) a Receiver throws when no value will
// ever arrive: the Sender was dropped without sending, or the receiver was
// closed before a value was sent, or the value was already received.
class RecvError : public std::runtime_error {
 public:
  RecvError() : std::runtime_error("oneshot: channel closed without a value") {}
  using std::runtime_error::runtime_error;
};

template <class T>
class Sender;
template <class T>
class Receiver;

template <class T>
struct Channel {
  Sender<T> tx;
  Receiver<T> rx;
};

// Creates a connected Sender/Receiver pair.
// Complexity: one allocation.
template <class T>
Channel<T> channel();

// The sending half. Move-only.
template <class T>
class Sender {
  using Shared = internal::OneshotShared<T>;
  using Stored = typename Shared::Stored;

 public:
  Sender() = default;
  Sender(Sender&& o) noexcept : inner_(std::exchange(o.inner_, nullptr)), key_(o.key_) {}
  Sender& operator=(Sender&& o) noexcept {
    if (this != &o) {
      release();
      inner_ = std::exchange(o.inner_, nullptr);
      key_ = o.key_;
    }
    return *this;
  }
  Sender(const Sender&) = delete;
  Sender& operator=(const Sender&) = delete;
  // Dropping an unused Sender completes the channel without a value: the
  // receiver's await throws RecvError.
  ~Sender() { release(); }

  // Delivers `value` to the receiver and wakes it. Returns false if the
  // receiver was already dropped or closed: `value` is then destroyed before
  // send returns (it is never handed back; send a std::unique_ptr or check
  // is_closed() first when that matters). Either way the Sender is used up
  // afterwards (valid() is false).
  // Throws std::logic_error on a used or moved-from Sender.
  // Thread-safety: concurrent with anything on the Receiver.
  // Complexity: O(1), lock-free; see the header comment for the atomics.
  template <class U = T>
  requires(!std::is_void_v<U>) bool send(std::type_identity_t<U> value) {
    // Construct first: if T's move throws, the Sender is left untouched.
    ::new (static_cast<void*>(checked()->slot)) T(std::move(value));
    return complete(take(), true);
  }
  // T = void: signals the receiver.
  template <class U = T>
  requires std::is_void_v<U>
  bool send() {
    ::new (static_cast<void*>(checked()->slot)) internal::Unit();
    return complete(take(), true);
  }

  // True once the receiver was dropped or closed (a send would fail), or when
  // this Sender is used up. A snapshot: false may turn true at any time.
  // Complexity: one atomic load.
  bool is_closed() const noexcept {
    return inner_ == nullptr ||
           (inner_->state.load(std::memory_order_acquire) & internal::oneshot_bits::kClosed);
  }

  // False after send() or a move.
  bool valid() const noexcept { return inner_ != nullptr; }

  // `co_await tx.closed()` completes when the receiver is dropped or closed
  // (Tokio's Sender::closed): lets a producer stop computing a value nobody
  // will read. Completes at once on a used-up Sender. Cancel-safe: destroying
  // the awaiter withdraws its waker.
  class ClosedAwaiter : public internal::LeafAwaiter<ClosedAwaiter> {
   public:
    explicit ClosedAwaiter(Sender* tx) noexcept : tx_(tx) {}
    ClosedAwaiter(const ClosedAwaiter&) = delete;
    ClosedAwaiter& operator=(const ClosedAwaiter&) = delete;
    ~ClosedAwaiter() {
      if (tx_->inner_ != nullptr) {
        internal::oneshot_deregister(tx_->inner_->state, tx_->inner_->tx_waker,
                                     internal::oneshot_bits::kTxTaskSet,
                                     internal::oneshot_bits::kClosed, tx_->key_);
      }
    }
    bool poll_ready(internal::TaskHeader* self) noexcept override {
      Shared* s = tx_->inner_;
      if (s == nullptr) return true;
      if (!internal::coop_poll_proceed(self)) return false;
      if (internal::oneshot_register(s->state, s->tx_waker, internal::oneshot_bits::kTxTaskSet,
                                     internal::oneshot_bits::kClosed, tx_->key_, self,
                                     [self] { return self->waker(); })) {
        internal::coop_spend();
        return true;
      }
      return false;
    }
    void await_resume() noexcept {}

   private:
    Sender* tx_;
  };
  ClosedAwaiter closed() noexcept { return ClosedAwaiter(this); }

 private:
  friend Channel<T> channel<T>();
  explicit Sender(Shared* s) noexcept : inner_(s) {}

  // The slot is ours until complete() publishes it.
  Shared* checked() const {
    if (inner_ == nullptr) throw std::logic_error("oneshot: send on a used or moved-from Sender");
    return inner_;
  }
  // Gives up the handle. A waker we published for closed() stays (the
  // receiver may read it until kComplete) and is dropped with the block.
  Shared* take() noexcept {
    key_ = nullptr;
    return std::exchange(inner_, nullptr);
  }

  // Publishes completion (with the value already in the slot if `with_value`)
  // and gives up the sender's hold on the block.
  static bool complete(Shared* s, bool with_value) noexcept {
    using namespace internal::oneshot_bits;
    std::uint32_t cur = s->state.load(std::memory_order_acquire);
    for (;;) {
      if (cur & kClosed) {
        // The receiver is gone or closed: the value never becomes its.
        // safety: kClosed is final and the receiver never reads the slot
        // without kValueSent, so it is still ours; destroy it before letting go.
        if (with_value) {
          s->value()->~Stored();
          with_value = false;
        }
        const std::uint32_t next = (cur | kComplete) & ~kTxAlive;
        if (s->state.compare_exchange_weak(cur, next, std::memory_order_acq_rel,
                                           std::memory_order_acquire)) {
          if (!(next & kRxAlive)) delete s;
          return false;
        }
        continue;
      }
      const bool wake = (cur & kRxTaskSet) != 0;
      std::uint32_t next = cur | kComplete | (with_value ? kValueSent : 0);
      if (!wake) next &= ~kTxAlive;  // nothing more to read: let go now
      if (s->state.compare_exchange_weak(cur, next, std::memory_order_acq_rel,
                                         std::memory_order_acquire)) {
        if (wake) {
          // safety: kRxTaskSet was set when we completed, so the receiver
          // will not touch rx_waker again; our kTxAlive keeps the block.
          s->rx_waker.wake_by_ref();
          const std::uint32_t prev = s->state.fetch_and(~kTxAlive, std::memory_order_acq_rel);
          if (!(prev & kRxAlive)) delete s;
        }
        return true;
      }
    }
  }

  void release() noexcept {
    key_ = nullptr;
    if (inner_ != nullptr) complete(std::exchange(inner_, nullptr), false);
  }

  Shared* inner_ = nullptr;
  // Identity of the waker published in tx_waker (null: none).
  const void* key_ = nullptr;
};

// The receiving half. Move-only.
template <class T>
class Receiver {
  using Shared = internal::OneshotShared<T>;

 public:
  Receiver() = default;
  Receiver(Receiver&& o) noexcept : inner_(std::exchange(o.inner_, nullptr)), key_(o.key_) {}
  Receiver& operator=(Receiver&& o) noexcept {
    if (this != &o) {
      release(false);
      inner_ = std::exchange(o.inner_, nullptr);
      key_ = o.key_;
    }
    return *this;
  }
  Receiver(const Receiver&) = delete;
  Receiver& operator=(const Receiver&) = delete;
  // Closes the channel; a value already sent and not received is destroyed
  // here, a later send() returns false.
  ~Receiver() { release(false); }

  // `co_await rx`: the value, once sent. Throws RecvError if the Sender was
  // dropped without sending, if close() was called before a value arrived,
  // or if the value was already received (the Receiver is then empty).
  // Cancel-safe: destroying the awaiter (the task aborted while waiting)
  // withdraws its waker; the Receiver stays usable and keeps any value.
  // Thread-safety: one awaiter per Receiver at a time.
  // Complexity: O(1), lock-free.
  class Awaiter : public internal::LeafAwaiter<Awaiter> {
   public:
    explicit Awaiter(Receiver* rx) noexcept : rx_(rx) {}
    Awaiter(const Awaiter&) = delete;
    Awaiter& operator=(const Awaiter&) = delete;
    ~Awaiter() {
      if (rx_->inner_ != nullptr) rx_->deregister();
    }
    bool poll_ready(internal::TaskHeader* self) noexcept override {
      Shared* s = rx_->inner_;
      if (s == nullptr) return true;
      if (!internal::coop_poll_proceed(self)) return false;
      if (rx_->register_waker(self, [self] { return self->waker(); })) {
        internal::coop_spend();
        return true;
      }
      return false;
    }
    T await_resume() { return rx_->take_or_throw(); }

   private:
    Receiver* rx_;
  };
  Awaiter operator co_await() & noexcept { return Awaiter(this); }
  Awaiter operator co_await() && noexcept { return Awaiter(this); }

  // Takes the value if it has been sent, without waiting.
  //   OK                    the value (the Receiver is empty afterwards)
  //   kUnavailable          nothing sent yet (try again later)
  //   kFailedPrecondition   nothing will arrive: sender dropped, receiver
  //                         closed, or value already taken
  // (Error statuses carry no message, so they never allocate.)
  // Complexity: O(1), one atomic load (+ the release of the block on success).
  template <class U = T>
  requires(!std::is_void_v<U>) absl::StatusOr<U> try_recv() {
    const absl::Status st = try_ready();
    if (!st.ok()) return st;
    return take_or_throw();
  }
  template <class U = T>
  requires std::is_void_v<U> absl::Status try_recv() {
    absl::Status st = try_ready();
    if (st.ok()) take_or_throw();
    return st;
  }

  // Blocks the calling thread until the value arrives; the thread-side twin
  // of `co_await rx` for threads outside the runtime. Throws RecvError like
  // co_await, and std::logic_error when called from inside a task.
  // Complexity: O(1) atomics plus one futex sleep/wake.
  T blocking_recv() {
    internal::assert_not_in_task("oneshot: blocking_recv() called from inside a task; co_await it");
    if (inner_ != nullptr && !register_waker(internal::current_thread_waker_key(),
                                             [] { return internal::thread_waker(); })) {
      using namespace internal::oneshot_bits;
      while (!(inner_->state.load(std::memory_order_acquire) & (kComplete | kClosed)))
        internal::park_current_thread();
    }
    return take_or_throw();
  }

  // Prevents the sender from sending (its send() returns false and its
  // closed() completes) without dropping the Receiver: a value sent before
  // close() can still be taken with try_recv() or co_await.
  // Complexity: one atomic OR (+ a wake if the sender awaits closed()).
  void close() noexcept {
    using namespace internal::oneshot_bits;
    if (inner_ == nullptr) return;
    const std::uint32_t prev = inner_->state.fetch_or(kClosed, std::memory_order_acq_rel);
    // safety: our kRxAlive keeps the block; tx_waker is published and the
    // sender has not completed, so it will not write it any more.
    if (!(prev & kClosed) && (prev & kTxTaskSet) && !(prev & kComplete))
      inner_->tx_waker.wake_by_ref();
  }

  // True once the value was received (or the Receiver was moved from): there
  // is nothing left to wait for.
  bool is_terminated() const noexcept { return inner_ == nullptr; }

  // True when no value is ready right now (Tokio's is_empty).
  bool is_empty() const noexcept {
    return inner_ == nullptr ||
           !(inner_->state.load(std::memory_order_acquire) & internal::oneshot_bits::kValueSent);
  }

 private:
  friend Channel<T> channel<T>();
  explicit Receiver(Shared* s) noexcept : inner_(s) {}

  // True when the channel is complete or closed (no waker left registered).
  template <class MakeWaker>
  bool register_waker(const void* key, MakeWaker&& make) noexcept {
    using namespace internal::oneshot_bits;
    return internal::oneshot_register(inner_->state, inner_->rx_waker, kRxTaskSet,
                                      kComplete | kClosed, key_, key,
                                      std::forward<MakeWaker>(make));
  }
  void deregister() noexcept {
    using namespace internal::oneshot_bits;
    internal::oneshot_deregister(inner_->state, inner_->rx_waker, kRxTaskSet, kComplete | kClosed,
                                 key_);
  }

  absl::Status try_ready() const {
    using namespace internal::oneshot_bits;
    if (inner_ == nullptr) return absl::Status(absl::StatusCode::kFailedPrecondition, "");
    const std::uint32_t cur = inner_->state.load(std::memory_order_acquire);
    if (cur & kValueSent) return absl::OkStatus();
    if (cur & (kComplete | kClosed)) return absl::Status(absl::StatusCode::kFailedPrecondition, "");
    return absl::Status(absl::StatusCode::kUnavailable, "");
  }

  // Moves the value out and releases the block, or throws RecvError.
  T take_or_throw() {
    using namespace internal::oneshot_bits;
    Shared* s = inner_;
    if (s == nullptr || !(s->state.load(std::memory_order_acquire) & kValueSent)) throw RecvError();
    if constexpr (std::is_void_v<T>) {
      release(true);
    } else {
      // safety: kValueSent (acquired) means the slot is initialised and ours.
      struct Release {
        Receiver* rx;
        ~Release() { rx->release(true); }
      } release_after{this};
      T v(std::move(*s->value()));
      s->value()->~T();
      return v;
    }
  }

  // Closes the channel and gives up the receiver's hold on the block.
  // `value_taken`: the slot was already emptied by this receiver.
  void release(bool value_taken) noexcept {
    using namespace internal::oneshot_bits;
    Shared* s = std::exchange(inner_, nullptr);
    if (s == nullptr) return;
    key_ = nullptr;
    std::uint32_t cur = s->state.load(std::memory_order_acquire);
    std::uint32_t next;
    bool wake_tx;
    for (;;) {
      if ((cur & kValueSent) && !value_taken) {
        // safety: a sent value is ours; destroy it while we still hold the block.
        if constexpr (!std::is_void_v<T>) s->value()->~T();
        value_taken = true;
      }
      wake_tx = (cur & kTxTaskSet) && !(cur & (kComplete | kClosed));
      next = cur | kClosed;
      if (!wake_tx) next &= ~kRxAlive;
      if (s->state.compare_exchange_weak(cur, next, std::memory_order_acq_rel,
                                         std::memory_order_acquire))
        break;
    }
    if (wake_tx) {
      s->tx_waker.wake_by_ref();
      const std::uint32_t prev = s->state.fetch_and(~kRxAlive, std::memory_order_acq_rel);
      if (!(prev & kTxAlive)) delete s;
    } else if (!(next & kTxAlive)) {
      delete s;
    }
  }

  Shared* inner_ = nullptr;
  // Identity of the waker published in rx_waker (the TaskHeader of a task, or
  // a thread's parker); null when none is published.
  const void* key_ = nullptr;
};

template <class T>
Channel<T> channel() {
  auto* s = new internal::OneshotShared<T>();
  return Channel<T>{Sender<T>(s), Receiver<T>(s)};
}

}  // namespace oneshot
}  // namespace tideloop
