// Lifetime of a RuntimeCore: freed when its owners (Runtime and Handles) and
// every task block spawned on it are gone, whichever is last.
#include "tideloop/runtime.hpp"

namespace tideloop::internal {

void core_cell_released(RuntimeCore* core) noexcept {
  if (core->cell_refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete core;
}

std::shared_ptr<RuntimeCore> adopt_core(RuntimeCore* core) {
  std::shared_ptr<RuntimeCore> sp(core, [](RuntimeCore* c) {
    c->shutdown();
    core_cell_released(c);
  });
  core->self = sp;
  return sp;
}

}  // namespace tideloop::internal
