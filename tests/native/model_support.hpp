// Seeds and sizes for the model-based tests (tests/native/model_*_test.cpp).
//
//  - TIDELOOP_SEED=N replays: case k of a test uses seed N + k, so the seed
//    printed with a failure, run with TIDELOOP_MODEL_ITERS=1, replays exactly
//    that case. Unset, the base seed is fresh each run (printed first), so CI
//    explores new cases every time while any failure stays reproducible.
//  - TIDELOOP_MODEL_ITERS=N sets the number of random cases (rounds for the
//    stress tests); the default is per build (Release / ASan / TSan), sized
//    for CI.
// A failure message carries the case seed, the step and the replay command
// (model_replay()), because a random test that cannot be replayed is noise.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "test_support.hpp"

namespace tlmodel {

inline std::uint64_t env_u64(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  return std::strtoull(v, nullptr, 0);
}

// The path of this test executable (for the replay command).
inline std::string self_exe() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "<test executable>";
  buf[n] = '\0';
  return buf;
}

inline std::string current_test_name() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  if (info == nullptr) return "*";
  return std::string(info->test_suite_name()) + "." + info->name();
}

// The command that replays one case.
inline std::string model_replay(std::uint64_t case_seed) {
  return "TIDELOOP_SEED=" + std::to_string(case_seed) + " TIDELOOP_MODEL_ITERS=1 " + self_exe() +
         " --gtest_filter=" + current_test_name();
}

// The seeds and the number of cases of one test; prints them.
class Cases {
 public:
  // release/asan/tsan: the default number of cases per build.
  Cases(long release, long asan, long tsan) {
    const char* s = std::getenv("TIDELOOP_SEED");
    base_ = (s != nullptr && *s != '\0') ? std::strtoull(s, nullptr, 0)
                                         : (std::uint64_t{std::random_device{}()} << 20) ^
                                               static_cast<std::uint64_t>(::getpid());
    count_ = static_cast<long>(env_u64(
        "TIDELOOP_MODEL_ITERS", static_cast<std::uint64_t>(tltest::scaled(release, asan, tsan))));
    std::printf("[seed] TIDELOOP_SEED=%llu (%ld cases) %s\n",
                static_cast<unsigned long long>(base_), count_, current_test_name().c_str());
    std::fflush(stdout);
  }
  long count() const { return count_; }
  std::uint64_t seed(long k) const { return base_ + static_cast<std::uint64_t>(k); }

 private:
  std::uint64_t base_;
  long count_;
};

// What to attach to an assertion in case k, step `step`.
inline std::string where(std::uint64_t case_seed, long step) {
  return "\n  at step " + std::to_string(step) + " of seed " + std::to_string(case_seed) +
         "\n  replay: " + model_replay(case_seed);
}

}  // namespace tlmodel
