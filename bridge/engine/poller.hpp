// Poller: the one blocking wait of the bridge thread. A readiness set holding the wake-up
// eventfd, the signal wakeup socket, every fd watched with add_reader/add_writer and every
// transport's socket, so a timer deadline, a post from another thread, a signal and fd readiness
// all end the same wait.
//
// Interface (what the FdRegistry and loop/tick.cpp rely on): add/modify/remove(fd, events, tag)
// with EPOLLIN/EPOLLOUT interest, returning 0 or an errno; wait(events, max, timeout_ns) filling
// epoll_event records {events, data.u64 = tag} (the tag is a Watcher pointer,
// engine/watcher.hpp), level-triggered (an fd that stays readable is reported by every wait, as
// asyncio's selectors do), returning the count or -1 with errno (EINTR).
//
// Two implementations, chosen at build time (-DTIDELOOP_BRIDGE_REACTOR=epoll|asio):
//  * EpollPoller (default): one epoll set, level-triggered, waited on with epoll_pwait2.
//  * AsioPoller (asio_poller.hpp): the same on the runtime's reactor, asio::io_context.
// Why epoll stays the default (measured side by side, docs/python-api.md): where the reactor is
// idle (empty iterations, call_soon, call_soon_threadsafe from 1-8 threads) both are even; where
// it works, Asio costs more for structural reasons. Its epoll registration is edge-triggered,
// so asyncio's level-triggered readiness needs an epoll_ctl(MOD) re-arm per reported fd, and
// collecting the rest of a batch after run_one_for is another epoll_wait(0): per add_reader echo
// round trip 2 epoll_pwait2 here vs 4 epoll_wait + 2 epoll_ctl there (+27% time), per
// level-triggered callback 1 vs 3 syscalls (+61%). run_one_for rounds its timeout up to whole
// milliseconds (+42% wall time for 500 tasks sleeping 0-2 ms); ending the wait with a
// steady_timer instead costs a timerfd_settime per wait (+56% CPU on that workload). A wake-up
// from another thread costs one more epoll_ctl (5.8 vs 7.5 us per call_soon_threadsafe
// ping-pong).
//
// EpollPoller timeouts are nanoseconds: epoll_pwait2 keeps sub-millisecond timer deadlines
// exact; on kernels without it we fall back to epoll_wait with the timeout rounded *up* to a
// millisecond (asyncio's selectors do the same) so a timer never fires early.
#pragma once

#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <ctime>

namespace tideloop::bridge {

class EpollPoller {
 public:
  EpollPoller() : epfd_(::epoll_create1(EPOLL_CLOEXEC)) {}
  ~EpollPoller() { close(); }
  EpollPoller(const EpollPoller&) = delete;
  EpollPoller& operator=(const EpollPoller&) = delete;

  bool ok() const { return epfd_ >= 0; }
  void close() {
    if (epfd_ >= 0) ::close(epfd_);
    epfd_ = -1;
  }

  // Each returns 0 or an errno value.
  int add(int fd, std::uint32_t events, std::uint64_t tag) {
    return ctl(EPOLL_CTL_ADD, fd, events, tag);
  }
  int modify(int fd, std::uint32_t events, std::uint64_t tag) {
    return ctl(EPOLL_CTL_MOD, fd, events, tag);
  }
  int remove(int fd) {
    epoll_event ev{};
    return ::epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, &ev) == 0 ? 0 : errno;
  }

  // Blocks up to timeout_ns (-1: forever, 0: poll). Returns the number of events, or -1 with
  // errno set (EINTR when a signal interrupted the wait). Call without the GIL when it may block.
  int wait(epoll_event* events, int max_events, std::int64_t timeout_ns) {
    if (timeout_ns == 0) return ::epoll_wait(epfd_, events, max_events, 0);
#ifdef __GLIBC__
    if (have_pwait2_) {
      timespec ts{};
      timespec* tsp = nullptr;
      if (timeout_ns > 0) {
        ts.tv_sec = static_cast<time_t>(timeout_ns / 1000000000);
        ts.tv_nsec = static_cast<long>(timeout_ns % 1000000000);
        tsp = &ts;
      }
      int n = ::epoll_pwait2(epfd_, events, max_events, tsp, nullptr);
      if (n >= 0 || errno != ENOSYS) return n;
      have_pwait2_ = false;
    }
#endif
    int ms = -1;
    if (timeout_ns > 0) {
      std::int64_t m = (timeout_ns + 999999) / 1000000;
      ms = m > 0x7fffffff ? 0x7fffffff : static_cast<int>(m);
    }
    return ::epoll_wait(epfd_, events, max_events, ms);
  }

 private:
  int ctl(int op, int fd, std::uint32_t events, std::uint64_t tag) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = tag;
    return ::epoll_ctl(epfd_, op, fd, &ev) == 0 ? 0 : errno;
  }

  int epfd_;
  bool have_pwait2_ = true;  // cleared on the first ENOSYS
};

}  // namespace tideloop::bridge

#if defined(TIDELOOP_BRIDGE_REACTOR_ASIO)
#include "asio_poller.hpp"
namespace tideloop::bridge {
using Poller = AsioPoller;
inline constexpr const char* kReactorName = "asio";
}  // namespace tideloop::bridge
#else
namespace tideloop::bridge {
using Poller = EpollPoller;
inline constexpr const char* kReactorName = "epoll";
}  // namespace tideloop::bridge
#endif
