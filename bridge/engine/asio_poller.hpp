// AsioPoller: the bridge's Poller (see poller.hpp for the interface) on Asio's reactor, the one
// the runtime's I/O driver uses: an asio::io_context, each watched fd an
// asio::posix::stream_descriptor with async_wait(wait_read / wait_write), the wait
// io_context::run_one_for(timeout) (the caller has released the GIL), then poll() for the rest
// of the batch. Built with -DTIDELOOP_BRIDGE_REACTOR=asio; epoll is the default (why, with
// numbers: poller.hpp). -DTIDELOOP_BRIDGE_ASIO_TIMERFD ends the wait with an asio::steady_timer
// (the reactor's timerfd, nanoseconds) instead of run_one_for's millisecond timeout.
//
// Semantics kept from EpollPoller:
//  * level-triggered: Asio registers descriptors edge-triggered (EPOLLET) and completes a wait
//    once; a completed direction is re-armed before the next wait, and Asio's re-arm is an
//    epoll_ctl(MOD), which re-reports an fd that is still ready. So a reader that leaves data
//    unread is called again on the next tick, as with asyncio's selectors.
//  * add() of a regular file or a directory fails with EPERM, as epoll_ctl does (Asio would
//    accept it and fail each wait with operation_not_supported).
//  * modify() re-registers (release + assign): an fd closed and reused without remove_reader()
//    must be watched afresh, which Asio cannot detect (its epoll_ctl(MOD) result is ignored).
//  * the io_context is single-threaded (ASIO_CONCURRENCY_HINT_UNSAFE: no locks): only the
//    bridge thread touches it. Other threads wake it through the BridgeCore eventfd, which is
//    watched like any fd (Asio's own post() would allocate and lock per item).
//  * descriptors are released, never closed: the loop and the user own the fds.
// Only the bridge thread uses an AsioPoller; handlers run inside wait() and touch no Python.
#pragma once

#include <sys/epoll.h>
#include <sys/stat.h>

#include <asio/io_context.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/steady_timer.hpp>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

namespace tideloop::bridge {

class AsioPoller {
 public:
  AsioPoller() : io_(std::make_unique<asio::io_context>(ASIO_CONCURRENCY_HINT_UNSAFE)) {}
  ~AsioPoller() { close(); }
  AsioPoller(const AsioPoller&) = delete;
  AsioPoller& operator=(const AsioPoller&) = delete;

  bool ok() const { return io_ != nullptr; }

  void close() {
    if (io_ == nullptr) return;
    for (std::size_t fd = 0; fd < watches_.size(); ++fd) release(static_cast<int>(fd));
    watches_.clear();
#if defined(TIDELOOP_BRIDGE_ASIO_TIMERFD)
    timer_.reset();  // before the io_context it belongs to
#endif
    io_.reset();  // drops queued completions without running them
  }

  int add(int fd, std::uint32_t events, std::uint64_t tag) {
    if (io_ == nullptr || fd < 0) return EBADF;
    struct stat sb;
    if (::fstat(fd, &sb) != 0) return errno;
    if (S_ISREG(sb.st_mode) || S_ISDIR(sb.st_mode)) return EPERM;
    if (static_cast<std::size_t>(fd) >= watches_.size()) watches_.resize(fd + 1);
    Watch& w = watches_[fd];
    if (w.sd != nullptr) return EEXIST;
    auto sd = std::make_unique<asio::posix::stream_descriptor>(*io_);
    asio::error_code ec;
    sd->assign(fd, ec);
    if (ec) return ec.value();
    w.sd = std::move(sd);
    w.tag = tag;
    w.want = events;
    w.rd_armed = w.wr_armed = false;
    ++w.gen;
    mark_for_arming(fd);
    return 0;
  }

  int modify(int fd, std::uint32_t events, std::uint64_t tag) {
    if (fd < 0 || static_cast<std::size_t>(fd) >= watches_.size() || !watches_[fd].sd) {
      return ENOENT;
    }
    release(fd);
    return add(fd, events, tag);
  }

  int remove(int fd) {
    if (fd < 0 || static_cast<std::size_t>(fd) >= watches_.size() || !watches_[fd].sd) {
      return ENOENT;
    }
    release(fd);
    return 0;
  }

  // Blocks up to timeout_ns (-1: forever, 0: poll). Returns the number of events, -1 only when
  // closed (Asio retries an interrupted epoll_wait itself; a signal ends the wait through the
  // signal wakeup socket, which the loop watches while it runs on the main thread).
  int wait(epoll_event* events, int max_events, std::int64_t timeout_ns) {
    if (io_ == nullptr) {
      errno = EBADF;
      return -1;
    }
    for (int fd : to_arm_) arm(fd);
    to_arm_.clear();
    if (ready_.empty()) {
      if (io_->stopped()) io_->restart();
      if (timeout_ns == 0) {
        io_->poll();
      } else {
        if (timeout_ns < 0) {
          io_->run_one();
        } else {
#if defined(TIDELOOP_BRIDGE_ASIO_TIMERFD)
          // Variant measured for docs/python-api.md: an asio::steady_timer (the reactor's
          // timerfd, nanoseconds) ends the wait instead of run_one_for's millisecond timeout.
          timer_->expires_after(std::chrono::nanoseconds(timeout_ns));
          timer_->async_wait([](const asio::error_code&) {});
          io_->run_one();
          timer_->cancel();
#else
          io_->run_one_for(std::chrono::nanoseconds(timeout_ns));
#endif
        }
        if (io_->stopped()) io_->restart();
        io_->poll();  // the rest of the batch (costs another epoll_wait(0))
      }
    }
    int n = 0;
    for (; n < max_events && n < static_cast<int>(ready_.size()); ++n) events[n] = ready_[n];
    ready_.erase(ready_.begin(), ready_.begin() + n);
    return n;
  }

 private:
  struct Watch {
    std::unique_ptr<asio::posix::stream_descriptor> sd;
    std::uint64_t tag = 0;
    std::uint32_t want = 0;  // EPOLLIN | EPOLLOUT
    std::uint32_t gen = 0;   // completions of an older registration are ignored
    bool rd_armed = false;
    bool wr_armed = false;
    bool queued = false;  // in to_arm_
  };

  struct Completion {
    AsioPoller* poller;
    int fd;
    std::uint32_t gen;
    std::uint32_t dir;
    void operator()(const asio::error_code& ec) const { poller->on_ready(fd, gen, dir, ec); }
  };

  void mark_for_arming(int fd) {
    Watch& w = watches_[fd];
    if (!w.queued) {
      w.queued = true;
      to_arm_.push_back(fd);
    }
  }

  void arm(int fd) {
    if (static_cast<std::size_t>(fd) >= watches_.size()) return;
    Watch& w = watches_[fd];
    w.queued = false;
    if (w.sd == nullptr) return;
    if ((w.want & EPOLLIN) && !w.rd_armed) {
      w.rd_armed = true;
      w.sd->async_wait(asio::posix::stream_descriptor::wait_read,
                       Completion{this, fd, w.gen, EPOLLIN});
    }
    if ((w.want & EPOLLOUT) && !w.wr_armed) {
      w.wr_armed = true;
      w.sd->async_wait(asio::posix::stream_descriptor::wait_write,
                       Completion{this, fd, w.gen, EPOLLOUT});
    }
  }

  void on_ready(int fd, std::uint32_t gen, std::uint32_t dir, const asio::error_code& ec) {
    if (ec == asio::error::operation_aborted) return;
    if (static_cast<std::size_t>(fd) >= watches_.size()) return;
    Watch& w = watches_[fd];
    if (w.sd == nullptr || w.gen != gen) return;
    if (dir == EPOLLIN) {
      w.rd_armed = false;
    } else {
      w.wr_armed = false;
    }
    mark_for_arming(fd);  // level-triggered: wait again before the next wait()
    if (!(w.want & dir)) return;
    epoll_event ev{};
    ev.events = ec ? (EPOLLERR | dir) : dir;
    ev.data.u64 = w.tag;
    ready_.push_back(ev);
  }

  void release(int fd) {
    Watch& w = watches_[fd];
    if (w.sd == nullptr) return;
    asio::error_code ec;
    w.sd->cancel(ec);  // pending waits complete with operation_aborted: ignored
    w.sd->release();   // deregisters from the reactor without closing the fd
    w.sd.reset();
    w.want = 0;
    w.rd_armed = w.wr_armed = false;
    ++w.gen;
    // Results of this fd already collected but not returned are stale now.
    std::uint64_t tag = w.tag;
    for (std::size_t i = 0; i < ready_.size();) {
      if (ready_[i].data.u64 == tag) {
        ready_.erase(ready_.begin() + i);
      } else {
        ++i;
      }
    }
  }

  std::unique_ptr<asio::io_context> io_;
#if defined(TIDELOOP_BRIDGE_ASIO_TIMERFD)
  std::unique_ptr<asio::steady_timer> timer_ = std::make_unique<asio::steady_timer>(*io_);
#endif
  std::vector<Watch> watches_;      // indexed by fd
  std::vector<int> to_arm_;         // fds whose completed directions wait again before a wait
  std::vector<epoll_event> ready_;  // completions not returned yet
};

}  // namespace tideloop::bridge
