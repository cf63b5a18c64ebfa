#!/usr/bin/env bash
# The README's first command: install what is missing, build (Release), and run
# the benchmark comparison: native (tideloop vs Tokio vs oneTBB), then Python
# (asyncio vs uvloop vs tideloop). Prints readable tables; writes Markdown,
# JSON and plots under bench/results/.
#   scripts/bench.sh            full run (~25-35 min on 2 cores, ~8 of them network)
#   scripts/bench.sh --quick    smoke run (a few minutes)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
QUICK=()
[[ "${1:-}" == "--quick" ]] && QUICK=(--quick)
PY=/usr/bin/python3   # Debian's interpreter: uvloop, pybind11, matplotlib live there

bash scripts/setup.sh
echo "[bench] building (Release) ..."
JOBS=${JOBS:-$(nproc)} bash scripts/build.sh build -DCMAKE_BUILD_TYPE=Release \
  -DTIDELOOP_BUILD_TESTS=OFF -DTIDELOOP_BUILD_BENCH=ON -DTIDELOOP_BUILD_PYTHON=ON
mkdir -p bench/results
echo "[bench] native: tideloop vs Tokio vs oneTBB"
$PY bench/compare_native.py --build build "${QUICK[@]}" \
  --out-md bench/results/native.md --out-json bench/results/native.json \
  --plot bench/results/native.png
if [[ -f bench/python/run_all.py ]]; then
  echo "[bench] python: asyncio vs uvloop vs tideloop"
  # The network rows need the echo client (target tideloop_echo_client, built above with
  # TIDELOOP_BUILD_BENCH=ON), wrk and python3-aiohttp (both from setup.sh).
  $PY bench/python/run_all.py --build build "${QUICK[@]}" --md \
    --plot bench/results/python-scaling.png \
    --net-plot bench/results/python-net.png | tee bench/results/python.md
fi
echo "[bench] results: bench/results/"
