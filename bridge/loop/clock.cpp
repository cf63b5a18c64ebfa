// loop.time(): time.monotonic() with the same rounding, plus a test-only offset.
#include <ctime>

#include "internal.hpp"

namespace tideloop::bridge {

namespace {
// Test hook (_tideloop._debug_clock_offset): moves every loop's clock, so that tests can check
// days-long timers without waiting for them. Always 0 outside tests. GIL-protected.
std::int64_t g_clock_offset_ns = 0;
}  // namespace

std::int64_t clock_offset_ns() {
  return g_clock_offset_ns;
}
void set_clock_offset_ns(std::int64_t ns) {
  g_clock_offset_ns = ns;
}

double monotonic_now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  std::int64_t ns =
      static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec + g_clock_offset_ns;
  // Same rounding as time.monotonic() (_PyTime_AsSecondsDouble), so loop.time() == monotonic().
  // NOLINTNEXTLINE(bugprone-integer-division): exact, ns is a whole number of seconds here
  if (ns % 1000000000 == 0) return static_cast<double>(ns / 1000000000);
  volatile double d = static_cast<double>(ns);
  d = d / 1e9;
  return d;
}

}  // namespace tideloop::bridge
