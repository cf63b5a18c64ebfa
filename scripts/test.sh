#!/usr/bin/env bash
# test.sh: builds and runs the whole test suite; CI runs exactly this (.ci/run).
# Every step is a preset of CMakePresets.json: a developer runs one by name, e.g.
# `cmake --workflow --preset tsan`; this script loops over them and adds the counts.
#
#   setup     scripts/setup.sh: installs missing Debian packages
#   release   build/           everything (runtime, tests, benchmarks compiled but not
#                              run, examples, Python extension); every native test, the
#                              reliability tests, pytest on both loops (2 xdist workers)
#   smallq    build/           every native test again, linked against the runtime with
#                              4-slot local run queues (overflow and steal wrap-around
#                              run constantly): the same objects, one more library
#   soak      build/           native and Python soak, 60 s each, side by side
#   tsan      build-tsan/      ThreadSanitizer (gcc): the stress tests (only they are built)
#   asan      build-asan/      ASan + UBSan (clang): every native test and the
#                              reliability tests, leak checking on
#   pyasan    build-asan/      pytest against the extension built by asan, the ASan
#                              runtime preloaded into the (uninstrumented) interpreter;
#                              tideloop's side of each parity test
#   analysis  build-analysis/  clang: -Wthread-safety as errors and clang-tidy
#                              (.clang-tidy) over the runtime and the bridge (configure,
#                              then run-clang-tidy over the compile commands)
#   format    clang-format --dry-run over the C++ sources (report only)
#
# Build trees are reused when present: the presets pass every option explicitly, so a
# tree configured differently before is reconfigured, not trusted.
#
# Environment:
#   JOBS=2            parallel compile jobs and ctest jobs
#   ONLY="tsan asan"  run only these steps (setup always runs unless skipped)
#   SKIP="format"     skip these steps
#   CTEST_TIMEOUT=300 seconds one test may take before ctest kills it (pytest and the
#                     soak keep their own, longer, limits)
#   CTEST_ARGS="..."  extra ctest arguments for every step (e.g. -R Shutdown)
#
# Ends with the line "N passed, N failed": tests counted over every step (pytest's
# tests one by one; a build or step that fails outright counts as one failure).
# Exits non-zero if anything failed.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
JOBS=${JOBS:-2}
export JOBS
# Per test. The slowest test takes seconds even under the sanitizers; a hung
# one must not eat CI's 90 minutes (it may hang in every step).
CTEST_TIMEOUT=${CTEST_TIMEOUT:-300}

PASSED=0
FAILED=0
ANY_FAILED=0
SUMMARY=()
T_ALL=$(date +%s)

header() { printf '\n==================== %s ====================\n' "$*"; }

want() {
  [[ -z ${ONLY:-} || " $ONLY " == *" $1 "* ]] && [[ " ${SKIP:-} " != *" $1 "* ]]
}

# record STEP STATUS SECONDS DETAIL
record() {
  SUMMARY+=("$(printf '%-8s %-6s %6ss  %s' "$1" "$2" "$3" "$4")")
  [[ $2 == FAIL ]] && ANY_FAILED=1
  printf -- '--> %s: %s in %ss (%s)\n' "$1" "$2" "$3" "$4"
}

# binary_dir PRESET: the preset's binaryDir
binary_dir() {
  case $1 in
    release) echo "$ROOT/build" ;;
    *) echo "$ROOT/build-$1" ;;
  esac
}

# configure_build PRESET: configure and build the preset's tree once per run (logs in
# <tree>.build.log). Returns 0 if the whole build succeeded; after a failed build it
# builds what else builds, so the tests that compiled still run.
declare -A BUILT=()
configure_build() {
  local preset=$1 dir log
  dir=$(binary_dir "$preset")
  log="$dir.build.log"
  if [[ -n ${BUILT[$preset]:-} ]]; then
    [[ ${BUILT[$preset]} == ok ]]
    return
  fi
  local launcher=()
  if command -v ccache >/dev/null 2>&1; then
    launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
  fi
  local t0
  t0=$(date +%s)
  BUILT[$preset]=fail
  if ! cmake --preset "$preset" "${launcher[@]}" >"$log" 2>&1; then
    # A tree made by another generator, compiler or source dir: start it afresh.
    echo "[test] configuring $dir failed; starting the tree afresh"
    rm -rf "$dir/CMakeCache.txt" "$dir/CMakeFiles"
    if ! cmake --preset "$preset" "${launcher[@]}" >"$log" 2>&1; then
      echo "[test] configure of $dir failed; last lines of $log:"
      tail -n 30 "$log"
      return 1
    fi
  fi
  if ! cmake --build --preset "$preset" -j "$JOBS" >>"$log" 2>&1; then
    echo "[test] build of $dir failed; errors and last lines of $log:"
    grep -E 'error' "$log" | head -n 20
    tail -n 30 "$log"
    cmake --build --preset "$preset" -j "$JOBS" -- -k >>"$log" 2>&1 || true
    return 1
  fi
  grep -E 'warning:' "$log" | sort -u | head -n 20 || true
  echo "[test] $preset: configured and built in $(($(date +%s) - t0))s ($log)"
  BUILT[$preset]=ok
}

# pytest_counts LOG: sets P F E from pytest's last summary line in LOG
pytest_counts() {
  local last
  last=$(grep -E '[0-9]+ (passed|failed|error)' "$1" | tail -n 1)
  P=$(grep -oE '[0-9]+ passed' <<<"$last" | grep -oE '[0-9]+' || true)
  F=$(grep -oE '[0-9]+ failed' <<<"$last" | grep -oE '[0-9]+' || true)
  E=$(grep -oE '[0-9]+ errors?' <<<"$last" | grep -oE '[0-9]+' || true)
  P=${P:-0} F=${F:-0} E=${E:-0}
}

# run_ctest STEP TESTPRESET DIR: runs ctest --preset, adds its counts (pytest's tests
# one by one when the pytest test ran). Sets STEP_DETAIL.
run_ctest() {
  local step=$1 preset=$2 dir=$3
  local out="$dir.$step.ctest.log" t0
  t0=$(date +%s)
  local args=(--preset "$preset" -j"$JOBS" --timeout "$CTEST_TIMEOUT")
  [[ $step == soak || $step == pyasan ]] && args=(--preset "$preset" -j"$JOBS")
  # shellcheck disable=SC2086
  ctest "${args[@]}" ${CTEST_ARGS:-} 2>&1 | tee "$out"
  local rc=${PIPESTATUS[0]}
  # ThreadSanitizer cannot map its shadow memory under some high-entropy ASLR
  # settings; rerun without address randomisation if that is what happened.
  if [[ $rc -ne 0 ]] && grep -q 'unexpected memory mapping' "$out"; then
    echo "[test] TSan cannot run with this ASLR setting; rerunning with setarch -R"
    # shellcheck disable=SC2086
    setarch "$(uname -m)" -R ctest "${args[@]}" ${CTEST_ARGS:-} 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
  fi
  local line total failed
  line=$(grep -E '[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$out" | tail -n 1)
  if [[ -z $line ]]; then
    echo "[test] $step: ctest ran no test"
    FAILED=$((FAILED + 1))
    STEP_DETAIL="no tests ran"
    return 1
  fi
  failed=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$line")
  total=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\2/' <<<"$line")
  local passed=$((total - failed))
  STEP_DETAIL="$passed/$total ctest tests passed"
  # The pytest test stands for the whole Python suite: count its tests instead.
  local plog="$dir/pytest.log"
  if grep -qE 'Test +#[0-9]+: pytest ' "$out" && [[ -f $plog && $(stat -c %Y "$plog") -ge $t0 ]]; then
    pytest_counts "$plog"
    if grep -qE 'Test +#[0-9]+: pytest .*Passed' "$out"; then
      passed=$((passed - 1))
    elif ((F + E > 0)); then
      failed=$((failed - 1))
    fi
    passed=$((passed + P))
    failed=$((failed + F + E))
    STEP_DETAIL="$STEP_DETAIL; pytest: $P passed, $F failed, $E errors"
  fi
  PASSED=$((PASSED + passed))
  FAILED=$((FAILED + failed))
  [[ $rc -eq 0 && $failed -eq 0 ]]
}

# test_step STEP CONFIGURE_PRESET [TEST_PRESET]: build the tree (once), run the tests.
test_step() {
  local step=$1 cpreset=$2 tpreset=${3:-$1}
  want "$step" || return 0
  local dir t0 built=1
  dir=$(binary_dir "$cpreset")
  header "$step: cmake --preset $cpreset, ctest --preset $tpreset ($dir)"
  t0=$(date +%s)
  STEP_DETAIL=""
  if ! configure_build "$cpreset"; then
    built=0
    FAILED=$((FAILED + 1))
    if [[ ! -f $dir/CTestTestfile.cmake ]]; then
      record "$step" FAIL $(($(date +%s) - t0)) "configure failed (see $dir.build.log)"
      return
    fi
    echo "[test] build failed; running the tests that did build"
  fi
  if run_ctest "$step" "$tpreset" "$dir" && [[ $built -eq 1 ]]; then
    record "$step" ok $(($(date +%s) - t0)) "$STEP_DETAIL"
  else
    [[ $built -eq 0 ]] && STEP_DETAIL="BUILD FAILED (see $dir.build.log); $STEP_DETAIL"
    record "$step" FAIL $(($(date +%s) - t0)) "$STEP_DETAIL"
  fi
}

# --- setup ---
if want setup; then
  header "setup: Debian packages"
  t0=$(date +%s)
  if bash scripts/setup.sh </dev/null; then
    record setup ok $(($(date +%s) - t0)) "packages present"
  else
    FAILED=$((FAILED + 1))
    record setup FAIL $(($(date +%s) - t0)) "scripts/setup.sh failed"
  fi
fi

test_step release release
test_step smallq release smallq
test_step soak release soak
test_step tsan tsan
test_step asan asan
test_step pyasan asan pyasan

# --- analysis: clang -Wthread-safety as errors and clang-tidy over runtime/src and bridge/ ---
# The preset's build runs clang-tidy beside each compile; here the tree is only configured
# (that also self-tests the thread-safety analysis, tests/analysis/) and run-clang-tidy
# reads its compile commands: the same flags, so a thread-safety violation is an error
# there too, without the compile (~95 s of CPU). Any diagnostic fails the step.
if want analysis; then
  header "analysis: cmake --preset analysis, run-clang-tidy (clang -Wthread-safety, .clang-tidy)"
  t0=$(date +%s)
  dir=$(binary_dir analysis)
  log="$dir.tidy.log"
  if ! cmake --preset analysis >"$dir.build.log" 2>&1; then
    rm -rf "$dir/CMakeCache.txt" "$dir/CMakeFiles"
    cmake --preset analysis >"$dir.build.log" 2>&1
  fi
  if [[ ! -f $dir/compile_commands.json ]]; then
    tail -n 30 "$dir.build.log"
    FAILED=$((FAILED + 1))
    record analysis FAIL $(($(date +%s) - t0)) "configure failed (see $dir.build.log)"
  else
    tidy=run-clang-tidy-14
    command -v "$tidy" >/dev/null 2>&1 || tidy=run-clang-tidy
    # (colour codes stripped: run-clang-tidy 14 asks for colour even into a file)
    "$tidy" -p "$dir" -j "$JOBS" -quiet "$ROOT/(runtime/src|bridge)/" 2>&1 |
      sed 's/\x1b\[[0-9;]*m//g' >"$log"
    rc=${PIPESTATUS[0]}
    n=$(grep -cE '^/.*: (warning|error):' "$log" || true)
    if [[ $rc -eq 0 && $n -eq 0 ]]; then
      PASSED=$((PASSED + 1))
      record analysis ok $(($(date +%s) - t0)) "no thread-safety or clang-tidy finding"
    else
      grep -E '^/.*: (warning|error):' "$log" | sort -u | head -n 30
      FAILED=$((FAILED + 1))
      record analysis FAIL $(($(date +%s) - t0)) "$n findings, exit $rc (see $log)"
    fi
  fi
fi

# --- format: clang-format (report only) ---
if want format; then
  header "format: clang-format --dry-run (report only)"
  t0=$(date +%s)
  if command -v clang-format >/dev/null 2>&1; then
    mapfile -t files < <(find runtime bench/native tests/native bridge \
      \( -name '*.cpp' -o -name '*.hpp' -o -name '*.h' -o -name '*.cc' \) -type f 2>/dev/null | sort)
    unformatted=()
    for f in "${files[@]}"; do
      if clang-format --dry-run "$f" 2>&1 | grep -q 'warning:'; then unformatted+=("$f"); fi
    done
    for f in "${unformatted[@]}"; do echo "  needs clang-format: $f"; done
    record format info $(($(date +%s) - t0)) "${#unformatted[@]} of ${#files[@]} files differ from .clang-format"
  else
    record format info $(($(date +%s) - t0)) "clang-format not installed: skipped"
  fi
fi

header "summary"
for line in "${SUMMARY[@]}"; do echo "$line"; done
echo "total $(($(date +%s) - T_ALL))s"
echo "$PASSED passed, $FAILED failed"
[[ $ANY_FAILED -eq 0 && $FAILED -eq 0 ]]
