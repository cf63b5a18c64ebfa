// What the reliability programs share: the count scale
// (TIDELOOP_RELIABILITY_SCALE), process figures from /proc (open fds,
// resident memory, threads), a child process with a hard deadline, and a
// gtest main() that lets a test binary re-execute itself in a helper mode.
#pragma once

#include <dirent.h>
#include <malloc.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "tbb/scalable_allocator.h"

#if defined(__SANITIZE_ADDRESS__)
#define TLREL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TLREL_ASAN 1
#endif
#endif

namespace tlrel {

// Under ASan, RSS says nothing about leaks (freed memory sits in ASan's
// quarantine, and LeakSanitizer checks leaks at exit instead): RSS figures
// are printed but not bounded there.
#if defined(TLREL_ASAN)
inline constexpr bool kRssBounded = false;
#else
inline constexpr bool kRssBounded = true;
#endif

// Counts are multiplied by TIDELOOP_RELIABILITY_SCALE (default 1.0): the
// sanitizer trees run them smaller; the figures in docs/reliability.md hold
// at 1.0.
inline double scale() {
  const char* s = std::getenv("TIDELOOP_RELIABILITY_SCALE");
  if (s == nullptr || *s == '\0') return 1.0;
  const double v = std::strtod(s, nullptr);
  return v > 0 ? v : 1.0;
}
inline long scaled(long n) {
  const long v = static_cast<long>(static_cast<double>(n) * scale());
  return v < 1 ? 1 : v;
}

inline int count_dir(const char* path) {
  int n = 0;
  if (DIR* d = opendir(path)) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') ++n;
    }
    closedir(d);
  }
  return n;
}

// Open descriptors of process `pid` (0: this process, minus the DIR's own fd).
inline int count_fds(pid_t pid = 0) {
  if (pid == 0) return count_dir("/proc/self/fd") - 1;
  return count_dir(("/proc/" + std::to_string(pid) + "/fd").c_str());
}

// What each open descriptor is ("3 -> socket:[1234]"), for failure messages.
inline std::string list_fds(pid_t pid = 0) {
  const std::string dir =
      pid == 0 ? std::string("/proc/self/fd") : "/proc/" + std::to_string(pid) + "/fd";
  std::string out;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      char target[256] = {};
      const std::string p = dir + "/" + e->d_name;
      const ssize_t n = readlink(p.c_str(), target, sizeof target - 1);
      out += std::string(e->d_name) + " -> " + (n > 0 ? std::string(target, n) : "?") + "\n";
    }
    closedir(d);
  }
  return out;
}

// Threads of this process.
inline int count_threads() {
  return count_dir("/proc/self/task");
}

// The thread count once exiting threads are gone. std::thread::join() returns
// when the kernel clears the thread's tid word, which happens before the
// thread is removed from /proc/self/task: right after a runtime is dropped a
// joined worker can still be listed for a moment. Waits until the count is
// unchanged over 50 ms (at most 2 s).
inline int settled_thread_count() {
  using namespace std::chrono;
  const auto deadline = steady_clock::now() + seconds(2);
  int last = count_threads();
  int same = 0;
  while (same < 5 && steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(10));
    const int now = count_threads();
    same = now == last ? same + 1 : 0;
    last = now;
  }
  return last;
}

// Resident memory in bytes (/proc/self/statm, second field).
inline std::int64_t rss_bytes() {
  long size = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &size, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return static_cast<std::int64_t>(resident) * sysconf(_SC_PAGESIZE);
}

// RSS after both allocators returned their free memory to the system: the
// bound is on memory the program holds, not on what glibc and tbbmalloc keep
// cached for reuse (which depends on the order of frees, not on leaks).
inline std::int64_t settled_rss_bytes() {
  // Under ASan the runtime allocates with malloc (task_state.cpp), and this
  // command on a never-used tbbmalloc crashes.
  if (kRssBounded) scalable_allocation_command(TBBMALLOC_CLEAN_ALL_BUFFERS, nullptr);
  malloc_trim(0);
  return rss_bytes();
}

inline double mib(std::int64_t bytes) {
  return static_cast<double>(bytes) / (1024.0 * 1024.0);
}

// CPU time (user + system) of process `pid` in seconds, from /proc/PID/stat.
inline double process_cpu_seconds(pid_t pid) {
  FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/stat").c_str(), "r");
  if (f == nullptr) return -1;
  char buf[2048] = {};
  const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  // Fields after the command name (which may hold spaces): skip to ')'.
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr) return -1;
  unsigned long utime = 0, stime = 0;
  // state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
  if (std::sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) !=
      2)
    return -1;
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Polls f every millisecond until it holds or `timeout` passes.
template <class F>
bool wait_until(F&& f, std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!f()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// Waits for `pid` until `timeout`; on expiry kills it (SIGKILL) and returns
// -1. Otherwise the raw wait status.
inline int wait_child(pid_t pid, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0) return -2;
    if (std::chrono::steady_clock::now() > deadline) {
      // TLREL_GDB_ON_HANG=1: the hung child's stacks, for the report.
      if (const char* g = std::getenv("TLREL_GDB_ON_HANG"); g && *g == '1') {
        const std::string cmd =
            "gdb -p " + std::to_string(pid) + " -batch -ex 'thread apply all bt' 1>&2 2>/dev/null";
        (void)std::system(cmd.c_str());
      }
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

inline std::string describe_status(int status) {
  if (status == -1) return "hung (killed after the deadline)";
  if (status == -2) return "waitpid failed";
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("signal ") + strsignal(WTERMSIG(status));
  return "status " + std::to_string(status);
}

}  // namespace tlrel
