// Lifetime of a RuntimeCore: freed when its owners (Runtime and Handles) are
// gone, after shutdown completed every task and no thread is still inside a
// wake-up that could reach it (see task/wake_quiescence.hpp).
#include "task/wake_quiescence.hpp"
#include "tideloop/runtime.hpp"

namespace tideloop::internal {

std::shared_ptr<RuntimeCore> adopt_core(RuntimeCore* core) {
  std::shared_ptr<RuntimeCore> sp(core, [](RuntimeCore* c) {
    c->shutdown();
    wait_for_wakers_quiescent();
    delete c;
  });
  core->self = sp;
  return sp;
}

}  // namespace tideloop::internal
