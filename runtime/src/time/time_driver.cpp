// TimeDriver and the Sleep entry points (timer_poll / timer_cancel). See
// time_driver.hpp for the sharding and the driver protocol.
#include "time/time_driver.hpp"

#include <algorithm>
#include <bit>

#include "io/event_driver.hpp"

namespace tideloop::internal {

namespace {
constexpr std::int64_t kNotSleeping = std::numeric_limits<std::int64_t>::min();

// Spreads threads over shards: each thread gets the next number on first use.
std::atomic<std::uint32_t> g_next_thread_slot{0};
thread_local std::uint32_t tl_thread_slot = ~0u;

std::uint32_t thread_slot() noexcept {
  if (tl_thread_slot == ~0u) tl_thread_slot = g_next_thread_slot.fetch_add(1);
  return tl_thread_slot;
}

std::int64_t now_ns() noexcept {
  return to_ns(Clock::now());
}
}  // namespace

// --- near heap: a binary min-heap on deadline_ns with back-indices ---

namespace {
void heap_set(std::vector<TimerEntry*>& h, std::size_t i, TimerEntry* e) {
  h[i] = e;
  e->heap_index = static_cast<std::uint32_t>(i);
}
void sift_up(std::vector<TimerEntry*>& h, std::size_t i) {
  TimerEntry* e = h[i];
  while (i > 0) {
    const std::size_t p = (i - 1) / 2;
    if (h[p]->deadline_ns <= e->deadline_ns) break;
    heap_set(h, i, h[p]);
    i = p;
  }
  heap_set(h, i, e);
}
void sift_down(std::vector<TimerEntry*>& h, std::size_t i) {
  TimerEntry* e = h[i];
  const std::size_t n = h.size();
  for (;;) {
    std::size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && h[c + 1]->deadline_ns < h[c]->deadline_ns) ++c;
    if (e->deadline_ns <= h[c]->deadline_ns) break;
    heap_set(h, i, h[c]);
    i = c;
  }
  heap_set(h, i, e);
}
}  // namespace

void near_push(std::vector<TimerEntry*>& h, TimerEntry* e) {
  h.push_back(e);
  sift_up(h, h.size() - 1);
}

void near_remove(std::vector<TimerEntry*>& h, TimerEntry* e) {
  const std::size_t i = e->heap_index;
  e->heap_index = TimerEntry::kNoHeap;
  TimerEntry* last = h.back();
  h.pop_back();
  if (last == e) return;
  heap_set(h, i, last);
  if (i > 0 && h[(i - 1) / 2]->deadline_ns > last->deadline_ns) {
    sift_up(h, i);
  } else {
    sift_down(h, i);
  }
}

TimerEntry* near_pop(std::vector<TimerEntry*>& h) {
  TimerEntry* top = h.front();
  near_remove(h, top);
  return top;
}

// --- TimeDriver ---

TimeDriver::TimeDriver(std::size_t workers, std::function<void()> unpark)
    : origin_ns_(now_ns()), unpark_(std::move(unpark)), sleep_until_(kNotSleeping) {
  // Twice as many shards as workers (a power of two): workers and the odd
  // block_on or blocking thread rarely land on the same lock.
  std::size_t n = std::bit_ceil(std::max<std::size_t>(2, 2 * workers));
  if (n > 64) n = 64;
  shards_.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    auto s = std::make_unique<TimerShard>();
    s->driver = this;
    s->wheel.fast_forward(0);
    shards_.push_back(std::move(s));
  }
  shard_mask_ = n - 1;
  fired_.reserve(256);
}

TimeDriver::~TimeDriver() = default;

TimerShard& TimeDriver::shard_for_current_thread() noexcept {
  return *shards_[thread_slot() & shard_mask_];
}

void TimeDriver::attach_waker(TimerShard& s, TimerEntry& e, TaskHeader* self, Waker* evicted) {
  if (s.cache_task == self) {
    ++s.cache_users;
    e.cached_waker = true;
  } else if (s.cache_users == 0) {
    *evicted = std::move(s.cache_waker);
    s.cache_waker = self->waker();
    s.cache_task = self;
    s.cache_users = 1;
    e.cached_waker = true;
  } else {
    e.waker = self->waker();
    e.cached_waker = false;
  }
}

void TimeDriver::detach_waker(TimerShard& s, TimerEntry& e, Waker* out) noexcept {
  if (e.cached_waker) {
    e.cached_waker = false;
    --s.cache_users;
  } else {
    *out = std::move(e.waker);
  }
}

bool TimeDriver::register_entry(TimerEntry& e, TaskHeader* self) {
  TimerShard& s = shard_for_current_thread();
  std::int64_t fire_at;
  bool lowered = false;
  Waker evicted;  // dropped after unlocking
  {
    LockGuard<SpinLock> g(s.lock);
    if (s.shutdown) {
      e.state.store(TimerEntry::kShutdown, std::memory_order_release);
      return true;
    }
    // A wheel that sat empty catches up to the creation time for free, so
    // the level math and the near test below work from a recent "now".
    if (e.created_ns != 0 && s.wheel.empty())
      s.wheel.fast_forward(static_cast<std::uint64_t>(tick_floor(e.created_ns)));
    const std::int64_t base = std::max(e.created_ns, tick_time(s.wheel.elapsed()));
    if (e.deadline_ns <= base) {
      e.state.store(TimerEntry::kFired, std::memory_order_release);
      return true;
    }
    if (e.deadline_ns < base + kTickNs) {
      // Sub-millisecond path: exact deadline in the near heap.
      near_push(s.near, &e);
      fire_at = e.deadline_ns;
    } else {
      const auto tick = static_cast<std::uint64_t>(tick_ceil(e.deadline_ns));
      if (!s.wheel.insert(&e, tick)) {
        e.state.store(TimerEntry::kFired, std::memory_order_release);
        return true;
      }
      fire_at = tick_time(tick);
    }
    e.shard = &s;
    attach_waker(s, e, self, &evicted);
    e.registered_task = self;
    e.state.store(TimerEntry::kRegistered, std::memory_order_relaxed);
    if (fire_at < s.next_deadline.load(std::memory_order_relaxed)) {
      s.next_deadline.store(fire_at, std::memory_order_seq_cst);
      lowered = true;
    }
  }
  // Dekker with begin_sleep(): the driver sleeping past our deadline either
  // sees the new next_deadline or we see its sleep_until here.
  if (lowered && fire_at < sleep_until_.load(std::memory_order_seq_cst)) unpark_();
  return false;
}

void TimeDriver::fire_locked(TimerShard& s, TimerEntry* e, std::uint8_t state) {
  if (e->cached_waker) {
    fired_.push_back(s.cache_waker);  // a clone: the cache keeps its own
    e->cached_waker = false;
    --s.cache_users;
  } else {
    fired_.push_back(std::move(e->waker));
  }
  // (registered_task belongs to the task's runner; a fired entry is never
  // compared with it again.)
  // safety: the last access to *e; after this store its owner may free it.
  e->state.store(state, std::memory_order_release);
}

std::int64_t TimeDriver::recompute_locked(TimerShard& s) noexcept {
  std::int64_t next = kNever;
  if (!s.near.empty()) next = s.near.front()->deadline_ns;
  if (auto w = s.wheel.next_expiration()) next = std::min(next, tick_time(*w));
  s.next_deadline.store(next, std::memory_order_seq_cst);
  return next;
}

std::size_t TimeDriver::process(std::int64_t now) {
  const auto now_tick = static_cast<std::uint64_t>(tick_floor(now));
  for (auto& sp : shards_) {
    TimerShard& s = *sp;
    if (s.next_deadline.load(std::memory_order_acquire) > now) continue;
    LockGuard<SpinLock> g(s.lock);
    while (!s.near.empty() && s.near.front()->deadline_ns <= now)
      fire_locked(s, near_pop(s.near), TimerEntry::kFired);
    for (TimerWheelNode* n = s.wheel.advance(now_tick); n != nullptr;) {
      TimerWheelNode* nx = n->next;
      fire_locked(s, static_cast<TimerEntry*>(n), TimerEntry::kFired);
      n = nx;
    }
    recompute_locked(s);
  }
  const std::size_t n = fired_.size();
  for (auto& w : fired_) w.wake();
  fired_.clear();
  return n;
}

std::int64_t TimeDriver::next_deadline() const noexcept {
  std::int64_t next = kNever;
  for (const auto& s : shards_)
    next = std::min(next, s->next_deadline.load(std::memory_order_seq_cst));
  return next;
}

std::int64_t TimeDriver::begin_sleep(std::int64_t until) noexcept {
  sleep_until_.store(until, std::memory_order_seq_cst);
  const std::int64_t next = next_deadline();
  if (next < until) {
    sleep_until_.store(next, std::memory_order_seq_cst);
    return next;
  }
  return until;
}

void TimeDriver::end_sleep() noexcept {
  sleep_until_.store(kNotSleeping, std::memory_order_seq_cst);
}

void TimeDriver::shutdown() {
  std::vector<Waker> wakers;
  // The shards' cached wakers are only released: their task's timers fired above, each with
  // its own waker; waking the cached one too was a spurious wake-up (found by
  // tests/native/model_timer_wheel_test.cpp). Released outside the locks, like the others.
  std::vector<Waker> cached;
  for (auto& sp : shards_) {
    TimerShard& s = *sp;
    LockGuard<SpinLock> g(s.lock);
    s.shutdown = true;
    while (!s.near.empty()) fire_locked(s, near_pop(s.near), TimerEntry::kShutdown);
    for (TimerWheelNode* n = s.wheel.advance(~std::uint64_t{0} >> 1); n != nullptr;) {
      TimerWheelNode* nx = n->next;
      fire_locked(s, static_cast<TimerEntry*>(n), TimerEntry::kShutdown);
      n = nx;
    }
    s.next_deadline.store(kNever, std::memory_order_seq_cst);
    for (auto& w : fired_) wakers.push_back(std::move(w));
    fired_.clear();
    cached.push_back(std::move(s.cache_waker));
    s.cache_task = nullptr;
    s.cache_users = 0;
  }
  for (auto& w : wakers) w.wake();
}

std::size_t TimeDriver::pending() const {
  std::size_t n = 0;
  for (const auto& s : shards_) {
    LockGuard<SpinLock> g(s->lock);
    n += s->wheel.size() + s->near.size();
  }
  return n;
}

// --- the Sleep entry points ---

bool timer_poll(TimerEntry& e, TaskHeader* self) {
  const std::uint8_t st = e.state.load(std::memory_order_acquire);
  if (st >= TimerEntry::kFired) return true;
  if (st == TimerEntry::kRegistered) {
    if (e.registered_task == self) return false;  // our waker is in place
    // Polled by another task now: swap the waker under the lock.
    Waker w = self->waker();
    Waker old;
    TimerShard* s = e.shard;
    {
      LockGuard<SpinLock> g(s->lock);
      if (e.state.load(std::memory_order_relaxed) != TimerEntry::kRegistered) return true;
      TimeDriver::detach_waker(*s, e, &old);
      e.waker = std::move(w);
      e.registered_task = self;
    }
    return false;  // the old waker drops outside the lock
  }
  // The calling thread's runtime's driver, without the checks of
  // current_time_driver() on the common path.
  RuntimeCore* core = tl_runtime;
  EventDriver* ed = core != nullptr ? core->event_driver : nullptr;
  TimeDriver* td = ed != nullptr ? ed->time() : nullptr;
  if (td == nullptr) td = &current_time_driver();  // throws with the reason
  return td->register_entry(e, self);
}

void timer_cancel(TimerEntry& e) noexcept {
  if (e.state.load(std::memory_order_acquire) != TimerEntry::kRegistered) return;
  TimerShard* s = e.shard;
  Waker w;
  {
    LockGuard<SpinLock> g(s->lock);
    // Re-check: the driver may have fired it since.
    if (e.state.load(std::memory_order_relaxed) != TimerEntry::kRegistered) return;
    if (e.heap_index != TimerEntry::kNoHeap) {
      near_remove(s->near, &e);
    } else {
      s->wheel.remove(&e);
    }
    TimeDriver::detach_waker(*s, e, &w);
    e.registered_task = nullptr;
    e.state.store(TimerEntry::kIdle, std::memory_order_relaxed);
  }
  // A stale-low next_deadline is fine: the driver re-checks under the lock.
}

}  // namespace tideloop::internal
