// TimerHeap: a binary min-heap of (when, seq, item), earliest first, FIFO among equal `when`.
//
// The loop's timers live in the runtime's TimerWheel (timer_queue.hpp); this heap is only the
// TimerQueue's `due_` list: timers whose wheel tick has already been handed out but whose exact
// float deadline is not reached yet, and deadlines that were at or behind the wheel's tick when
// scheduled. It stays small (a few ticks' worth of timers), which is why a heap is fine here.
// Until that change the heap held every timer (O(log n) insert, lazy cancel with asyncio's
// compaction heuristic); bench/python numbers of both are in docs/python-api.md. Only a thread
// holding the GIL touches it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace tideloop::bridge {

template <class T>
class TimerHeap {
 public:
  struct Entry {
    double when;
    std::uint64_t seq;  // tie-breaker: FIFO among equal deadlines
    T* item;
  };

  bool empty() const { return heap_.empty(); }
  std::size_t size() const { return heap_.size(); }
  const Entry& top() const { return heap_.front(); }
  const Entry& at(std::size_t i) const { return heap_[i]; }

  // `seq` breaks ties between equal `when` (the caller numbers its items in scheduling order).
  void push_with_seq(double when, std::uint64_t seq, T* item) {
    heap_.push_back(Entry{when, seq, item});
    sift_up(heap_.size() - 1);
  }

  // Precondition: !empty().
  T* pop() {
    T* item = heap_.front().item;
    heap_.front() = heap_.back();
    heap_.pop_back();
    if (!heap_.empty()) sift_down(0);
    return item;
  }

  // Removes every entry for which drop(item) is true (drop takes ownership of the item), then
  // restores the heap property in O(n).
  template <class Drop>
  void compact(Drop&& drop) {
    std::size_t out = 0;
    for (std::size_t i = 0; i < heap_.size(); ++i) {
      if (!drop(heap_[i].item)) heap_[out++] = heap_[i];
    }
    heap_.resize(out);
    for (std::size_t i = out / 2; i-- > 0;) sift_down(i);
  }

  // Removes all entries, handing each item to `drop`.
  template <class Drop>
  void clear(Drop&& drop) {
    std::vector<Entry> old;
    old.swap(heap_);
    for (auto& e : old) drop(e.item);
  }

 private:
  static bool less(const Entry& a, const Entry& b) {
    return a.when < b.when || (a.when == b.when && a.seq < b.seq);
  }

  void sift_up(std::size_t i) {
    Entry e = heap_[i];
    while (i > 0) {
      std::size_t parent = (i - 1) / 2;
      if (!less(e, heap_[parent])) break;
      heap_[i] = heap_[parent];
      i = parent;
    }
    heap_[i] = e;
  }

  void sift_down(std::size_t i) {
    const std::size_t n = heap_.size();
    Entry e = heap_[i];
    for (;;) {
      std::size_t child = 2 * i + 1;
      if (child >= n) break;
      if (child + 1 < n && less(heap_[child + 1], heap_[child])) ++child;
      if (!less(heap_[child], e)) break;
      heap_[i] = heap_[child];
      i = child;
    }
    heap_[i] = e;
  }

  std::vector<Entry> heap_;
};

}  // namespace tideloop::bridge
