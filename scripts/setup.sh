#!/usr/bin/env bash
# Installs whatever Debian packages tideloop needs that are missing. Idempotent:
# when everything is present it makes no network call.
set -euo pipefail
PKGS=(build-essential cmake g++ libtbb-dev libasio-dev pybind11-dev python3-pybind11
      libabsl-dev libgtest-dev libbenchmark-dev python3-dev python3-pytest
      python3-uvloop python3-aiohttp python3-matplotlib wrk librust-tokio-dev
      python3-hypothesis python3-pytest-xdist clang-14 clang-tidy-14
      libclang-rt-14-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[setup] installing: ${missing[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  # librust-tokio-dev is only for the Tokio peer benchmark; never fail setup on it.
  core=(); for p in "${missing[@]}"; do [[ $p == librust-tokio-dev ]] || core+=("$p"); done
  ((${#core[@]})) && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${core[@]}"
  if [[ " ${missing[*]} " == *" librust-tokio-dev "* ]]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq librust-tokio-dev ||
      echo "[setup] librust-tokio-dev unavailable: the Tokio column will be skipped"
  fi
else
  echo "[setup] all packages present"
fi
