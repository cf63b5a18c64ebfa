// mpsc: multi-producer, single-consumer FIFO channels, Tokio's tokio::sync::mpsc.
//
//   auto [tx, rx] = tideloop::mpsc::channel<int>(64);     // bounded
//   spawn([tx]() mutable -> Task<void> { co_await tx.send(1); });
//   while (std::optional<int> v = co_await rx.recv()) { ... }
//
//   auto [utx, urx] = tideloop::mpsc::unbounded_channel<int>();
//   utx.send(1);                                          // never waits
//
// Senders are copyable; the channel closes for the receiver (recv() yields
// std::nullopt once the buffer is drained) when the last sender is dropped.
// Dropping the Receiver, or calling close(), closes it for the senders: sends
// fail, and senders waiting for room are woken and fail.
//
// Bounded channels apply back-pressure: at most `capacity` messages are
// buffered, and `co_await tx.send(v)` waits for room. Waiting senders are
// served strictly in arrival order: when the receiver takes a message, the
// oldest waiting sender's value is moved into the freed slot at once (a late
// try_send cannot overtake it) and that sender is woken.
//
// Thread-safety: every operation may be called from any thread; each
// Sender/Receiver object is used by one thread at a time (copy a Sender to
// share it). Messages from one sender arrive in the order they were sent.
//
// Implementation: one block shared by all handles (tbbmalloc), a mutex
// guarding a deque, the receiver's waker and the FIFO of waiting senders
// (intrusive nodes inside the waiting awaiters: no allocation per wait).
// Wakers are always called after the lock is released.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tideloop/internal/task_core.hpp"
#include "tideloop/sync/internal/alloc.hpp"
#include "tideloop/sync/internal/sync_mutex.hpp"
#include "tideloop/sync/internal/thread_park.hpp"
#include "tideloop/sync/internal/wait_list.hpp"
#include "tideloop/waker.hpp"

namespace tideloop {
namespace internal {

// The block every handle of one mpsc channel shares.
template <class T>
class MpscChan {
 public:
  // Outcomes of a waiting sender's WaitNode.
  static constexpr std::uint32_t kSent = 2;    // its value was moved into the buffer
  static constexpr std::uint32_t kClosed = 3;  // the receiver closed: value stays with it

  // A waiting sender: the node plus where its value lives.
  struct SendNode : WaitNode {
    T* value = nullptr;
  };

  // capacity 0: unbounded.
  explicit MpscChan(std::size_t capacity) : capacity_(capacity) {}
  MpscChan(const MpscChan&) = delete;
  MpscChan& operator=(const MpscChan&) = delete;

  static void* operator new(std::size_t n) { return sync_alloc(n); }
  static void operator delete(void* p, std::size_t n) noexcept { sync_free(p, n); }

  std::size_t max_capacity() const noexcept { return capacity_; }

  // --- handle counting ---------------------------------------------------
  // refs_: one for the senders together (dropped with the last sender), one
  // for the receiver. tx_count_: live Sender objects.
  void add_sender() noexcept { tx_count_.fetch_add(1, std::memory_order_relaxed); }
  void drop_sender() noexcept {
    if (tx_count_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    Waker w;
    {
      internal::SyncLock l(&mu_);
      tx_closed_ = true;
      w = take_rx_waker();
    }
    w.wake();
    unref();
  }
  void drop_receiver() noexcept {
    close();
    std::deque<T> drained;
    Waker w;
    {
      internal::SyncLock l(&mu_);
      drained.swap(queue_);
      w = take_rx_waker();
    }
    // Destroyed outside the lock: a message's destructor may use the channel.
    drained.clear();
    w.reset();
    unref();
  }

  // --- sending -------------------------------------------------------------
  enum class TryPush { kPushed, kFull, kClosed };
  // Pushes *v (moving from it only when kPushed) unless closed or full.
  TryPush try_push(T& v) {
    Waker w;
    {
      internal::SyncLock l(&mu_);
      if (rx_closed_) return TryPush::kClosed;
      if (capacity_ != 0 && queue_.size() >= capacity_) return TryPush::kFull;
      queue_.push_back(std::move(v));
      w = take_rx_waker();
    }
    w.wake();
    return TryPush::kPushed;
  }

  // Pushes *node->value if there is room, else queues `node` (FIFO) with
  // `make()` as its waker. Returns kPushed, kClosed, or kFull (= queued).
  template <class MakeWaker>
  TryPush push_or_wait(SendNode* node, const void* key, MakeWaker&& make) {
    Waker w;
    {
      internal::SyncLock l(&mu_);
      if (rx_closed_) return TryPush::kClosed;
      if (queue_.size() < capacity_) {
        queue_.push_back(std::move(*node->value));
        w = take_rx_waker();
      } else {
        node->waker = make();
        node->key = key;
        node->state.store(WaitNode::kWaiting, std::memory_order_relaxed);
        send_waiters_.push_back(node);
        return TryPush::kFull;
      }
    }
    w.wake();
    return TryPush::kPushed;
  }

  // A waiting sender re-polled by another task/thread: swap its waker.
  template <class MakeWaker>
  void update_waiter(SendNode* node, const void* key, MakeWaker&& make) {
    internal::SyncLock l(&mu_);
    if (node->state.load(std::memory_order_relaxed) != WaitNode::kWaiting) return;
    node->waker = make();
    node->key = key;
  }

  // A waiting sender goes away (cancelled): unqueue it if still queued.
  void cancel_waiter(SendNode* node) noexcept {
    if (node->state.load(std::memory_order_acquire) != WaitNode::kWaiting) return;
    internal::SyncLock l(&mu_);
    if (node->state.load(std::memory_order_relaxed) != WaitNode::kWaiting) return;
    send_waiters_.remove(node);
    node->waker.reset();
    node->state.store(WaitNode::kIdle, std::memory_order_relaxed);
  }

  // --- receiving -----------------------------------------------------------
  enum class Pop { kValue, kEmpty, kDisconnected };
  // Takes the oldest message into `out` if any (and refills the freed slot
  // from the oldest waiting sender). kDisconnected: empty and no message can
  // arrive any more (all senders gone, or the receiver closed).
  Pop try_pop(std::optional<T>& out) {
    Waker w;
    {
      internal::SyncLock l(&mu_);
      if (queue_.empty()) return (tx_closed_ || rx_closed_) ? Pop::kDisconnected : Pop::kEmpty;
      pop_locked(out, w);
    }
    w.wake();
    return Pop::kValue;
  }

  // Like try_pop, but on kEmpty registers `make()` as the receiver's waker.
  template <class MakeWaker>
  Pop pop_or_register(std::optional<T>& out, const void* key, MakeWaker&& make) {
    Waker w;
    {
      internal::SyncLock l(&mu_);
      if (queue_.empty()) {
        if (tx_closed_ || rx_closed_) return Pop::kDisconnected;
        if (rx_key_ != key || !rx_waker_) {
          rx_waker_ = make();
          rx_key_ = key;
        }
        return Pop::kEmpty;
      }
      pop_locked(out, w);
    }
    w.wake();
    return Pop::kValue;
  }

  // The receiver's waiter goes away: withdraw its waker if still registered.
  void deregister_rx(const void* key) noexcept {
    Waker gone;
    {
      internal::SyncLock l(&mu_);
      if (rx_key_ != key) return;
      gone = take_rx_waker();
    }
  }

  // Closes the receiving side: later sends fail, waiting senders fail now.
  void close() noexcept {
    std::vector<Waker> wake;
    {
      internal::SyncLock l(&mu_);
      if (rx_closed_) return;
      rx_closed_ = true;
      // Completed under the lock: a cancelling sender decides whether its
      // node is still linked by looking at `state` under this lock.
      while (WaitNode* n = send_waiters_.pop_front()) wake.push_back(n->complete(kClosed));
    }
    for (Waker& w : wake) w.wake();
  }

  std::size_t len() const {
    internal::SyncLock l(&mu_);
    return queue_.size();
  }
  bool rx_closed() const {
    internal::SyncLock l(&mu_);
    return rx_closed_;
  }
  bool disconnected() const {
    internal::SyncLock l(&mu_);
    return rx_closed_ || tx_closed_;
  }
  std::size_t free_slots() const {
    internal::SyncLock l(&mu_);
    if (capacity_ == 0) return SIZE_MAX;
    return queue_.size() >= capacity_ ? 0 : capacity_ - queue_.size();
  }

 private:
  void unref() noexcept {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  Waker take_rx_waker() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    rx_key_ = nullptr;
    return std::move(rx_waker_);
  }

  void pop_locked(std::optional<T>& out, Waker& to_wake) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    out.emplace(std::move(queue_.front()));
    queue_.pop_front();
    if (WaitNode* n = send_waiters_.pop_front()) {
      auto* sn = static_cast<SendNode*>(n);
      queue_.push_back(std::move(*sn->value));
      to_wake = sn->complete(kSent);
    }
  }

  const std::size_t capacity_;
  mutable internal::SyncMutex mu_;
  std::deque<T> queue_ ABSL_GUARDED_BY(mu_);
  // The receiver's waker, taken (and called) by whoever makes progress for it.
  Waker rx_waker_ ABSL_GUARDED_BY(mu_);
  const void* rx_key_ ABSL_GUARDED_BY(mu_) = nullptr;
  // Senders waiting for room, oldest first (bounded channels only).
  WaitList send_waiters_ ABSL_GUARDED_BY(mu_);
  bool rx_closed_ ABSL_GUARDED_BY(mu_) = false;  // receiver closed or dropped
  bool tx_closed_ ABSL_GUARDED_BY(mu_) = false;  // every sender dropped
  std::atomic<std::size_t> tx_count_{1};
  std::atomic<std::uint32_t> refs_{2};
};

}  // namespace internal

namespace mpsc {

template <class T>
class Sender;
template <class T>
class UnboundedSender;
template <class T>
class Receiver;
// Tokio spells the unbounded receiver as its own type; here both flavours
// share one Receiver.
template <class T>
using UnboundedReceiver = Receiver<T>;

template <class T>
struct Channel {
  Sender<T> tx;
  Receiver<T> rx;
};
template <class T>
struct UnboundedChannel {
  UnboundedSender<T> tx;
  Receiver<T> rx;
};

// A bounded channel buffering at most `capacity` messages.
// Throws std::invalid_argument if capacity is 0.
// Complexity: one allocation.
template <class T>
Channel<T> channel(std::size_t capacity);

// An unbounded channel: sends never wait (memory is the only limit).
// Complexity: one allocation.
template <class T>
UnboundedChannel<T> unbounded_channel();

namespace detail {
// What Sender and UnboundedSender share: a counted handle on the channel.
template <class T>
class SenderHandle {
 public:
  SenderHandle() = default;
  explicit SenderHandle(internal::MpscChan<T>* c) noexcept : chan_(c) {}
  SenderHandle(const SenderHandle& o) noexcept : chan_(o.chan_) {
    if (chan_ != nullptr) chan_->add_sender();
  }
  SenderHandle(SenderHandle&& o) noexcept : chan_(std::exchange(o.chan_, nullptr)) {}
  SenderHandle& operator=(const SenderHandle& o) noexcept {
    if (this != &o) *this = SenderHandle(o);
    return *this;
  }
  SenderHandle& operator=(SenderHandle&& o) noexcept {
    if (this != &o) {
      reset();
      chan_ = std::exchange(o.chan_, nullptr);
    }
    return *this;
  }
  ~SenderHandle() { reset(); }
  void reset() noexcept {
    if (chan_ != nullptr) std::exchange(chan_, nullptr)->drop_sender();
  }

 protected:
  internal::MpscChan<T>* checked() const {
    if (chan_ == nullptr) throw std::logic_error("mpsc: use of a moved-from Sender");
    return chan_;
  }
  internal::MpscChan<T>* chan_ = nullptr;
};
}  // namespace detail

// The sending half of a bounded channel. Copyable: each copy is one more
// sender; the receiver sees the end of the stream when the last is dropped.
template <class T>
class Sender : public detail::SenderHandle<T> {
  using Chan = internal::MpscChan<T>;
  using detail::SenderHandle<T>::chan_;
  using detail::SenderHandle<T>::checked;

 public:
  Sender() = default;

  // `co_await tx.send(value)`: buffers `value`, waiting for room while the
  // channel is full. Yields true once buffered, false if the receiver is (or
  // becomes, while waiting) closed or dropped; the value is then destroyed
  // with the awaiter. Waiting senders are served in FIFO order.
  // Cancel-safe: if the waiting task is cancelled, the value was either
  // already moved into the buffer (delivered) or is destroyed with the
  // awaiter, and the awaiter leaves no waker behind.
  // The Sender must outlive the awaiter.
  // Complexity: O(1) under the channel lock.
  class SendAwaiter : public internal::LeafAwaiter<SendAwaiter> {
   public:
    SendAwaiter(Chan* c, T&& v) : chan_(c), value_(std::move(v)) { node_.value = &value_; }
    SendAwaiter(const SendAwaiter&) = delete;
    SendAwaiter& operator=(const SendAwaiter&) = delete;
    ~SendAwaiter() {
      if (started_) chan_->cancel_waiter(&node_);
    }
    bool poll_ready(internal::TaskHeader* self) override {
      if (!internal::coop_poll_proceed(self)) return false;
      if (!started_) {
        started_ = true;
        switch (chan_->push_or_wait(&node_, self, [self] { return self->waker(); })) {
          case Chan::TryPush::kPushed:
            ok_ = true;
            break;
          case Chan::TryPush::kClosed:
            ok_ = false;
            break;
          case Chan::TryPush::kFull:
            return false;
        }
        internal::coop_spend();
        return true;
      }
      switch (node_.state.load(std::memory_order_acquire)) {
        case Chan::kSent:
          ok_ = true;
          break;
        case Chan::kClosed:
          ok_ = false;
          break;
        default:
          if (node_.key != self)
            chan_->update_waiter(&node_, self, [self] { return self->waker(); });
          return false;
      }
      internal::coop_spend();
      return true;
    }
    bool await_resume() noexcept { return ok_; }

   private:
    Chan* chan_;
    T value_;
    typename Chan::SendNode node_;
    bool started_ = false;
    bool ok_ = false;
  };
  SendAwaiter send(T value) { return SendAwaiter(checked(), std::move(value)); }

  // Buffers `value` now if there is room, without waiting. Moves from
  // `value` only when it returns OK.
  //   OK                    buffered
  //   kResourceExhausted    the channel is full (senders are waiting or the
  //                         buffer holds `capacity` messages)
  //   kFailedPrecondition   the receiver is closed or dropped
  // (Error statuses carry no message, so they never allocate.)
  // Complexity: O(1) under the channel lock.
  absl::Status try_send(T&& value) {
    switch (checked()->try_push(value)) {
      case Chan::TryPush::kPushed:
        return absl::OkStatus();
      case Chan::TryPush::kFull:
        return absl::Status(absl::StatusCode::kResourceExhausted, "");
      case Chan::TryPush::kClosed:
        break;
    }
    return absl::Status(absl::StatusCode::kFailedPrecondition, "");
  }
  absl::Status try_send(const T& value) {
    T copy(value);
    return try_send(std::move(copy));
  }

  // Blocks the calling thread until `value` is buffered (true) or the
  // receiver is closed (false; the value is destroyed). For threads outside
  // the runtime: throws std::logic_error when called from inside a task.
  bool blocking_send(T value) {
    internal::assert_not_in_task(
        "mpsc: blocking_send() called from inside a task; co_await send()");
    Chan* c = checked();
    typename Chan::SendNode node;
    node.value = &value;
    switch (c->push_or_wait(&node, internal::current_thread_waker_key(),
                            [] { return internal::thread_waker(); })) {
      case Chan::TryPush::kPushed:
        return true;
      case Chan::TryPush::kClosed:
        return false;
      case Chan::TryPush::kFull:
        break;
    }
    for (;;) {
      const std::uint32_t st = node.state.load(std::memory_order_acquire);
      if (st == Chan::kSent) return true;
      if (st == Chan::kClosed) return false;
      internal::park_current_thread();
    }
  }

  // True once the receiver was closed or dropped. A snapshot.
  // Complexity: takes the channel lock.
  bool is_closed() const { return checked()->rx_closed(); }
  // Free buffer slots right now (Tokio's capacity()). A snapshot.
  std::size_t capacity() const { return checked()->free_slots(); }
  // The buffer size the channel was created with.
  std::size_t max_capacity() const { return checked()->max_capacity(); }
  // True when both senders feed the same channel.
  bool same_channel(const Sender& o) const noexcept { return chan_ == o.chan_; }

 private:
  friend Channel<T> channel<T>(std::size_t);
  explicit Sender(Chan* c) noexcept : detail::SenderHandle<T>(c) {}
};

// The sending half of an unbounded channel. Copyable, like Sender.
template <class T>
class UnboundedSender : public detail::SenderHandle<T> {
  using Chan = internal::MpscChan<T>;
  using detail::SenderHandle<T>::chan_;
  using detail::SenderHandle<T>::checked;

 public:
  UnboundedSender() = default;

  // Buffers `value` and wakes the receiver; never waits. Returns false if the
  // receiver is closed or dropped: the value is then destroyed before send
  // returns.
  // Complexity: O(1) amortised under the channel lock.
  bool send(T value) { return checked()->try_push(value) == Chan::TryPush::kPushed; }

  // True once the receiver was closed or dropped. A snapshot.
  bool is_closed() const { return checked()->rx_closed(); }
  bool same_channel(const UnboundedSender& o) const noexcept { return chan_ == o.chan_; }

 private:
  friend UnboundedChannel<T> unbounded_channel<T>();
  explicit UnboundedSender(Chan* c) noexcept : detail::SenderHandle<T>(c) {}
};

// The receiving half (bounded or unbounded). Move-only.
template <class T>
class Receiver {
  using Chan = internal::MpscChan<T>;

 public:
  Receiver() = default;
  Receiver(Receiver&& o) noexcept : chan_(std::exchange(o.chan_, nullptr)) {}
  Receiver& operator=(Receiver&& o) noexcept {
    if (this != &o) {
      reset();
      chan_ = std::exchange(o.chan_, nullptr);
    }
    return *this;
  }
  Receiver(const Receiver&) = delete;
  Receiver& operator=(const Receiver&) = delete;
  // Closes the channel (waiting senders fail) and destroys buffered messages.
  ~Receiver() { reset(); }

  // `co_await rx.recv()`: the oldest message, waiting for one if the buffer is
  // empty; std::nullopt once the buffer is empty and every sender is gone (or
  // the receiver was closed). Cancel-safe: a message is taken only when the
  // awaiter completes, so cancelling the waiting task loses nothing, and its
  // waker is withdrawn.
  // Thread-safety: one recv() at a time (single consumer).
  // Complexity: O(1) under the channel lock.
  class RecvAwaiter : public internal::LeafAwaiter<RecvAwaiter> {
   public:
    explicit RecvAwaiter(Chan* c) noexcept : chan_(c) {}
    RecvAwaiter(const RecvAwaiter&) = delete;
    RecvAwaiter& operator=(const RecvAwaiter&) = delete;
    ~RecvAwaiter() {
      if (registered_ != nullptr) chan_->deregister_rx(registered_);
    }
    bool poll_ready(internal::TaskHeader* self) override {
      if (chan_ == nullptr) return true;
      if (!internal::coop_poll_proceed(self)) return false;
      if (chan_->pop_or_register(out_, self, [self] { return self->waker(); }) ==
          Chan::Pop::kEmpty) {
        registered_ = self;
        return false;
      }
      registered_ = nullptr;
      internal::coop_spend();
      return true;
    }
    std::optional<T> await_resume() noexcept(std::is_nothrow_move_constructible_v<T>) {
      return std::move(out_);
    }

   private:
    Chan* chan_;
    const void* registered_ = nullptr;  // the key our waker was registered with
    std::optional<T> out_;
  };
  RecvAwaiter recv() noexcept { return RecvAwaiter(chan_); }

  // Takes the oldest message without waiting.
  //   OK                    a message
  //   kUnavailable          the buffer is empty (try again later)
  //   kFailedPrecondition   empty, and nothing can arrive any more (every
  //                         sender gone, or the receiver closed)
  // Complexity: O(1) under the channel lock.
  absl::StatusOr<T> try_recv() {
    if (chan_ == nullptr) return absl::Status(absl::StatusCode::kFailedPrecondition, "");
    std::optional<T> out;
    switch (chan_->try_pop(out)) {
      case Chan::Pop::kValue:
        return std::move(*out);
      case Chan::Pop::kEmpty:
        return absl::Status(absl::StatusCode::kUnavailable, "");
      case Chan::Pop::kDisconnected:
        break;
    }
    return absl::Status(absl::StatusCode::kFailedPrecondition, "");
  }

  // Blocks the calling thread for the next message; std::nullopt at the end
  // of the stream, like recv(). For threads outside the runtime: throws
  // std::logic_error when called from inside a task.
  std::optional<T> blocking_recv() {
    internal::assert_not_in_task(
        "mpsc: blocking_recv() called from inside a task; co_await recv()");
    if (chan_ == nullptr) return std::nullopt;
    const void* key = internal::current_thread_waker_key();
    std::optional<T> out;
    for (;;) {
      switch (chan_->pop_or_register(out, key, [] { return internal::thread_waker(); })) {
        case Chan::Pop::kValue:
          return out;
        case Chan::Pop::kDisconnected:
          return std::nullopt;
        case Chan::Pop::kEmpty:
          internal::park_current_thread();
          break;
      }
    }
  }

  // Closes the channel for the senders without dropping the receiver: sends
  // fail from now on and senders waiting for room fail now; messages already
  // buffered can still be received, then recv() yields std::nullopt.
  // Complexity: O(waiting senders) under the channel lock.
  void close() noexcept {
    if (chan_ != nullptr) chan_->close();
  }

  // Buffered messages right now. A snapshot.
  std::size_t len() const { return chan_ == nullptr ? 0 : chan_->len(); }
  bool is_empty() const { return len() == 0; }
  // True once close() was called or every sender was dropped (Tokio's
  // Receiver::is_closed); buffered messages may still be waiting. A snapshot.
  bool is_closed() const { return chan_ == nullptr || chan_->disconnected(); }

 private:
  friend Channel<T> channel<T>(std::size_t);
  friend UnboundedChannel<T> unbounded_channel<T>();
  explicit Receiver(Chan* c) noexcept : chan_(c) {}
  void reset() noexcept {
    if (chan_ != nullptr) std::exchange(chan_, nullptr)->drop_receiver();
  }
  Chan* chan_ = nullptr;
};

template <class T>
Channel<T> channel(std::size_t capacity) {
  if (capacity == 0) throw std::invalid_argument("mpsc: a bounded channel needs capacity > 0");
  auto* c = new internal::MpscChan<T>(capacity);
  return Channel<T>{Sender<T>(c), Receiver<T>(c)};
}

template <class T>
UnboundedChannel<T> unbounded_channel() {
  auto* c = new internal::MpscChan<T>(0);
  return UnboundedChannel<T>{UnboundedSender<T>(c), Receiver<T>(c)};
}

}  // namespace mpsc
}  // namespace tideloop
