// The task state machine over random orders of wake, abort, JoinHandle drop,
// join and completion, from several threads, through the public API only.
//
// Each round spawns a dozen tasks on a fresh multi-thread runtime (1 or 2
// workers). Every task awaits something a test thread controls (a oneshot
// receiver or a Gate), then may yield a few times, marks its body complete
// and returns. The seed plans, per task: whether and how it is woken (send,
// drop the sender, open the gate; or never), whether its handle aborts it,
// and what becomes of the handle (dropped, handed to a joiner task that
// co_awaits it, or kept and joined after shutdown); three actor threads then
// carry the plan out in a random interleaving with random pauses. Seeds: see
// model_support.hpp (TIDELOOP_SEED, TIDELOOP_MODEL_ITERS = rounds); the seed
// fixes the plan, the machine the interleaving.
//
// Invariants:
//  - the body completes at most once, and a join yields its value exactly
//    when it completed (the value it was woken with); otherwise
//    TaskCancelled;
//  - a task never woken never completes (before shutdown it is still
//    suspended, its frame alive); an abort that returned before the wake
//    began always wins; a woken task that is not aborted always completes;
//  - every coroutine frame is destroyed exactly once (a witness captured in
//    the frame counts it), whatever happened, and none is left after
//    runtime shutdown.
// abort_stress_test and task_fastpath_stress_test race one event against
// another; this one mixes all of them in orders chosen by the seed. Runs
// under ThreadSanitizer in CI (the name contains "stress").
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include "model_support.hpp"
#include "test_support.hpp"
#include "tideloop/runtime.hpp"
#include "tideloop/sync/oneshot.hpp"

namespace {

using tideloop::JoinHandle;
using tideloop::Runtime;
using tideloop::Task;
using tideloop::TaskCancelled;
namespace oneshot = tideloop::oneshot;

std::atomic<long> g_live_frames{0};

enum class Wake { kNone, kSend, kDropSender, kOpenGate };
enum class Fate { kDrop, kJoinTask, kKeep };
enum Joined : int { kNotJoined = 0, kValue = 1, kCancelled = 2, kOther = 3 };

struct Slot {
  // The plan.
  Wake wake = Wake::kNone;
  bool abort = false;
  Fate fate = Fate::kDrop;
  int expected = 0;  // the value the body returns once woken this way
  // What happened.
  std::atomic<int> frames_destroyed{0};
  std::atomic<int> body_done{0};
  std::atomic<bool> abort_returned{false};
  std::atomic<bool> abort_before_wake{false};  // the waker saw abort_returned
  std::atomic<int> joined{kNotJoined};
  std::atomic<int> value{0};
};

// Lives in the task's frame (a parameter); its destruction is the frame's.
class Witness {
 public:
  explicit Witness(Slot* s) : s_(s) { g_live_frames.fetch_add(1); }
  Witness(Witness&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  Witness(const Witness&) = delete;
  Witness& operator=(const Witness&) = delete;
  ~Witness() {
    if (s_ != nullptr) {
      s_->frames_destroyed.fetch_add(1);
      g_live_frames.fetch_sub(1);
    }
  }

 private:
  Slot* s_;
};

Task<int> body(Witness w, Slot* s, std::optional<oneshot::Receiver<int>> rx,
               std::shared_ptr<tltest::Gate> gate, int yields) {
  int v;
  if (gate) {
    co_await gate->wait();
    v = 7;
  } else {
    try {
      v = co_await *rx;
    } catch (const oneshot::RecvError&) {
      v = -1;
    }
  }
  for (int i = 0; i < yields; ++i) co_await tideloop::yield_now();
  // No suspension between this mark and the return: an abort can only
  // land before it (cancelled) or after it (the value stays).
  s->body_done.fetch_add(1);
  co_return v;
}

Task<void> joiner(JoinHandle<int> h, Slot* s) {
  try {
    const int v = co_await h;
    s->value.store(v);
    s->joined.store(kValue);
  } catch (const TaskCancelled&) {
    s->joined.store(kCancelled);
  } catch (...) {
    s->joined.store(kOther);
  }
}

void spin(unsigned n) {
  for (unsigned i = 0; i < n; ++i) asm volatile("" ::: "memory");
}

struct Totals {
  long tasks = 0, values = 0, cancelled = 0, at_shutdown = 0;
};

void state_round(std::uint64_t seed, int ntasks, Totals* tot) {
  std::mt19937_64 rng(seed);
  const std::size_t workers = 1 + rng() % 2;
  auto rt = Runtime::Builder::multi_thread().worker_threads(workers).build();
  std::vector<Slot> slots(static_cast<std::size_t>(ntasks));
  std::vector<JoinHandle<int>> handles(static_cast<std::size_t>(ntasks));
  std::vector<std::optional<oneshot::Sender<int>>> senders(static_cast<std::size_t>(ntasks));
  std::vector<std::shared_ptr<tltest::Gate>> gates(static_cast<std::size_t>(ntasks));
  constexpr int kActors = 3;
  struct Action {
    std::uint64_t key;  // order within the actor
    int task;
    enum { kWake, kAbort, kFate } what;
  };
  std::vector<Action> plan[kActors];

  for (int i = 0; i < ntasks; ++i) {
    Slot& s = slots[static_cast<std::size_t>(i)];
    const bool use_gate = rng() % 3 == 0;
    switch (rng() % 5) {
      case 0:
        s.wake = Wake::kNone;
        break;
      case 1:
        s.wake = use_gate ? Wake::kOpenGate : Wake::kDropSender;
        break;
      default:
        s.wake = use_gate ? Wake::kOpenGate : Wake::kSend;
        break;
    }
    s.abort = rng() % 2 == 0;
    s.fate = static_cast<Fate>(rng() % 3);
    s.expected = use_gate ? 7 : s.wake == Wake::kDropSender ? -1 : 1000 + i;
    const int yields = static_cast<int>(rng() % 3);
    std::optional<oneshot::Receiver<int>> rx;
    if (use_gate) {
      gates[static_cast<std::size_t>(i)] = std::make_shared<tltest::Gate>();
    } else {
      auto [tx, r] = oneshot::channel<int>();
      senders[static_cast<std::size_t>(i)].emplace(std::move(tx));
      rx.emplace(std::move(r));
    }
    handles[static_cast<std::size_t>(i)] =
        rt.spawn(body(Witness(&s), &s, std::move(rx), gates[static_cast<std::size_t>(i)], yields));
    // The handle's actions run on one actor (a JoinHandle is used by one
    // thread at a time), the abort before the handle goes; the wake on any.
    const int owner = static_cast<int>(rng() % kActors);
    std::uint64_t k_abort = rng(), k_fate = rng();
    if (k_abort > k_fate) std::swap(k_abort, k_fate);
    if (s.abort) plan[owner].push_back({k_abort, i, Action::kAbort});
    plan[owner].push_back({k_fate, i, Action::kFate});
    if (s.wake != Wake::kNone) plan[rng() % kActors].push_back({rng(), i, Action::kWake});
  }

  std::vector<std::thread> actors;
  for (int a = 0; a < kActors; ++a) {
    std::sort(plan[a].begin(), plan[a].end(),
              [](const Action& x, const Action& y) { return x.key < y.key; });
    actors.emplace_back([&, a] {
      std::minstd_rand pause(static_cast<unsigned>(seed) + static_cast<unsigned>(a));
      for (const Action& act : plan[a]) {
        spin(pause() % 3000);
        const auto i = static_cast<std::size_t>(act.task);
        Slot& s = slots[i];
        switch (act.what) {
          case Action::kWake:
            // An abort that returned before this point must win.
            s.abort_before_wake.store(s.abort_returned.load(std::memory_order_acquire));
            if (s.wake == Wake::kOpenGate) {
              gates[i]->open();
            } else if (s.wake == Wake::kSend) {
              senders[i]->send(s.expected);  // false if the task is gone: fine
            } else {
              senders[i].reset();  // the receiver sees RecvError
            }
            break;
          case Action::kAbort:
            handles[i].abort();
            if (pause() % 4 == 0) handles[i].abort();  // idempotent
            s.abort_returned.store(true, std::memory_order_release);
            break;
          case Action::kFate:
            if (s.fate == Fate::kDrop) {
              handles[i].detach();
            } else if (s.fate == Fate::kJoinTask) {
              rt.spawn(joiner(std::move(handles[i]), &s)).detach();
            }  // kKeep: the test thread joins it after shutdown
            break;
        }
      }
    });
  }
  for (auto& t : actors) t.join();

  const std::string at = "\n  round seed " + std::to_string(seed) + " (" + std::to_string(workers) +
                         " workers); replay the plan: " + tlmodel::model_replay(seed);
  // Quiescence: every task that was woken or aborted finishes (frame gone)
  // and its joiner task reports; the others stay suspended.
  const bool settled = tltest::eventually([&] {
    for (Slot& s : slots) {
      if (s.wake == Wake::kNone && !s.abort) continue;
      if (s.frames_destroyed.load() == 0) return false;
      if (s.fate == Fate::kJoinTask && s.joined.load() == kNotJoined) return false;
    }
    return true;
  });
  if (!settled) {
    std::string which;
    for (int i = 0; i < ntasks; ++i) {
      const Slot& s = slots[static_cast<std::size_t>(i)];
      if ((s.wake != Wake::kNone || s.abort) &&
          (s.frames_destroyed.load() == 0 ||
           (s.fate == Fate::kJoinTask && s.joined.load() == kNotJoined)))
        which += " " + std::to_string(i) + "(wake " + std::to_string(static_cast<int>(s.wake)) +
                 ", abort " + std::to_string(s.abort) + ", fate " +
                 std::to_string(static_cast<int>(s.fate)) + ")";
    }
    FAIL() << "woken or aborted tasks did not finish within 10 s:" << which << at;
  }
  for (int i = 0; i < ntasks; ++i) {
    Slot& s = slots[static_cast<std::size_t>(i)];
    if (s.wake == Wake::kNone && !s.abort) {
      EXPECT_EQ(s.frames_destroyed.load(), 0) << "task " << i << ": never woken, yet gone" << at;
      EXPECT_EQ(s.body_done.load(), 0) << "task " << i << ": never woken, yet completed" << at;
      if (s.fate == Fate::kKeep)
        EXPECT_FALSE(handles[static_cast<std::size_t>(i)].is_finished()) << "task " << i << at;
      ++tot->at_shutdown;
    } else if (!s.abort) {
      EXPECT_EQ(s.body_done.load(), 1)
          << "task " << i << ": woken, not aborted, not completed" << at;
    }
  }

  rt.shutdown();
  for (int i = 0; i < ntasks; ++i) {
    Slot& s = slots[static_cast<std::size_t>(i)];
    const int done = s.body_done.load();
    EXPECT_LE(done, 1) << "task " << i << ": body completed twice" << at;
    EXPECT_EQ(s.frames_destroyed.load(), 1)
        << "task " << i << ": frame destroyed " << s.frames_destroyed.load() << " times" << at;
    if (done == 1) {
      EXPECT_NE(s.wake, Wake::kNone) << "task " << i << at;
      EXPECT_FALSE(s.abort_before_wake.load())
          << "task " << i << ": completed although aborted before its wake" << at;
    }
    int joined = s.joined.load();
    int value = s.value.load();
    if (s.fate == Fate::kKeep) {
      try {
        value = handles[static_cast<std::size_t>(i)].join();
        joined = kValue;
      } catch (const TaskCancelled&) {
        joined = kCancelled;
      } catch (...) {
        joined = kOther;
      }
    }
    EXPECT_NE(joined, kOther) << "task " << i << ": join threw something else" << at;
    if (joined == kValue) {
      EXPECT_EQ(done, 1) << "task " << i << ": joined a value it never returned" << at;
      EXPECT_EQ(value, s.expected) << "task " << i << at;
      ++tot->values;
    } else if (joined == kCancelled) {
      EXPECT_EQ(done, 0) << "task " << i << ": completed but joined as cancelled" << at;
      ++tot->cancelled;
    } else if (s.fate == Fate::kJoinTask) {
      // Only a joiner task cancelled by shutdown itself reports nothing.
      EXPECT_TRUE(s.wake == Wake::kNone && !s.abort)
          << "task " << i << ": joiner never finished" << at;
    }
  }
  EXPECT_EQ(g_live_frames.load(), 0) << "frames leaked past shutdown" << at;
  tot->tasks += ntasks;
}

TEST(TaskStateModelStress, RandomWakeAbortDropJoinOrders) {
  const tlmodel::Cases rounds(700, 250, 400);
  Totals tot;
  for (long k = 0; k < rounds.count(); ++k) {
    state_round(rounds.seed(k), 12, &tot);
    if (HasFailure()) return;
  }
  std::printf(
      "%ld rounds, %ld tasks: %ld joined with a value, %ld joined as cancelled, "
      "%ld never woken (cancelled by shutdown)\n",
      rounds.count(), tot.tasks, tot.values, tot.cancelled, tot.at_shutdown);
}

}  // namespace
