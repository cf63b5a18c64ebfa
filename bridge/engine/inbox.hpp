// BridgeInbox: how work reaches the bridge thread from any other thread, and how the bridge is
// woken only when it actually sleeps.
//
// Producers are threads other than the bridge that hand it a completion: run_in_executor
// results (native/executor.cpp), name-resolution results, and later the subprocess reaper. A
// producer may or may not hold the GIL: the executor's drainers post while they still hold it
// (so they can drop a call whose loop closed meanwhile without waiting for the GIL again), the
// resolver threads post without it. Either way a node carries no Python reference that its
// producer must drop later: the bridge delivers or discards it. Python threads calling
// call_soon_threadsafe() hold the GIL, as the bridge does whenever it touches its ready queue, so
// they push onto that queue directly and only use the wake-up half of this file
// (wake_if_sleeping). The consumer is the one thread running the loop. The queue is an intrusive
// Treiber stack: push is one CAS, the consumer takes the whole stack with one exchange and
// reverses it, so each producer's items come out in the order it pushed them. Because the
// consumer never pops single nodes there is no ABA problem and no node is touched after it was
// handed over.
//
// A node carries its own deliver/discard functions, so the loop drains the inbox without knowing
// the kinds of work that post to it: `deliver` runs on the bridge thread with the GIL held and
// consumes the node; `discard` runs (GIL held) when the loop closed before delivery.
//
// Wake-up protocol (a flag, not a syscall per item): before blocking, the bridge stores
// kSleeping and re-checks the inbox; a producer pushes, then reads the state and, only if it sees
// kSleeping and wins the CAS to kNotified, writes the eventfd. Both sides use seq_cst, so either
// the producer sees kSleeping or the bridge sees the pushed node (Dekker): no lost wake-up, and
// at most one eventfd write per sleep however many items arrive. For the ready queue the GIL
// gives the same guarantee: the bridge stores kSleeping and re-checks the queue before it
// releases the GIL to block, and a Python producer pushes and reads the state while holding it.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>

namespace tideloop::bridge {

struct LoopObject;

struct InboxNode {
  InboxNode* next = nullptr;  // written by the producer before the push, by the consumer after
  // Bridge thread, GIL held: consume the node (resolve a future...) and free it.
  void (*deliver)(InboxNode* self, LoopObject* loop) = nullptr;
  // Bridge thread or a thread holding the GIL: the loop closed, free the node undelivered.
  void (*discard)(InboxNode* self) = nullptr;
};

class BridgeInbox {
 public:
  // Any thread. Never blocks, never allocates.
  void push(InboxNode* node) {
    InboxNode* head = head_.load(std::memory_order_relaxed);
    do {
      node->next = head;
    } while (!head_.compare_exchange_weak(head, node, std::memory_order_seq_cst,
                                          std::memory_order_relaxed));
  }

  // Bridge thread only. Returns the pushed nodes oldest-first (per producer), or nullptr.
  InboxNode* take_all() {
    if (head_.load(std::memory_order_relaxed) == nullptr) return nullptr;
    InboxNode* n = head_.exchange(nullptr, std::memory_order_acquire);
    InboxNode* reversed = nullptr;
    while (n != nullptr) {
      InboxNode* next = n->next;
      n->next = reversed;
      reversed = n;
      n = next;
    }
    return reversed;
  }

  // Bridge thread only. Returns the pushed nodes newest-first, or nullptr (no reversal: the
  // caller replays them in order from an array, touching each node once).
  InboxNode* take_all_newest_first() {
    if (head_.load(std::memory_order_relaxed) == nullptr) return nullptr;
    return head_.exchange(nullptr, std::memory_order_acquire);
  }

  bool empty_seq_cst() const { return head_.load(std::memory_order_seq_cst) == nullptr; }

 private:
  // Written by every producer (CAS) and by the consumer (exchange).
  std::atomic<InboxNode*> head_{nullptr};
};

// The part of a loop that native threads may reference: the inbox and the wake-up eventfd. Held
// by std::shared_ptr so a native job that outlives the Python loop object still posts into valid
// memory (the post is then dropped by the job, see executor.cpp).
class BridgeCore {
 public:
  BridgeCore() : event_fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  ~BridgeCore() {
    if (event_fd_ >= 0) ::close(event_fd_);
  }
  BridgeCore(const BridgeCore&) = delete;
  BridgeCore& operator=(const BridgeCore&) = delete;

  int event_fd() const { return event_fd_; }

  // Any thread: enqueue, and wake the bridge if (and only if) it sleeps.
  void post(InboxNode* node) {
    inbox_.push(node);
    wake_if_sleeping();
  }

  // Any thread, after it published work by other means: wake the bridge if (and only if) it
  // sleeps and nobody woke it yet. Python threads use this after pushing onto the ready queue
  // under the GIL (handles/handle.cpp, call_soon_threadsafe): the bridge stores kSleeping while it
  // still holds the GIL and re-checks the ready queue after that store, so a producer that gets the
  // GIL later sees kSleeping, and one that had it earlier left work the bridge sees.
  void wake_if_sleeping() {
    if (state_.load(std::memory_order_seq_cst) == kSleeping) {
      int expected = kSleeping;
      if (state_.compare_exchange_strong(expected, kNotified, std::memory_order_seq_cst)) {
        wake();
      }
    }
  }

  // Bridge thread: announce the intent to block. Returns false (and stays awake) when something
  // was posted meanwhile, in which case the bridge must not block. `idle()` is the caller's own
  // re-check of work published outside the inbox (the ready queue); it runs after the store.
  template <class Idle>
  bool prepare_sleep(Idle&& idle) {
    state_.store(kSleeping, std::memory_order_seq_cst);
    if (!inbox_.empty_seq_cst() || !idle()) {
      state_.store(kAwake, std::memory_order_relaxed);
      return false;
    }
    return true;
  }

  // Bridge thread, after the wait returned.
  void finish_sleep() { state_.store(kAwake, std::memory_order_seq_cst); }

  // Bridge thread: the eventfd was readable; reset it.
  void drain_wake() {
    std::uint64_t v;
    while (::read(event_fd_, &v, sizeof v) < 0 && errno == EINTR) {
    }
  }

  InboxNode* take_all() { return inbox_.take_all(); }
  InboxNode* take_all_newest_first() { return inbox_.take_all_newest_first(); }

  // Number of eventfd writes so far (tests check that busy producers do not make one per item).
  std::uint64_t wake_writes() const { return wake_writes_.load(std::memory_order_relaxed); }

 private:
  enum : int { kAwake = 0, kSleeping = 1, kNotified = 2 };

  void wake() {
    wake_writes_.fetch_add(1, std::memory_order_relaxed);
    std::uint64_t one = 1;
    while (::write(event_fd_, &one, sizeof one) < 0 && errno == EINTR) {
    }
  }

  BridgeInbox inbox_;
  std::atomic<int> state_{kAwake};  // written by the bridge (store) and producers (CAS)
  std::atomic<std::uint64_t> wake_writes_{0};
  const int event_fd_;
};

}  // namespace tideloop::bridge
