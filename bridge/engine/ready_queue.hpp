// ReadyQueue: the FIFO of handles that run on the next tick (asyncio's `_ready` deque).
//
// A growable ring buffer of pointers: push and pop are an index increment, no allocation once the
// ring reached its working size. The loop runs it in batches: it reads size() at the start of the
// run phase and pops exactly that many, so callbacks scheduled while the batch runs wait for the
// next tick, as in asyncio. Only a thread holding the GIL touches it.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>
#include <utility>

namespace tideloop::bridge {

template <class T>
class ReadyQueue {
 public:
  ReadyQueue() = default;
  ReadyQueue(const ReadyQueue&) = delete;
  ReadyQueue& operator=(const ReadyQueue&) = delete;
  ~ReadyQueue() { std::free(buf_); }

  bool empty() const { return count_ == 0; }
  std::size_t size() const { return count_; }

  void push(T* item) {
    if (count_ == cap_) grow();
    buf_[(head_ + count_) & (cap_ - 1)] = item;
    ++count_;
  }

  // Precondition: !empty().
  T* pop() {
    T* item = buf_[head_];
    head_ = (head_ + 1) & (cap_ - 1);
    --count_;
    return item;
  }

  // i-th element from the front (0 = next to pop); for GC traversal.
  T* at(std::size_t i) const { return buf_[(head_ + i) & (cap_ - 1)]; }

 private:
  // 1024 slots: enough for the common case (a few hundred tasks) without a regrow; the ring then
  // doubles, and never shrinks: a loop that once had N ready handles will likely have N again.
  static constexpr std::size_t kInitialCapacity = 1024;

  void grow() {
    std::size_t ncap = cap_ == 0 ? kInitialCapacity : cap_ * 2;
    T** nbuf = static_cast<T**>(std::malloc(ncap * sizeof(T*)));
    if (nbuf == nullptr) throw std::bad_alloc();
    for (std::size_t i = 0; i < count_; ++i) nbuf[i] = at(i);
    std::free(buf_);
    buf_ = nbuf;
    cap_ = ncap;
    head_ = 0;
  }

  T** buf_ = nullptr;
  std::size_t cap_ = 0;  // power of two
  std::size_t head_ = 0;
  std::size_t count_ = 0;
};

}  // namespace tideloop::bridge
