// FdRegistry: the one owner of every fd a loop watches. It maps a descriptor to the Watcher
// that owns it (an add_reader/add_writer record, a transport, a server, an internal wake-up fd)
// and keeps the poller's interest set in step with each watcher's wanted events. Because there is
// exactly one owner per fd, asyncio's rule can be enforced where it applies (add_reader on a
// transport's socket raises; loop/registry.cpp), and dispatch needs no lookup at all: the poller
// reports the Watcher pointer itself (engine/watcher.hpp explains why that pointer stays valid
// for the whole batch).
//
// Complexity: every operation is O(1) (a vector indexed by fd, grown on demand). Only the bridge
// thread touches a registry (GIL held); there is no locking.
#pragma once

#include <sys/epoll.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "engine/poller.hpp"
#include "engine/watcher.hpp"

namespace tideloop::bridge {

class FdRegistry {
 public:
  explicit FdRegistry(Poller& poller) : poller_(poller) {}
  FdRegistry(const FdRegistry&) = delete;
  FdRegistry& operator=(const FdRegistry&) = delete;

  // The watcher owning fd, or nullptr.
  Watcher* owner(int fd) const {
    if (fd < 0 || static_cast<std::size_t>(fd) >= table_.size()) return nullptr;
    return table_[fd];
  }

  // Makes `w` the owner of fd, with no events yet. EEXIST when another watcher owns it; the
  // caller decides whether that owner may be evicted (detach it first).
  int attach(Watcher* w, int fd) {
    if (fd < 0) return EBADF;
    if (static_cast<std::size_t>(fd) >= table_.size()) table_.resize(fd + 1, nullptr);
    if (table_[fd] != nullptr) return table_[fd] == w ? 0 : EEXIST;
    table_[fd] = w;
    w->fd = fd;
    w->interest = 0;
    w->registered = true;
    return 0;
  }

  // Sets the events the poller waits for on w's fd (EPOLLIN/EPOLLOUT; 0 removes it from the
  // poller's set but keeps the ownership). Returns 0 or an errno; on error w->interest is the
  // set that is really in the poller.
  int set_interest(Watcher* w, std::uint32_t events) {
    if (!w->registered) return EBADF;
    if (events == w->interest) return 0;
    const auto tag = reinterpret_cast<std::uint64_t>(w);
    if (events == 0) {
      poller_.remove(w->fd);  // EBADF/ENOENT: the fd was closed meanwhile; nothing to undo
      w->interest = 0;
      if (!w->internal) --active_;
      return 0;
    }
    if (w->interest != 0) {
      int err = poller_.modify(w->fd, events, tag);
      if (err == 0) {
        w->interest = events;
        return 0;
      }
      if (err != ENOENT) return err;
      // The fd was closed and its number reused behind our back: register it afresh.
      w->interest = 0;
      if (!w->internal) --active_;
    }
    int err = poller_.add(w->fd, events, tag);
    if (err == EEXIST) err = poller_.modify(w->fd, events, tag);
    if (err != 0) return err;
    w->interest = events;
    if (!w->internal) ++active_;
    return 0;
  }

  // Removes w from the poller and the table. Safe to call twice.
  void detach(Watcher* w) {
    if (!w->registered) return;
    set_interest(w, 0);
    if (static_cast<std::size_t>(w->fd) < table_.size() && table_[w->fd] == w) {
      table_[w->fd] = nullptr;
    }
    w->registered = false;
    w->fd = -1;
  }

  // Watchers with events in the poller (the loop polls with timeout 0 only when there are any).
  std::size_t active() const { return active_; }

  // Visits every owner (f(Watcher*)). f must not attach or detach.
  template <class F>
  void for_each(F&& f) const {
    for (Watcher* w : table_) {
      if (w != nullptr) f(w);
    }
  }

  // Every owner, for a loop that closes: the table is emptied first, so f may detach freely.
  template <class F>
  void drain(F&& f) {
    std::vector<Watcher*> all;
    all.swap(table_);
    for (Watcher* w : all) {
      if (w == nullptr) continue;
      // Ownership ends here; the poller's entry goes with it.
      if (w->interest != 0) {
        poller_.remove(w->fd);
        if (!w->internal) --active_;
      }
      w->interest = 0;
      w->registered = false;
      w->fd = -1;
      f(w);  // may free w
    }
  }

 private:
  Poller& poller_;
  std::vector<Watcher*> table_;  // indexed by fd; nullptr: nobody watches it
  std::size_t active_ = 0;       // watchers with interest != 0
};

}  // namespace tideloop::bridge
