#!/usr/bin/env bash
# build.sh [BUILD_DIR] [extra cmake args...]: configure and build one tree.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$ROOT/build}; shift || true
JOBS=${JOBS:-$(nproc)}
cmake -S "$ROOT" -B "$BUILD" -DPython_EXECUTABLE=/usr/bin/python3 "$@" >/dev/null
cmake --build "$BUILD" -j "$JOBS"
