#include "task/wake_quiescence.hpp"

#include <mutex>
#include <thread>
#include <vector>

namespace tideloop::internal {
namespace {

std::mutex& registry_mu() {
  static std::mutex mu;
  return mu;
}
std::vector<WakeSlot*>& registry() {
  static auto* v = new std::vector<WakeSlot*>();  // never destroyed: used at exit
  return *v;
}

struct SlotOwner {
  WakeSlot* slot = nullptr;
  ~SlotOwner() {
    if (!slot) return;
    std::lock_guard<std::mutex> g(registry_mu());
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
    std::lock_guard<std::mutex> g(registry_mu());
    registry().push_back(s);
  }
  tl_owner.slot = s;
  tl_wake_slot = s;
  return s;
}

void wait_for_wakers_quiescent() noexcept {
  std::vector<std::pair<WakeSlot*, std::uint64_t>> busy;
  {
    std::lock_guard<std::mutex> g(registry_mu());
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
