#!/usr/bin/env bash
# test.sh: builds and runs the whole test suite; CI runs exactly this (.ci/run).
#
#   setup    scripts/setup.sh: installs missing Debian packages
#   release  build/         everything (runtime, tests, benchmarks compiled but
#                           not run, Python extension); every native test
#   smallq   build-smallq/  4-slot local run queues (overflow and steal
#                           wrap-around paths run constantly), tests only;
#                           every native test
#   tsan     build-tsan/    ThreadSanitizer, tests only; the tests labelled
#                           stress (files *stress*_test.cpp)
#   asan     build-asan/    AddressSanitizer + UndefinedBehaviorSanitizer,
#                           tests and the Python extension; every native test
#   python   pytest tests/python against build/python (if tests exist)
#   pyasan   build-asan/    pytest tests/python against the Python extension
#                           built by the asan step (built here if that step
#                           was skipped), the ASan runtime preloaded into the
#                           (uninstrumented) interpreter
#   format   clang-format --dry-run over the C++ sources (report only)
#
# Build trees are reused when present (every option is passed explicitly, so a
# tree configured differently before is reconfigured, not trusted).
#
# Environment:
#   JOBS=2            parallel compile jobs and ctest jobs
#   ONLY="tsan asan"  run only these steps (setup always runs unless skipped)
#   SKIP="format"     skip these steps
#   BUILD_PREFIX=DIR  where the build trees go (default: the repository root)
#   CTEST_TIMEOUT=300 seconds one test may take before ctest kills it
#   CTEST_ARGS="..."  extra ctest arguments for every native step (e.g. -R Shutdown)
#
# Ends with the line "N passed, N failed": tests counted over every step (a
# build or step that fails outright counts as one failure). Exits non-zero if
# anything failed.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
JOBS=${JOBS:-2}
export JOBS
PREFIX=${BUILD_PREFIX:-$ROOT}
PY=/usr/bin/python3  # Debian's: the Debian Python packages live only there
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

# build DIR CMAKE_ARGS...: configure (reusing DIR) and build; log in DIR.build.log
build() {
  local dir=$1
  shift
  local launcher=()
  if command -v ccache >/dev/null 2>&1; then
    launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
  fi
  local log="$dir.build.log"
  mkdir -p "$(dirname "$dir")"
  if ! bash scripts/build.sh "$dir" -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" "$@" >"$log" 2>&1; then
    if grep -qE 'does not match the source|generator .* does not match|CMakeCache.txt directory' "$log"; then
      echo "[test] $dir was configured for another tree or generator: starting it afresh"
      rm -rf "$dir/CMakeCache.txt" "$dir/CMakeFiles"
      bash scripts/build.sh "$dir" -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" "$@" >"$log" 2>&1 && return 0
    fi
    echo "[test] build of $dir failed; errors and last lines of $log:"
    grep -E 'error' "$log" | head -n 20
    tail -n 30 "$log"
    # Build whatever else builds, so the tests that compiled still run.
    if [[ -f $dir/CMakeCache.txt ]]; then
      local k=-k
      grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja' "$dir/CMakeCache.txt" && k="-k0"
      cmake --build "$dir" -j "$JOBS" -- "$k" >>"$log" 2>&1 || true
    fi
    return 1
  fi
  grep -E 'warning:' "$log" | sort -u | head -n 20 || true
  return 0
}

# run_ctest STEP DIR [ctest args...]: runs ctest, adds its counts.
run_ctest() {
  local step=$1 dir=$2
  shift 2
  local out="$dir.ctest.log"
  # shellcheck disable=SC2086
  ctest --test-dir "$dir" --output-on-failure -j"$JOBS" --timeout "$CTEST_TIMEOUT" "$@" ${CTEST_ARGS:-} 2>&1 | tee "$out"
  local rc=${PIPESTATUS[0]}
  # ThreadSanitizer cannot map its shadow memory under some high-entropy ASLR
  # settings; rerun without address randomisation if that is what happened.
  if [[ $rc -ne 0 ]] && grep -q 'unexpected memory mapping' "$out"; then
    echo "[test] TSan cannot run with this ASLR setting; rerunning with setarch -R"
    # shellcheck disable=SC2086
    setarch "$(uname -m)" -R ctest --test-dir "$dir" --output-on-failure -j"$JOBS" \
      --timeout "$CTEST_TIMEOUT" "$@" ${CTEST_ARGS:-} 2>&1 | tee "$out"
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
  PASSED=$((PASSED + total - failed))
  FAILED=$((FAILED + failed))
  STEP_DETAIL="$((total - failed))/$total tests passed"
  [[ $rc -eq 0 && $failed -eq 0 ]]
}

# native_step STEP DIR "CMAKE ARGS" [ctest args...]
native_step() {
  local step=$1 dir=$2 args=$3
  shift 3
  want "$step" || return 0
  header "$step: build $(basename "$dir") ($args) and run ctest $*"
  local t0
  t0=$(date +%s)
  STEP_DETAIL=""
  local built=1
  # shellcheck disable=SC2086
  if ! build "$dir" $args; then
    built=0
    FAILED=$((FAILED + 1))
    if [[ ! -f $dir/CTestTestfile.cmake ]]; then
      record "$step" FAIL $(($(date +%s) - t0)) "configure failed (see $dir.build.log)"
      return
    fi
    echo "[test] build failed; running the tests that did build"
  else
    echo "[test] built in $(($(date +%s) - t0))s"
  fi
  if run_ctest "$step" "$dir" "$@" && [[ $built -eq 1 ]]; then
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

COMMON="-DTIDELOOP_BUILD_TESTS=ON"
TESTS_ONLY="$COMMON -DTIDELOOP_BUILD_BENCH=OFF -DTIDELOOP_BUILD_PYTHON=OFF -DTIDELOOP_BUILD_EXAMPLES=OFF"

# --- (a) Release: everything ---
native_step release "$PREFIX/build" \
  "$COMMON -DTIDELOOP_BUILD_BENCH=ON -DTIDELOOP_BUILD_PYTHON=ON -DTIDELOOP_BUILD_EXAMPLES=ON -DTIDELOOP_TSAN=OFF -DTIDELOOP_ASAN=OFF -DTIDELOOP_LOCAL_QUEUE_CAPACITY="

# --- (b) small local queues ---
native_step smallq "$PREFIX/build-smallq" \
  "$TESTS_ONLY -DTIDELOOP_TSAN=OFF -DTIDELOOP_ASAN=OFF -DTIDELOOP_LOCAL_QUEUE_CAPACITY=4"

# --- (c) ThreadSanitizer: stress tests ---
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1"
native_step tsan "$PREFIX/build-tsan" \
  "$TESTS_ONLY -DTIDELOOP_TSAN=ON -DTIDELOOP_ASAN=OFF -DTIDELOOP_LOCAL_QUEUE_CAPACITY=" -L stress
unset TSAN_OPTIONS

# --- (d) AddressSanitizer + UBSan: everything ---
export ASAN_OPTIONS="detect_leaks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# The Python extension is built in the same tree (one ASan runtime build for both steps).
ASAN_ARGS="$COMMON -DTIDELOOP_BUILD_BENCH=OFF -DTIDELOOP_BUILD_PYTHON=ON -DTIDELOOP_BUILD_EXAMPLES=OFF -DTIDELOOP_TSAN=OFF -DTIDELOOP_ASAN=ON -DTIDELOOP_LOCAL_QUEUE_CAPACITY="
native_step asan "$PREFIX/build-asan" "$ASAN_ARGS"
unset ASAN_OPTIONS UBSAN_OPTIONS

# --- (e) Python ---
if want python && [[ -d tests/python ]]; then
  header "python: pytest tests/python (PYTHONPATH=$PREFIX/build/python)"
  t0=$(date +%s)
  ntests=$(find tests/python -name 'test_*.py' -o -name '*_test.py' | wc -l)
  out="$PREFIX/build.pytest.log"
  mkdir -p "$PREFIX"
  PYTHONPATH="$PREFIX/build/python${PYTHONPATH:+:$PYTHONPATH}" \
    "$PY" -m pytest tests/python -q -p no:cacheprovider </dev/null 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  last=$(grep -E '[0-9]+ (passed|failed|error)' "$out" | tail -n 1)
  p=$(grep -oE '[0-9]+ passed' <<<"$last" | grep -oE '[0-9]+' || true)
  f=$(grep -oE '[0-9]+ failed' <<<"$last" | grep -oE '[0-9]+' || true)
  e=$(grep -oE '[0-9]+ errors?' <<<"$last" | grep -oE '[0-9]+' || true)
  p=${p:-0} f=${f:-0} e=${e:-0}
  PASSED=$((PASSED + p))
  FAILED=$((FAILED + f + e))
  if [[ $rc -eq 5 && $ntests -eq 0 ]]; then
    record python ok $(($(date +%s) - t0)) "no Python tests yet"
  elif [[ $rc -eq 0 ]]; then
    record python ok $(($(date +%s) - t0)) "$p passed"
  else
    [[ $((f + e)) -eq 0 ]] && FAILED=$((FAILED + 1))  # collection error, exit 5, crash...
    record python FAIL $(($(date +%s) - t0)) "pytest exit $rc: $p passed, $f failed, $e errors"
  fi
fi

# --- (e2) Python tests against the bridge built with ASan + UBSan ---
if want pyasan && [[ -d tests/python ]]; then
  header "pyasan: bridge under ASan+UBSan, pytest tests/python"
  t0=$(date +%s)
  dir="$PREFIX/build-asan"
  # shellcheck disable=SC2086
  if build "$dir" $ASAN_ARGS; then
    echo "[test] built in $(($(date +%s) - t0))s"
    # The interpreter is not instrumented: ASan's runtime must be loaded first (LD_PRELOAD).
    # CPython keeps its arenas and interned objects until exit, so leak checking would only
    # report the interpreter's own allocations: off here (the native asan step checks leaks).
    asan_rt=$(g++ -print-file-name=libasan.so)
    ubsan_rt=$(g++ -print-file-name=libubsan.so)
    out="$PREFIX/build-asan.pytest.log"
    LD_PRELOAD="$asan_rt $ubsan_rt" \
      ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1" \
      UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
      PYTHONMALLOC=malloc TIDELOOP_BUILD_DIR="$dir" PYTHONPATH="$dir/python${PYTHONPATH:+:$PYTHONPATH}" \
      "$PY" -m pytest tests/python -q -p no:cacheprovider </dev/null 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    last=$(grep -E '[0-9]+ (passed|failed|error)' "$out" | tail -n 1)
    p=$(grep -oE '[0-9]+ passed' <<<"$last" | grep -oE '[0-9]+' || true)
    f=$(grep -oE '[0-9]+ failed' <<<"$last" | grep -oE '[0-9]+' || true)
    e=$(grep -oE '[0-9]+ errors?' <<<"$last" | grep -oE '[0-9]+' || true)
    p=${p:-0} f=${f:-0} e=${e:-0}
    PASSED=$((PASSED + p))
    FAILED=$((FAILED + f + e))
    if grep -qE 'ERROR: AddressSanitizer|runtime error:' "$out"; then
      echo "[test] pyasan: a sanitizer report is in $out"
      FAILED=$((FAILED + 1))
      record pyasan FAIL $(($(date +%s) - t0)) "sanitizer report; pytest exit $rc: $p passed, $f failed"
    elif [[ $rc -eq 0 ]]; then
      record pyasan ok $(($(date +%s) - t0)) "$p passed"
    else
      [[ $((f + e)) -eq 0 ]] && FAILED=$((FAILED + 1))
      record pyasan FAIL $(($(date +%s) - t0)) "pytest exit $rc: $p passed, $f failed, $e errors"
    fi
  else
    FAILED=$((FAILED + 1))
    record pyasan FAIL $(($(date +%s) - t0)) "build failed (see $dir.build.log)"
  fi
fi

# --- (f) clang-format (report only) ---
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
