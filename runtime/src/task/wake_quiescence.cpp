#include "task/wake_quiescence.hpp"

#include <pthread.h>

#include <thread>
#include <vector>

#include "tideloop/internal/annotated_mutex.hpp"

namespace tideloop::internal {
namespace {

void atfork_prepare();
void atfork_parent();
void atfork_child();

StdMutex& registry_mu() {
  static StdMutex mu;
  static const int atfork = pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
  (void)atfork;
  return mu;
}
std::vector<WakeSlot*>& registry() ABSL_EXCLUSIVE_LOCKS_REQUIRED(registry_mu()) {
  static auto* v = new std::vector<WakeSlot*>();  // never destroyed: used at exit
  return *v;
}

// fork(): the child has only the forking thread, but the registry still
// lists the slots of the parent's other threads, and one of them may have
// been inside a wake (odd) at that instant: the child's first runtime
// destructor then waited for it forever (tests/reliability/native_fork_test).
// The lock is held across fork() so the child gets a consistent list and a
// lock nobody holds; the child keeps only its own slot. The others are left
// allocated (no allocation or free inside the fork handler); their threads
// do not exist in the child.
void atfork_prepare() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  registry_mu().lock();
}
void atfork_parent() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  registry_mu().unlock();
}
void atfork_child() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  auto& r = registry();
  r.clear();  // keeps the capacity: the push_back below does not allocate
  if (tl_wake_slot != nullptr) r.push_back(tl_wake_slot);
  registry_mu().unlock();
}

struct SlotOwner {
  WakeSlot* slot = nullptr;
  ~SlotOwner() {
    if (!slot) return;
    LockGuard<StdMutex> g(registry_mu());
    auto& r = registry();
    for (auto& s : r) {
      if (s == slot) {
        s = r.back();
        r.pop_back();
        break;
      }
    }
    tl_wake_slot = nullptr;
    delete slot;
  }
};
thread_local SlotOwner tl_owner;

}  // namespace

WakeSlot* register_wake_slot() {
  auto* s = new WakeSlot();
  {
    LockGuard<StdMutex> g(registry_mu());
    registry().push_back(s);
  }
  tl_owner.slot = s;
  tl_wake_slot = s;
  return s;
}

void wait_for_wakers_quiescent() noexcept {
  std::vector<std::pair<WakeSlot*, std::uint64_t>> busy;
  {
    LockGuard<StdMutex> g(registry_mu());
    for (WakeSlot* s : registry()) {
      const std::uint64_t v = s->seq.load(std::memory_order_acquire);
      if (v & 1) busy.emplace_back(s, v);
    }
    // Slots cannot be freed while we wait: their threads are inside a wake,
    // so they have not exited. Wait under the lock for that reason.
    for (auto& [s, v] : busy) {
      while (s->seq.load(std::memory_order_acquire) == v) std::this_thread::yield();
    }
  }
}

}  // namespace tideloop::internal
