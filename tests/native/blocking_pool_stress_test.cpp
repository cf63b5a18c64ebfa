// Stress: BlockingPool threads are reaped (tiny keep_alive) while new jobs
// arrive, and the pool shuts down while several threads still submit. Every
// job is either run once or destroyed unrun; none is lost or run twice.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "test_support.hpp"
#include "tideloop/blocking.hpp"

namespace {

using namespace std::chrono_literals;
using tideloop::BlockingPool;

#if defined(TL_TSAN)
constexpr int kJobsPerThread = 300;
constexpr int kRounds = 5;
#else
constexpr int kJobsPerThread = 3000;
constexpr int kRounds = 20;
#endif

struct Ledger {
  std::atomic<long> created{0}, destroyed{0}, ran{0};
};
// A job's captured state: counts itself once, however often it is moved.
struct Tracked {
  Ledger* l;
  explicit Tracked(Ledger* x) : l(x) { l->created.fetch_add(1); }
  Tracked(Tracked&& o) noexcept : l(std::exchange(o.l, nullptr)) {}
  Tracked(const Tracked&) = delete;
  ~Tracked() {
    if (l) l->destroyed.fetch_add(1);
  }
};

TEST(BlockingPoolStress, ReapingRacesWithSubmits) {
  Ledger ledger;
  {
    BlockingPool::Options o;
    o.max_threads = 4;
    o.keep_alive = 1ms;  // threads die and respawn constantly
    BlockingPool pool(o);
    std::vector<std::thread> ts;
    for (int t = 0; t < 3; ++t) {
      ts.emplace_back([&, t] {
        for (int i = 0; i < kJobsPerThread; ++i) {
          EXPECT_TRUE(
              pool.submit([tr = Tracked(&ledger), l = &ledger] { l->ran.fetch_add(1); }).ok());
          if ((i + t) % 64 == 0) std::this_thread::sleep_for(2ms);  // let threads idle out
        }
      });
    }
    for (auto& t : ts) t.join();
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (ledger.ran.load() < 3L * kJobsPerThread && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(1ms);
    EXPECT_EQ(ledger.ran.load(), 3L * kJobsPerThread);
  }
  EXPECT_EQ(ledger.created.load(), ledger.destroyed.load());
}

TEST(BlockingPoolStress, ShutdownWhileSubmitting) {
  for (int round = 0; round < kRounds; ++round) {
    Ledger ledger;
    std::atomic<long> accepted{0}, refused{0};
    auto pool = std::make_unique<BlockingPool>([] {
      BlockingPool::Options o;
      o.max_threads = 3;
      o.keep_alive = 5ms;
      return o;
    }());
    std::atomic<bool> go{false};
    std::vector<std::thread> ts;
    for (int t = 0; t < 3; ++t) {
      ts.emplace_back([&] {
        while (!go.load()) {
        }
        for (int i = 0; i < kJobsPerThread / 10; ++i) {
          absl::Status s = pool->submit([tr = Tracked(&ledger), l = &ledger] {
            l->ran.fetch_add(1);
            std::this_thread::sleep_for(10us);
          });
          if (s.ok()) {
            accepted.fetch_add(1);
          } else {
            EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
            refused.fetch_add(1);
          }
        }
      });
    }
    go = true;
    std::this_thread::sleep_for(std::chrono::microseconds(200 * round));
    pool->shutdown();
    for (auto& t : ts) t.join();
    pool.reset();
    EXPECT_EQ(accepted.load() + refused.load(), 3L * (kJobsPerThread / 10));
    EXPECT_LE(ledger.ran.load(), accepted.load());
    EXPECT_EQ(ledger.created.load(), ledger.destroyed.load()) << "round " << round;
  }
}

}  // namespace
