// Task<T>: laziness, values through nested awaits, exception propagation
// (co_await, join, block_on; nested Task<T>), frame lifetime.
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "test_support.hpp"
#include "tideloop/runtime.hpp"

namespace {

using tideloop::JoinHandle;
using tideloop::Runtime;
using tideloop::Task;

// Counts destructions of the live (not moved-from) instance only.
using tltest::Tracked;

struct CustomError : std::runtime_error {
  int code;
  CustomError(std::string m, int c) : std::runtime_error(std::move(m)), code(c) {}
};

Task<int> leaf(int v) {
  co_return v;
}
Task<int> middle(int v) {
  co_return co_await leaf(v) + 1;
}
Task<int> top(int v) {
  int a = co_await middle(v);
  int b = co_await middle(a);
  co_return a + b;
}

Task<int> thrower(std::string msg) {
  throw CustomError(std::move(msg), 7);
  co_return 0;
}
Task<int> pass_through() {
  co_return co_await thrower("deep") + 1;
}
Task<int> wrap_and_rethrow() {
  try {
    co_return co_await pass_through();
  } catch (const CustomError& e) {
    throw std::logic_error(std::string("wrapped: ") + e.what());
  }
}

Task<void> void_task(int* out) {
  *out = 5;
  co_return;
}

Task<std::unique_ptr<int>> move_only(int v) {
  co_return std::make_unique<int>(v);
}

Task<int> recurse(int depth) {
  if (depth == 0) co_return 0;
  co_return co_await recurse(depth - 1) + 1;
}

Task<int> with_param(Tracked t, int v) {
  (void)t;
  co_return v;
}

Runtime make_rt() {
  return Runtime::Builder::multi_thread().worker_threads(2).build();
}

TEST(Task, IsLazyAndDestroyingAnUnstartedTaskRunsParamDestructorsOnce) {
  std::atomic<int> destroyed{0};
  bool ran = false;
  {
    auto body = [&](Tracked t) -> Task<void> {
      (void)t;
      ran = true;
      co_return;
    };
    Task<void> t = body(Tracked(&destroyed));
    EXPECT_TRUE(t.valid());
    EXPECT_EQ(destroyed.load(), 0);
  }
  EXPECT_FALSE(ran);
  EXPECT_EQ(destroyed.load(), 1);
}

TEST(Task, MoveAssignDestroysThePreviousFrame) {
  std::atomic<int> d1{0}, d2{0};
  Task<int> a = with_param(Tracked(&d1), 1);
  Task<int> b = with_param(Tracked(&d2), 2);
  a = std::move(b);
  EXPECT_EQ(d1.load(), 1);
  EXPECT_EQ(d2.load(), 0);
  EXPECT_FALSE(b.valid());  // NOLINT(bugprone-use-after-move)
  auto rt = make_rt();
  EXPECT_EQ(rt.block_on(std::move(a)), 2);
  EXPECT_EQ(d2.load(), 1);
}

TEST(Task, ValuesFlowThroughNestedAwaits) {
  auto rt = make_rt();
  // middle(1) = 2, middle(2) = 3 -> 5
  EXPECT_EQ(rt.block_on(top(1)), 5);
  auto h = rt.spawn(top(10));
  EXPECT_EQ(h.join(), 11 + 12);
}

TEST(Task, VoidAndMoveOnlyResults) {
  auto rt = make_rt();
  int out = 0;
  rt.block_on(void_task(&out));
  EXPECT_EQ(out, 5);
  auto p = rt.block_on(move_only(9));
  ASSERT_TRUE(p);
  EXPECT_EQ(*p, 9);
  auto h = rt.spawn(move_only(3));
  EXPECT_EQ(*h.join(), 3);
}

TEST(Task, DeepNestingCompletes) {
  auto rt = make_rt();
  EXPECT_EQ(rt.block_on(recurse(1000)), 1000);
}

// Symmetric transfer is a tail call only when GCC optimises it: at -O0 and
// under AddressSanitizer every child->parent transfer nests a call, so a long
// loop of inline awaits overflows the stack there (known limitation, see the
// test report). Optimised builds must handle any count.
#if defined(__SANITIZE_ADDRESS__) || !defined(__OPTIMIZE__)
constexpr int kSequentialAwaits = 2000;
#else
constexpr int kSequentialAwaits = 100000;
#endif

TEST(Task, ManySequentialChildAwaitsInOneTask) {
  // Each child returns to its parent by symmetric transfer; a loop of many
  // inline awaits must not grow the stack.
  auto rt = make_rt();
  auto body = []() -> Task<long> {
    long sum = 0;
    for (int i = 0; i < kSequentialAwaits; ++i) sum += co_await leaf(i);
    co_return sum;
  };
  EXPECT_EQ(rt.block_on(body), static_cast<long>(kSequentialAwaits) * (kSequentialAwaits - 1) / 2);
}

TEST(Task, ExceptionPropagatesThroughNestedAwaitsToBlockOn) {
  auto rt = make_rt();
  try {
    rt.block_on(pass_through());
    FAIL() << "no exception";
  } catch (const CustomError& e) {
    EXPECT_STREQ(e.what(), "deep");
    EXPECT_EQ(e.code, 7);
  }
}

TEST(Task, NestedTaskCanCatchAndRethrowADifferentException) {
  auto rt = make_rt();
  EXPECT_THROW(
      {
        try {
          rt.block_on(wrap_and_rethrow());
        } catch (const std::logic_error& e) {
          EXPECT_STREQ(e.what(), "wrapped: deep");
          throw;
        }
      },
      std::logic_error);
}

TEST(Task, ExceptionFromSpawnedTaskIsRethrownByJoinAndByCoAwait) {
  auto rt = make_rt();
  auto h = rt.spawn(pass_through());
  EXPECT_THROW(h.join(), CustomError);

  auto awaiter = [&]() -> Task<std::string> {
    auto inner = tideloop::spawn(pass_through());
    try {
      co_await inner;
    } catch (const CustomError& e) {
      co_return std::string("caught ") + e.what();
    }
    co_return "no exception";
  };
  EXPECT_EQ(rt.block_on(awaiter), "caught deep");
}

TEST(Task, ExceptionAfterASuspensionPoint) {
  auto rt = make_rt();
  auto body = []() -> Task<int> {
    co_await tideloop::yield_now();
    co_await tideloop::yield_now();
    throw CustomError("late", 3);
    co_return 1;
  };
  auto h = rt.spawn(body);
  try {
    (void)h.join();
    FAIL() << "no exception";
  } catch (const CustomError& e) {
    EXPECT_EQ(e.code, 3);
  }
}

TEST(Task, ExceptionFromSpawnedCallable) {
  auto rt = make_rt();
  auto h = rt.spawn([]() -> int { throw CustomError("fn", 11); });
  EXPECT_THROW((void)h.join(), CustomError);
  auto h2 = rt.spawn([] { throw std::out_of_range("void fn"); });
  EXPECT_THROW(h2.join(), std::out_of_range);
}

TEST(Task, EmptyTaskIsRejected) {
  auto rt = make_rt();
  Task<int> empty;
  EXPECT_FALSE(empty.valid());
  EXPECT_THROW((void)rt.spawn(std::move(empty)), std::invalid_argument);
  Task<int> empty2;
  EXPECT_THROW(rt.block_on(std::move(empty2)), std::invalid_argument);
}

TEST(Task, FrameLocalsAreDestroyedOnceAfterCompletion) {
  std::atomic<int> destroyed{0};
  auto rt = make_rt();
  auto body = [&destroyed]() -> Task<int> {
    Tracked local(&destroyed);
    co_await tideloop::yield_now();
    auto child = [](Tracked t) -> Task<int> {
      co_await tideloop::yield_now();
      (void)t;
      co_return 4;
    };
    co_return co_await child(Tracked(&destroyed));
  };
  EXPECT_EQ(rt.spawn(body).join(), 4);
  EXPECT_EQ(destroyed.load(), 2);
}

TEST(Task, SpawnedLambdaCapturesLiveUntilTheTaskEnds) {
  std::atomic<int> destroyed{0};
  auto rt = make_rt();
  std::atomic<bool> saw_alive{false};
  auto h = rt.spawn([t = Tracked(&destroyed), &saw_alive]() -> Task<int> {
    co_await tideloop::yield_now();
    saw_alive = t.destroyed != nullptr;
    co_return 1;
  });
  EXPECT_EQ(h.join(), 1);
  EXPECT_TRUE(saw_alive.load());
  EXPECT_EQ(destroyed.load(), 1);
}

}  // namespace
