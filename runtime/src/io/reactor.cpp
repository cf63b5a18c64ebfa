// Reactor, IoState and IoRegistration: see reactor.hpp for the design.
//
// Asio internals used (asio/detail, unchanged from 1.11 to 1.22; 1.27 added
// two parameters to start_op, handled below): epoll_reactor's
// register_descriptor / start_op / deregister_descriptor, to keep the
// socket epoll set registered in the io_context with an operation that
// never completes.
#include "io/reactor.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <system_error>

#include "scheduler/affinity.hpp"
#include "tideloop/runtime.hpp"

namespace tideloop::internal {

using namespace io_readiness;

namespace {
// Which readiness an epoll event brings. EPOLLERR is not sticky: a pending
// socket error (an ICMP unreachable on UDP, a refused connect) is read once
// by the next syscall and the socket may carry on.
std::uint64_t bits_of(std::uint32_t ev) {
  std::uint64_t b = 0;
  if (ev & (EPOLLIN | EPOLLPRI)) b |= kReadable;
  if (ev & EPOLLOUT) b |= kWritable;
  if (ev & EPOLLERR) b |= kReadable | kWritable;
  if (ev & EPOLLRDHUP) b |= kReadable | kReadClosed;
  if (ev & EPOLLHUP) b |= kReadable | kWritable | kReadClosed | kWriteClosed;
  return b;
}
}  // namespace

// --- IoState ---

void IoState::set_ready(std::uint64_t bits) noexcept {
  std::uint64_t cur = readiness.load(std::memory_order_relaxed);
  while (!readiness.compare_exchange_weak(cur, (cur | bits) + kTickOne, std::memory_order_acq_rel,
                                          std::memory_order_relaxed)) {
  }
  const bool rd = bits & (kReadable | kReadClosed | kClosed | kShutdown);
  const bool wr = bits & (kWritable | kWriteClosed | kClosed | kShutdown);
  Waker w0;
  Waker w1;
  {
    LockGuard<SpinLock> g(lock);
    if (rd && waiters[0].waker) {
      w0 = std::move(waiters[0].waker);
      waiters[0].task = nullptr;
    }
    if (wr && waiters[1].waker) {
      w1 = std::move(waiters[1].waker);
      waiters[1].task = nullptr;
    }
  }
  w0.wake();
  w1.wake();
}

// --- Reactor ---

Reactor::Reactor(std::size_t workers)
    : workers_(workers == 0 ? 1 : workers),
      tally_(new int[workers_]()),
      shards_(new Shard[workers_]),
      ctx_(1),
      work_(asio::make_work_guard(ctx_)),
      asio_reactor_(asio::use_service<asio::detail::reactor>(ctx_)),
      ep_(::epoll_create1(EPOLL_CLOEXEC)),
      timer_fd_(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)) {
  if (ep_ < 0 || timer_fd_ < 0) {
    const int e = errno;
    if (ep_ >= 0) ::close(ep_);
    if (timer_fd_ >= 0) ::close(timer_fd_);
    throw std::system_error(e, std::system_category(), "tideloop: creating the reactor");
  }
  events_.resize(kMaxEventsPerTurn);
  // The timer's events carry a null pointer; each expiry is an edge (re-arming
  // resets its count, so it is never read).
  epoll_event tev{};
  tev.events = EPOLLIN | EPOLLET;
  tev.data.u64 = 0;
  ::epoll_ctl(ep_, EPOLL_CTL_ADD, timer_fd_, &tev);
  // One socket epoll set per worker, each nested in ep_ one-shot (armed by
  // its worker when it goes to sleep; see reactor.hpp).
  for (std::size_t k = 0; k < workers_; ++k) {
    Shard& sh = shards_[k];
    sh.ep = ::epoll_create1(EPOLL_CLOEXEC);
    if (sh.ep < 0) {
      const int e = errno;
      for (std::size_t j = 0; j < k; ++j) ::close(shards_[j].ep);
      ::close(ep_);
      ::close(timer_fd_);
      throw std::system_error(e, std::system_category(), "tideloop: creating the reactor");
    }
    sh.events.resize(kMaxEventsPerTurn);
    epoll_event sev{};
    sev.events = EPOLLIN | EPOLLET | EPOLLONESHOT;
    sev.data.u64 = k + 1;
    ::epoll_ctl(ep_, EPOLL_CTL_ADD, sh.ep, &sev);
  }
  asio_reactor_.init_task();
  if (const int err = asio_reactor_.register_descriptor(ep_, nested_data_)) {
    ::close(ep_);
    throw std::system_error(err, std::system_category(), "tideloop: registering the epoll set");
  }
#if ASIO_VERSION >= 102700
  asio_reactor_.start_op(
      asio::detail::reactor::read_op, ep_, nested_data_, &nested_op_, false, false,
      [](asio::detail::operation*, bool, const void*) {}, nullptr);
#else
  asio_reactor_.start_op(asio::detail::reactor::read_op, ep_, nested_data_, &nested_op_, false,
                         false);
#endif
}

// An exception here (Asio failing to run a no-op completion) leaves nothing to
// recover: terminating is the right outcome.
// NOLINTNEXTLINE(bugprone-exception-escape)
Reactor::~Reactor() {
  // Dequeue nested_op_ before it is destroyed; ~io_context then discards it
  // (its completion is a no-op), and the epoll set goes last.
  asio_reactor_.deregister_descriptor(ep_, nested_data_, /*closing=*/false);
  asio_reactor_.cleanup_descriptor_data(nested_data_);
  ctx_.restart();
  ctx_.poll();  // runs the dequeued operation's (empty) completion
  for (std::size_t k = 0; k < workers_; ++k) {
    release_deferred(shards_[k]);
    ::close(shards_[k].ep);
  }
  ::close(timer_fd_);
  ::close(ep_);
}

void Reactor::release_deferred(Shard& sh) {
  if (!sh.has_release.load(std::memory_order_acquire)) return;
  std::vector<IoState*> rel;
  {
    LockGuard<StdMutex> g(reg_mu_);
    rel.swap(sh.release);
    sh.has_release.store(false, std::memory_order_relaxed);
  }
  for (IoState* st : rel) st->unref();
}

std::size_t Reactor::harvest_shard(Shard& sh) {
  // safety: every registration of this shard deferred before now left its
  // epoll set before it was queued, and the previous batch of this shard was
  // dispatched under sh.mu, so no event we still hold names it.
  release_deferred(sh);
  const int n = ::epoll_wait(sh.ep, sh.events.data(), static_cast<int>(sh.events.size()), 0);
  if (n <= 0) {
    sh.maybe_more = false;
    return 0;
  }
  for (int i = 0; i < n; ++i)
    static_cast<IoState*>(sh.events[i].data.ptr)->set_ready(bits_of(sh.events[i].events));
  // A full batch may have left events behind: look again before sleeping.
  sh.maybe_more = static_cast<std::size_t>(n) == sh.events.size();
  return static_cast<std::size_t>(n);
}

void Reactor::rearm(std::size_t k) {
  epoll_event sev{};
  sev.events = EPOLLIN | EPOLLET | EPOLLONESHOT;
  sev.data.u64 = k + 1;
  // MOD re-polls the nested set: if it already has events, ep_ reports it.
  ::epoll_ctl(ep_, EPOLL_CTL_MOD, shards_[k].ep, &sev);
}

std::size_t Reactor::harvest_main() {
  const int n = ::epoll_wait(ep_, events_.data(), static_cast<int>(events_.size()), 0);
  std::size_t got = 0;
  for (int i = 0; i < n; ++i) {
    const std::uint64_t tag = events_[i].data.u64;
    if (tag == 0) continue;  // the timerfd: it only bounds the sleep
    const std::size_t k = tag - 1;
    Shard& sh = shards_[k];
    // Its worker is awake (it harvests its own set) or harvesting now: leave
    // it; it re-arms the notification when it goes back to sleep.
    if (!sh.asleep.load(std::memory_order_acquire) || !sh.mu.try_lock()) continue;
    got += harvest_shard(sh);
    sh.mu.unlock();
    rearm(k);
  }
  return got;
}

std::size_t Reactor::poll_shard(std::size_t k) {
  Shard& sh = shards_[k % workers_];
  if (sh.fds.load(std::memory_order_relaxed) == 0 || !sh.mu.try_lock()) return 0;
  const std::size_t n = harvest_shard(sh);
  sh.mu.unlock();
  return n;
}

bool Reactor::begin_sleep(std::size_t k) {
  k %= workers_;
  Shard& sh = shards_[k];
  if (!sh.mu.try_lock()) return false;  // the driver is harvesting it for us
  const std::size_t n = harvest_shard(sh);
  if (n == 0 && !sh.maybe_more) sh.asleep.store(true, std::memory_order_seq_cst);
  sh.mu.unlock();
  if (n != 0) return false;
  // After `asleep`: an event from here on reaches ep_ and whoever drives it
  // harvests this set for us.
  rearm(k);
  return true;
}

void Reactor::end_sleep(std::size_t k) {
  shards_[k % workers_].asleep.store(false, std::memory_order_release);
}

std::size_t Reactor::park(std::optional<std::chrono::nanoseconds> timeout) {
  {
    LockGuard<SpinLock> g(harvest_mu_);
    if (timeout && timeout->count() <= 0) return harvest_main();
  }
  int expect = kIdle;
  if (park_state_.compare_exchange_strong(expect, kParked, std::memory_order_seq_cst)) {
    if (timeout) {
      // Not disarmed when woken early: a stale expiry makes at most one later
      // park return early, which costs less than a syscall on every wake.
      itimerspec its{};
      its.it_value.tv_sec = static_cast<time_t>(timeout->count() / 1'000'000'000);
      its.it_value.tv_nsec = static_cast<long>(timeout->count() % 1'000'000'000);
      ::timerfd_settime(timer_fd_, 0, &its, nullptr);
    }
    ctx_.run_one();
    park_state_.exchange(kIdle, std::memory_order_seq_cst);
  } else {
    park_state_.store(kIdle, std::memory_order_seq_cst);  // consume the token
  }
  // An unpark() interrupts run_one() through stop(); a late one may also
  // leave the context stopped, which only makes the next park spurious.
  if (ctx_.stopped()) ctx_.restart();
  LockGuard<SpinLock> g(harvest_mu_);
  return harvest_main();
}

void Reactor::unpark() noexcept {
  if (park_state_.exchange(kNotified, std::memory_order_seq_cst) == kParked) ctx_.stop();
}

void Reactor::shutdown() {
  std::vector<IoState*> states;
  {
    LockGuard<StdMutex> g(reg_mu_);
    shutdown_ = true;
    for (IoState* st = reg_head_; st != nullptr; st = st->reg_next) {
      st->ref();
      states.push_back(st);
    }
  }
  // Outside reg_mu_: a woken task may close its socket (deregister) at once.
  for (IoState* st : states) {
    st->set_ready(kShutdown);
    st->unref();
  }
}

IoState* Reactor::register_fd(int fd, bool initially_ready, bool connection, std::uint32_t pair_key,
                              std::error_code& ec) {
  const int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || (!(fl & O_NONBLOCK) && ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)) {
    ec = last_errno_code();
    return nullptr;
  }
  LockGuard<StdMutex> g(reg_mu_);
  if (shutdown_) {
    ec = std::make_error_code(std::errc::operation_canceled);
    return nullptr;
  }
  // A connection: the second end of an in-process pair joins the first's
  // worker; other connections go to the least busy worker.
  IoState* pair_first = nullptr;
  if (connection && pair_key != 0 && workers_ > 1) {
    if (auto it = pending_pairs_.find(pair_key); it != pending_pairs_.end()) {
      pair_first = it->second;
      pending_pairs_.erase(it);
      pair_first->pair_key = 0;
    }
  }
  const int here = tl_worker_index;
  int shard;
  if (pair_first != nullptr) {
    shard = pair_first->shard;
  } else if (!connection && here >= 0 && static_cast<std::size_t>(here) < workers_) {
    shard = here;
  } else {
    shard = pick_shard();
  }
  auto* st = new IoState(this, fd, shard);
  Shard& sh = shards_[static_cast<std::size_t>(shard)];
  if (initially_ready) st->readiness.store(kReadable | kWritable, std::memory_order_relaxed);
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.ptr = st;
  if (::epoll_ctl(sh.ep, EPOLL_CTL_ADD, fd, &ev) == 0) {
    st->in_epoll = true;
    sh.fds.fetch_add(1, std::memory_order_relaxed);
    st->ref();  // the epoll set's
  } else if (errno == EPERM) {
    // A regular file: epoll refuses it, and it never blocks.
    st->readiness.store(kReadable | kWritable | kReadClosed | kWriteClosed,
                        std::memory_order_relaxed);
  } else {
    ec = last_errno_code();
    delete st;
    return nullptr;
  }
  st->registered = true;
  ++tally_[shard];
  if (pair_first == nullptr && connection && pair_key != 0 && workers_ > 1) {
    // The first end: wait for the other (a stale entry of a port reused
    // before its socket closed is replaced; a hint, never a correctness need).
    auto [it, fresh] = pending_pairs_.try_emplace(pair_key, st);
    if (!fresh) {
      it->second->pair_key = 0;
      it->second = st;
    }
    st->pair_key = pair_key;
  }
  st->reg_next = reg_head_;
  if (reg_head_) reg_head_->reg_prev = st;
  reg_head_ = st;
  return st;
}

void Reactor::deregister(IoState* st, bool close_fd) noexcept {
  {
    LockGuard<StdMutex> g(reg_mu_);
    if (!st->registered) return;
    st->registered = false;
    --tally_[st->shard];
    if (st->reg_prev) {
      st->reg_prev->reg_next = st->reg_next;
    } else {
      reg_head_ = st->reg_next;
    }
    if (st->reg_next) st->reg_next->reg_prev = st->reg_prev;
    st->reg_prev = st->reg_next = nullptr;
    if (st->pair_key != 0) {
      auto it = pending_pairs_.find(st->pair_key);
      if (it != pending_pairs_.end() && it->second == st) pending_pairs_.erase(it);
      st->pair_key = 0;
    }
    if (st->in_epoll) {
      // Explicitly: the fd may have duplicates that keep it in the set.
      Shard& sh = shards_[static_cast<std::size_t>(st->shard)];
      epoll_event ev{};
      ::epoll_ctl(sh.ep, EPOLL_CTL_DEL, st->fd, &ev);
      sh.fds.fetch_sub(1, std::memory_order_relaxed);
      // The epoll set's reference goes when no harvested batch can name it.
      sh.release.push_back(st);
      sh.has_release.store(true, std::memory_order_release);
    }
  }
  if (close_fd) ::close(st->fd);
  st->set_ready(kClosed);
}

int Reactor::pick_shard() {
  const int here = tl_worker_index;
  int best = here >= 0 && static_cast<std::size_t>(here) < workers_ ? here : 0;
  for (std::size_t i = 0; i < workers_; ++i)
    if (tally_[i] < tally_[best]) best = static_cast<int>(i);
  return best;
}

// --- IoRegistration ---

namespace {
// The loopback-client key of a socket address, 0 if it is not loopback.
std::uint32_t loopback_key(const sockaddr* a, socklen_t len) {
  if (a == nullptr) return 0;
  if (a->sa_family == AF_INET && len >= static_cast<socklen_t>(sizeof(sockaddr_in))) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(a);
    if ((ntohl(in->sin_addr.s_addr) >> 24) != 127) return 0;
    return std::uint32_t{AF_INET} << 16 | ntohs(in->sin_port);
  }
  if (a->sa_family == AF_INET6 && len >= static_cast<socklen_t>(sizeof(sockaddr_in6))) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(a);
    if (!IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr)) return 0;
    return std::uint32_t{AF_INET6} << 16 | ntohs(in6->sin6_port);
  }
  return 0;
}

}  // namespace

Result<IoRegistration> IoRegistration::adopt(int fd, bool initially_ready) {
  return adopt_as(fd, initially_ready, /*connection=*/false, 0);
}

Result<IoRegistration> IoRegistration::adopt_connection(int fd, bool initially_ready,
                                                        const sockaddr* remote,
                                                        socklen_t remote_len) {
  // The pair key is our local port, which is what the accepting side sees.
  std::uint32_t key = 0;
  if (loopback_key(remote, remote_len) != 0) {
    sockaddr_storage local{};
    socklen_t len = sizeof local;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0)
      key = loopback_key(reinterpret_cast<sockaddr*>(&local), len);
  }
  return adopt_as(fd, initially_ready, /*connection=*/true, key);
}

Result<IoRegistration> IoRegistration::adopt_accepted(int fd, const sockaddr* peer,
                                                      socklen_t peer_len) {
  return adopt_as(fd, true, /*connection=*/true, loopback_key(peer, peer_len));
}

Result<IoRegistration> IoRegistration::adopt_as(int fd, bool initially_ready, bool connection,
                                                std::uint32_t pair_key) {
  const std::shared_ptr<Reactor>* r;
  try {
    r = &current_reactor();
  } catch (...) {
    ::close(fd);
    throw;
  }
  std::error_code ec;
  IoState* st = (*r)->register_fd(fd, initially_ready, connection, pair_key, ec);
  if (st == nullptr) {
    ::close(fd);
    return ec;
  }
  IoRegistration reg;
  reg.reactor_ = *r;
  reg.state_ = st;
  reg.readiness_ = &st->readiness;
  reg.fd_ = fd;
  return reg;
}

WaitStatus IoRegistration::poll_ready_slow(Interest i, TaskHeader* self, std::uint64_t* snapshot,
                                           std::error_code* ec) noexcept {
  IoState* st = state_;
  const std::uint64_t mask = ready_mask(i);
  auto check = [&](std::uint64_t s) {
    if (s & kShutdown) {
      *ec = std::make_error_code(std::errc::operation_canceled);
      return WaitStatus::kError;
    }
    if (s & kClosed) {
      *ec = std::make_error_code(std::errc::bad_file_descriptor);
      return WaitStatus::kError;
    }
    if (s & mask) {
      *snapshot = s;
      return WaitStatus::kReady;
    }
    return WaitStatus::kPending;
  };
  if (WaitStatus w = check(st->readiness.load(std::memory_order_acquire));
      w != WaitStatus::kPending)
    return w;
  {
    LockGuard<SpinLock> g(st->lock);
    auto& wt = st->waiters[static_cast<int>(i)];
    if (wt.task != self || !wt.waker) {
      wt.waker = self->waker();
      wt.task = self;
    }
  }
  // Re-check after publishing the waker: an event that set the bit before
  // the driver could see our waker is seen here (both sides use the lock).
  return check(st->readiness.load(std::memory_order_acquire));
}

void IoRegistration::close() noexcept {
  if (state_ == nullptr) return;
  IoState* st = std::exchange(state_, nullptr);
  readiness_ = nullptr;
  st->reactor->deregister(st, /*close_fd=*/true);
  st->unref();
  fd_ = -1;
  reactor_.reset();  // last: may destroy the io_context
}

int IoRegistration::release() noexcept {
  if (state_ == nullptr) return -1;
  IoState* st = std::exchange(state_, nullptr);
  readiness_ = nullptr;
  st->reactor->deregister(st, /*close_fd=*/false);
  st->unref();
  reactor_.reset();
  return std::exchange(fd_, -1);
}

}  // namespace tideloop::internal
