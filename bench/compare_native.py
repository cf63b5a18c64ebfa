#!/usr/bin/python3
"""Compare tideloop's native runtime with Tokio and oneTBB on the same workloads, in one run.

Runs, case by case (one process per case, so a hang or crash costs one cell, not the run):
  * <build>/bench/native/tideloop_bench  Google Benchmark; cases "<workload>/<workers>" with a
                                         user counter ns_per_op
  * <build>/bench/native/tbb_bench       same conventions, oneTBB peer (spawn_many_*, chained_spawn)
  * bench/peers/tokio                    Rust crate, binary tokio_peer (Tokio's own
                                         rt_multi_threaded benchmarks + timers/timer_cancel/tcp_echo),
                                         built here with `cargo build --release` offline
and prints one table: ns per operation for each runtime, the time ratio tideloop/Tokio (target
<= 0.70) and tideloop/oneTBB (target <= 1.0). Lower is better everywhere.

A missing binary or workload is shown as "—"; a case that hangs (Tokio 1.24 never finishes
spawn_many_remote_busy2) is shown as "DNF". Missing targets are a finding, not a failure: the
exit status is 0 unless something actually broke (a build failed, a binary crashed, bad JSON).

Standard library only; matplotlib is used for --plot when it is importable.

    /usr/bin/python3 bench/compare_native.py --build build
    /usr/bin/python3 bench/compare_native.py --quick --workers 1,2 --filter spawn
    /usr/bin/python3 bench/compare_native.py --out-md docs/benchmarks.md --plot docs/ratios.png
"""

import argparse
import datetime
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKIO_CRATE = os.path.join(REPO, "bench", "peers", "tokio")
DEBIAN_CARGO_REGISTRY = "/usr/share/cargo/registry"

# Table order; workloads a binary offers beyond these are appended after them.
WORKLOADS = [
    "spawn_many_local",
    "spawn_many_local_fn",
    "spawn_many_remote_idle",
    "spawn_many_remote_busy1",
    "spawn_many_remote_busy2",
    "ping_pong",
    "yield_many",
    "chained_spawn",
    "chained_spawn_fn",
    "timers",
    "timer_cancel",
    "tcp_echo",
]
# Cases that may never finish (Tokio 1.24's LIFO slot starves the injector); each runs in its
# own process under a short bound and is reported as DNF when it overruns.
HANG_PRONE = {"spawn_many_remote_busy2"}
# tideloop's "_fn" rows spawn plain callables, like oneTBB's task_group::run
# always does: their oneTBB cell is oneTBB's run of the base workload (measured
# once, shown on both rows). Tokio has no counterpart (its tasks are futures).
TBB_SAME_AS = {"spawn_many_local_fn": "spawn_many_local", "chained_spawn_fn": "chained_spawn"}

TOKIO_TARGET = 0.70  # tideloop time / Tokio time
TBB_TARGET = 1.0  # tideloop time / oneTBB time

PEERS = ("tideloop", "tokio", "tbb")
PEER_TITLE = {"tideloop": "tideloop", "tokio": "Tokio", "tbb": "oneTBB"}

OK, DNF, ERROR, MISSING = "ok", "dnf", "error", "missing"
CASE_NAME = re.compile(r"^([A-Za-z0-9_]+)/(\d+)(?:/.*)?$")


def log(msg, end="\n"):
    sys.stderr.write(msg + end)
    sys.stderr.flush()


class Result:
    """One cell: a runtime's median ns per operation for one (workload, workers)."""

    def __init__(self, status, ns_per_op=None, message="", real_time_ns=None, extra=None):
        self.status = status
        self.ns_per_op = ns_per_op
        self.message = message
        self.real_time_ns = real_time_ns
        self.extra = extra or {}

    def to_json(self):
        d = {"status": self.status, "ns_per_op": self.ns_per_op}
        if self.real_time_ns is not None:
            d["real_time_ns"] = self.real_time_ns
        if self.message:
            d["message"] = self.message
        d.update(self.extra)
        return d


def split_case(name):
    """'spawn_many_local/2' or 'spawn_many_local/2/real_time' -> ('spawn_many_local', 2)."""
    m = CASE_NAME.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def results_from_gbench_json(doc):
    """{run_name: Result} from a Google Benchmark JSON document (tokio_peer writes the same
    shape). Takes the median aggregate's ns_per_op; without aggregates (one repetition) the
    mean of the iteration runs; any error_occurred entry marks the case DNF or ERROR."""
    per_run = {}
    for b in doc.get("benchmarks", []):
        name = b.get("run_name") or b.get("name", "")
        if b.get("run_type") == "aggregate" and not b.get("run_name"):
            name = re.sub(r"_(mean|median|stddev|cv)$", "", name)
        per_run.setdefault(name, []).append(b)
    out = {}
    for name, entries in per_run.items():
        errors = [e for e in entries if e.get("error_occurred")]
        if errors:
            msg = errors[0].get("error_message", "error")
            status = DNF if re.search(r"did not finish|timed? ?out|DNF", msg, re.I) else ERROR
            out[name] = Result(status, message=msg)
            continue
        med = [e for e in entries if e.get("run_type") == "aggregate" and e.get("aggregate_name") == "median"]
        its = [e for e in entries if e.get("run_type", "iteration") == "iteration"]
        chosen = med[:1] or its
        vals = [e["ns_per_op"] for e in chosen if isinstance(e.get("ns_per_op"), (int, float))]
        if not vals:
            out[name] = Result(ERROR, message="no ns_per_op counter in the JSON")
            continue
        ns = sum(vals) / len(vals)
        rt = [to_ns(e.get("real_time"), e.get("time_unit", "ns")) for e in chosen]
        rt = [x for x in rt if x is not None]
        extra = {}
        for k in ("ns_per_op_min", "ns_per_op_max", "inner_iterations", "repetitions"):
            if k in chosen[0]:
                extra[k] = chosen[0][k]
        out[name] = Result(OK, ns, real_time_ns=(sum(rt) / len(rt)) if rt else None, extra=extra)
    return out


def to_ns(value, unit):
    if not isinstance(value, (int, float)):
        return None
    return value * {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}.get(unit, 1)


def describe_exit(rc, err):
    if rc is not None and rc < 0:
        try:
            import signal
            what = f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            what = f"killed by signal {-rc}"
    else:
        what = f"exit status {rc}"
    t = tail(err)
    return f"{what}: {t}" if t else what


def tail(text, lines=6):
    text = (text or "").strip().splitlines()
    return " | ".join(text[-lines:])


class Peer:
    """A runtime column. Subclasses know how to list and run their cases."""

    key = ""

    def __init__(self):
        self.available = False
        self.note = ""
        self.cases = {}  # (workload, workers) -> exact case name
        self.context = {}
        self.fatal = False  # something broke that should make the exit status non-zero

    def run_case(self, workload, workers, opts):
        raise NotImplementedError


def run_process(cmd, timeout, env=None, cwd=None):
    """(returncode, stdout, stderr, timed_out). On timeout the child (and only it) is killed."""
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=timeout, env=env, cwd=cwd)
        return p.returncode, p.stdout, p.stderr, False
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return None, out, err, True


class GBenchPeer(Peer):
    """A Google Benchmark binary following the '<workload>/<workers>' + ns_per_op contract."""

    def __init__(self, key, path):
        super().__init__()
        self.key = key
        self.path = path
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            self.note = f"{PEER_TITLE[key]}: {display_path(path)} not built; column skipped"
            return
        rc, out, err, timed_out = run_process([path, "--benchmark_list_tests=true"], 60)
        if rc != 0 or timed_out:
            self.note = f"{PEER_TITLE[key]}: {path} --benchmark_list_tests failed: {tail(err)}"
            self.fatal = True
            return
        for line in out.splitlines():
            parsed = split_case(line.strip())
            if parsed and parsed not in self.cases:
                self.cases[parsed] = line.strip()
        self.available = True

    def run_case(self, workload, workers, opts):
        name = self.cases[(workload, workers)]
        with tempfile.TemporaryDirectory(prefix="cmpnative-") as tmp:
            out_file = os.path.join(tmp, "out.json")
            cmd = [self.path,
                   "--benchmark_filter=^" + re.escape(name) + "$",
                   "--benchmark_format=json",
                   "--benchmark_out=" + out_file,
                   "--benchmark_out_format=json",
                   f"--benchmark_repetitions={opts.repetitions}",
                   "--benchmark_report_aggregates_only=true"]
            if opts.min_time is not None:
                cmd.append(f"--benchmark_min_time={opts.min_time:g}")
            env = dict(os.environ)
            if opts.scale != 1.0:
                # Advisory: lets the native benches shrink their heavy workloads like the peers.
                env["TIDELOOP_BENCH_SCALE"] = f"{opts.scale:g}"
            limit = opts.hang_process_timeout if workload in HANG_PRONE else opts.case_timeout
            rc, out, err, timed_out = run_process(cmd, limit, env=env)
            if timed_out:
                status = DNF if workload in HANG_PRONE else ERROR
                if status == ERROR:
                    self.fatal = True
                return Result(status, message=f"did not finish within {limit:g} s (process killed)")
            doc = None
            try:
                with open(out_file) as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                pass
            if rc != 0 or doc is None:
                self.fatal = True
                return Result(ERROR, message=describe_exit(rc, err))
            self.context = self.context or doc.get("context", {})
            res = results_from_gbench_json(doc).get(name)
            if res is None:
                self.fatal = True
                return Result(ERROR, message=f"{name} missing from the JSON output")
            # A case that reports an error itself (SkipWithError, e.g. "not implemented yet") is a
            # finding shown as ERR, not a broken run; crashes and hangs above are.
            return res


class TokioPeer(Peer):
    """bench/peers/tokio, built offline against Debian's crates, one process per case."""

    key = "tokio"

    def __init__(self, opts):
        super().__init__()
        self.binary = None
        cargo = find_cargo()
        registry = sorted(glob.glob(os.path.join(DEBIAN_CARGO_REGISTRY, "tokio-1.*")))
        if opts.tokio_bin:
            self.binary = opts.tokio_bin
        elif cargo is None:
            self.note = "Tokio: cargo not found (looked in ~/.cargo/bin, /root/.cargo/bin, PATH); column skipped"
            return
        elif not registry:
            self.note = (f"Tokio: no {DEBIAN_CARGO_REGISTRY}/tokio-1.* (apt-get install librust-tokio-dev); "
                         "column skipped")
            return
        else:
            self.binary = self.build(cargo, opts)
            if self.binary is None:
                return
        for w in opts.workers:
            rc, out, err, _ = run_process([self.binary, "--list", "--workers", str(w)], 30)
            if rc != 0:
                self.note = f"Tokio: {self.binary} --list failed: {tail(err)}"
                self.fatal = True
                return
            for line in out.split():
                parsed = split_case(line)
                if parsed:
                    self.cases[parsed] = line
        self.available = True

    def build(self, cargo, opts):
        target_dir = opts.cargo_target_dir or os.path.join(TOKIO_CRATE, "target")
        env = dict(os.environ)
        env["CARGO_NET_OFFLINE"] = "true"
        env["CARGO_TARGET_DIR"] = target_dir
        env["PATH"] = os.path.dirname(cargo) + os.pathsep + env.get("PATH", "")
        log("building the Tokio peer (cargo build --release, offline, Debian crates) ...")
        t0 = time.monotonic()
        # cwd matters: bench/peers/tokio/.cargo/config.toml redirects crates-io to Debian's
        # registry and is only picked up from inside the crate directory.
        rc, out, err, timed_out = run_process([cargo, "build", "--release", "--quiet"], 1800,
                                              env=env, cwd=TOKIO_CRATE)
        if rc != 0 or timed_out:
            self.note = f"Tokio: cargo build failed: {tail(err, 12)}"
            self.fatal = True
            log(self.note)
            return None
        log(f"  built in {time.monotonic() - t0:.1f} s")
        return os.path.join(target_dir, "release", "tokio_peer")

    def run_case(self, workload, workers, opts):
        name = self.cases[(workload, workers)]
        with tempfile.TemporaryDirectory(prefix="cmpnative-") as tmp:
            out_file = os.path.join(tmp, "out.json")
            cmd = [self.binary, "--workers", str(workers),
                   "--filter", "^" + re.escape(name) + "$",
                   "--repetitions", str(opts.repetitions),
                   "--json", out_file,
                   "--scale", f"{opts.scale:g}",
                   "--timeout", f"{opts.dnf_timeout:g}"]
            if opts.min_time is not None:
                cmd += ["--min-time", f"{opts.min_time:g}"]
            # The peer bounds each iteration itself and recovers or exits on a hang; the
            # process limit is a second line of defence.
            limit = opts.hang_process_timeout if workload in HANG_PRONE else opts.case_timeout
            rc, out, err, timed_out = run_process(cmd, limit)
            if opts.verbose and err:
                log(err.rstrip())
            if timed_out:
                status = DNF if workload in HANG_PRONE else ERROR
                if status == ERROR:
                    self.fatal = True
                return Result(status, message=f"did not finish within {limit:g} s (process killed)")
            try:
                with open(out_file) as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                doc = None
            if rc != 0 or doc is None:
                self.fatal = True
                return Result(ERROR, message=describe_exit(rc, err))
            self.context = self.context or doc.get("context", {})
            res = results_from_gbench_json(doc).get(name)
            if res is None:
                self.fatal = True
                return Result(ERROR, message=f"{name} missing from the JSON output")
            return res


class JsonPeer(Peer):
    """Results loaded from a JSON file someone produced earlier (--from-json PEER=FILE)."""

    def __init__(self, key, path):
        super().__init__()
        self.key = key
        with open(path) as f:
            doc = json.load(f)
        self.context = doc.get("context", {})
        self.results = {}
        for name, res in results_from_gbench_json(doc).items():
            parsed = split_case(name)
            if parsed:
                self.cases[parsed] = name
                self.results[parsed] = res
        self.available = True
        self.note = f"{PEER_TITLE[key]}: results read from {path}, not measured in this run"

    def run_case(self, workload, workers, opts):
        return self.results[(workload, workers)]


def display_path(path):
    rel = os.path.relpath(path, REPO)
    return path if rel.startswith("..") else rel


def find_cargo():
    # rustup's cargo first: the peer needs rustc >= 1.82, newer than Debian 12's own rustc.
    for c in (os.path.expanduser("~/.cargo/bin/cargo"), "/root/.cargo/bin/cargo", shutil.which("cargo")):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


# ------------------------------------------------------------------------------------------------
# Table


def fmt_ns(res):
    if res is None or res.status == MISSING:
        return "—"
    if res.status == DNF:
        return "DNF"
    if res.status == ERROR:
        return "ERR"
    v = res.ns_per_op
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def ratio(ours, theirs, target, peer_title):
    """(cell text, ratio or None, target met: True/False/None)."""
    if ours is None or theirs is None or MISSING in (ours.status, theirs.status):
        return "—", None, None
    if ERROR in (ours.status, theirs.status):
        return "—", None, None
    if ours.status == DNF and theirs.status == DNF:
        return "DNF", None, None
    if ours.status == DNF:
        return "✗ (tideloop DNF)", None, False
    if theirs.status == DNF:
        return f"✓ ({peer_title} DNF)", None, True
    r = ours.ns_per_op / theirs.ns_per_op if theirs.ns_per_op > 0 else float("inf")
    met = r <= target
    return f"{r:.2f} {'✓' if met else '✗'}", r, met


HEADER = ["workload", "workers", "tideloop ns/op", "Tokio ns/op", "oneTBB ns/op",
          f"tideloop/Tokio (≤ {TOKIO_TARGET:.2f})", f"tideloop/oneTBB (≤ {TBB_TARGET:.1f})"]


def build_rows(results, keys):
    rows = []
    for (workload, workers) in keys:
        cell = results.get((workload, workers), {})
        t, k, b = cell.get("tideloop"), cell.get("tokio"), cell.get("tbb")
        if b is None and workload in TBB_SAME_AS:
            b = results.get((TBB_SAME_AS[workload], workers), {}).get("tbb")
        rk = ratio(t, k, TOKIO_TARGET, PEER_TITLE["tokio"])
        rb = ratio(t, b, TBB_TARGET, PEER_TITLE["tbb"])
        rows.append({
            "workload": workload, "workers": workers,
            "cells": [workload, str(workers), fmt_ns(t), fmt_ns(k), fmt_ns(b), rk[0], rb[0]],
            "ratio_tokio": rk[1], "meets_tokio": rk[2],
            "ratio_tbb": rb[1], "meets_tbb": rb[2],
            "results": {p: (cell[p].to_json() if p in cell else None) for p in PEERS},
        })
    return rows


def text_table(rows):
    table = [HEADER] + [r["cells"] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    right = {1, 2, 3, 4}
    lines = []
    for n, row in enumerate(table):
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows):
    out = ["| " + " | ".join(HEADER) + " |",
           "|" + "|".join([":---", "---:", "---:", "---:", "---:", ":---", ":---"]) + "|"]
    for r in rows:
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in r["cells"]) + " |")
    return "\n".join(out)


def summary(rows):
    def count(key):
        judged = [r[key] for r in rows if r[key] is not None]
        return sum(1 for m in judged if m), len(judged)
    mt, nt = count("meets_tokio")
    mb, nb = count("meets_tbb")
    return (f"tideloop meets the Tokio target (≤ {TOKIO_TARGET:.2f}× Tokio's time) on {mt} of {nt} "
            f"comparable rows, the oneTBB target (≤ {TBB_TARGET:.1f}×) on {mb} of {nb}.")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cmake_build_type(build):
    try:
        with open(os.path.join(build, "CMakeCache.txt")) as f:
            for line in f:
                if line.startswith("CMAKE_BUILD_TYPE:"):
                    return line.split("=", 1)[1].strip() or "(empty)"
    except OSError:
        pass
    return None


def run_info(opts, peers):
    tokio = peers.get("tokio")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "build_dir": opts.build,
        "cmake_build_type": cmake_build_type(opts.build),
        "tokio_version": (tokio.context.get("tokio_version") if tokio else None),
        "repetitions": opts.repetitions,
        "min_time_s": opts.min_time,
        "scale": opts.scale,
        "workers": opts.workers,
        "command": " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
    }


def markdown_doc(rows, info, notes):
    lines = [
        "# Native runtime comparison: tideloop vs Tokio vs oneTBB",
        "",
        f"Generated by `bench/compare_native.py` on {info['date']}: {info['cpu']}, "
        f"{info['cpus']} CPUs, Linux {info['kernel']}"
        + (f", Tokio {info['tokio_version']}" if info.get("tokio_version") else "")
        + (f", CMake build type {info['cmake_build_type']}" if info.get("cmake_build_type") else "")
        + ".",
        "",
        f"Each cell is the median ns per operation over {info['repetitions']} repetitions "
        "(lower is better). Ratios are tideloop's time over the peer's: the targets are "
        f"≤ {TOKIO_TARGET:.2f} against Tokio and ≤ {TBB_TARGET:.1f} against oneTBB. "
        "DNF: did not finish within the bound; —: not measured (workload or binary missing).",
        "",
        markdown_table(rows),
        "",
        summary(rows),
        "",
        "Workloads: Tokio's `benches/rt_multi_threaded.rs` (spawn_many_local, spawn_many_remote_idle, "
        "spawn_many_remote_busy1, spawn_many_remote_busy2, ping_pong, yield_many, chained_spawn; "
        "ns per spawn / ping / yield; tideloop spawns coroutines, as Tokio spawns futures), "
        "spawn_many_local_fn and chained_spawn_fn (the same with plain callables as tasks, as oneTBB's "
        "task_group::run takes; their oneTBB cell is oneTBB's run of the base workload), timers (100,000 sleeps spread over 10 ms; ns of overhead per "
        "timer beyond the window), timer_cancel (ns per create+register+drop of a 1 s sleep), "
        "tcp_echo (64 loopback clients × 1 KiB round trips; ns per round trip).",
    ]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    lines += ["", f"Command: `{info['command']}`", ""]
    return "\n".join(lines)


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not importable; --plot skipped"
    series = [("tideloop/Tokio", "ratio_tokio", TOKIO_TARGET, "tab:blue"),
              ("tideloop/oneTBB", "ratio_tbb", TBB_TARGET, "tab:orange")]
    rows = [r for r in rows if any(r[key] for _, key, _, _ in series)]
    if not rows:
        return "no comparable rows; --plot skipped"
    labels = [f"{r['workload']}/{r['workers']}" for r in rows]
    width = 0.4
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(rows) + 2), 5))
    for i, (title, key, target, color) in enumerate(series):
        xs = [n + (i - 0.5) * width for n, r in enumerate(rows) if r[key]]
        ys = [r[key] for r in rows if r[key]]
        if xs:
            ax.bar(xs, ys, width, label=title, color=color)
        ax.axhline(target, color=color, linestyle="--", linewidth=1,
                   label=f"target {title} ≤ {target:g}")
    ax.set_yscale("log")
    ax.set_ylabel("time ratio (lower is better)")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    ax.set_title("tideloop time / peer time per workload (log scale)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# ------------------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default="build", help="CMake build directory (default: build)")
    p.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated (default: 1,2,4)")
    p.add_argument("--repetitions", type=int, default=None, help="repetitions per case (default 5; 3 with --quick)")
    p.add_argument("--filter", default=None, help="regex matched (re.search) against '<workload>/<workers>'")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 3 repetitions, short min-time, heavy workloads scaled by 0.1")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds each repetition runs at least (Google Benchmark's --benchmark_min_time; "
                        "default: 0.25, 0.05 with --quick)")
    p.add_argument("--scale", type=float, default=None,
                   help="scale for the heavy workloads (tcp_echo round trips, timer_cancel count); "
                        "default 1, 0.1 with --quick")
    p.add_argument("--peers", default="tideloop,tokio,tbb", help="columns to measure (default: all)")
    p.add_argument("--from-json", action="append", default=[], metavar="PEER=FILE",
                   help="take a column from an existing Google-Benchmark-shaped JSON file instead of "
                        "running it (PEER: tideloop, tokio or tbb); repeatable")
    p.add_argument("--dnf-timeout", type=float, default=5.0,
                   help="Tokio peer: an iteration slower than this is DNF (default 5 s)")
    p.add_argument("--hang-timeout", type=float, default=60.0, dest="hang_process_timeout",
                   help="process bound for hang-prone cases (spawn_many_remote_busy2), default 60 s")
    p.add_argument("--case-timeout", type=float, default=600.0,
                   help="process bound for any other case (default 600 s)")
    p.add_argument("--tokio-bin", default=None, help="use this tokio_peer binary instead of building one")
    p.add_argument("--cargo-target-dir", default=None,
                   help="cargo target dir for the Tokio peer (default bench/peers/tokio/target)")
    p.add_argument("--out-md", default=None, help="write the table as Markdown (e.g. docs/benchmarks.md)")
    p.add_argument("--out-json", default=None, help="write all results as JSON")
    p.add_argument("--plot", default=None, help="bar chart of the ratios (PNG), needs matplotlib")
    p.add_argument("--verbose", action="store_true", help="pass the peers' progress output through")
    opts = p.parse_args(argv)
    try:
        opts.workers = sorted({int(w) for w in opts.workers.split(",") if w.strip()})
    except ValueError:
        p.error("--workers takes a comma-separated list of integers")
    if not opts.workers or min(opts.workers) < 1:
        p.error("--workers needs positive integers")
    if opts.repetitions is None:
        opts.repetitions = 3 if opts.quick else 5
    if opts.repetitions < 1:
        p.error("--repetitions must be >= 1")
    if opts.min_time is None:
        opts.min_time = 0.05 if opts.quick else 0.25
    if opts.scale is None:
        opts.scale = 0.1 if opts.quick else 1.0
    if opts.scale <= 0:
        p.error("--scale must be positive")
    opts.peers = [x.strip() for x in opts.peers.split(",") if x.strip()]
    for x in opts.peers:
        if x not in PEERS:
            p.error(f"unknown peer {x!r} (choose from {', '.join(PEERS)})")
    opts.from_json_map = {}
    for item in opts.from_json:
        key, sep, path = item.partition("=")
        if not sep or key not in PEERS:
            p.error(f"--from-json takes PEER=FILE with PEER in {', '.join(PEERS)}")
        opts.from_json_map[key] = path
    try:
        opts.filter_re = re.compile(opts.filter) if opts.filter else None
    except re.error as e:
        p.error(f"--filter: {e}")
    opts.build = os.path.abspath(opts.build)
    return opts


def main(argv=None):
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    notes = []
    peers = {}
    native = os.path.join(opts.build, "bench", "native")
    for key in PEERS:
        if key in opts.from_json_map:
            try:
                peers[key] = JsonPeer(key, opts.from_json_map[key])
            except (OSError, ValueError) as e:
                log(f"error: cannot read {opts.from_json_map[key]}: {e}")
                return 1
        elif key not in opts.peers:
            continue
        elif key == "tokio":
            peers[key] = TokioPeer(opts)
        else:
            peers[key] = GBenchPeer(key, os.path.join(native, f"{key}_bench"))
        if peers[key].note:
            notes.append(peers[key].note)
            if not peers[key].available:
                log("note: " + peers[key].note)

    # Rows: the known workloads in table order, then any extra workload a binary offers.
    workloads = list(WORKLOADS)
    for peer in peers.values():
        for (w, _) in sorted(peer.cases):
            if w not in workloads:
                workloads.append(w)
    keys = [(w, n) for w in workloads for n in opts.workers
            if not opts.filter_re or opts.filter_re.search(f"{w}/{n}")]
    # Drop rows nobody offers (e.g. an unknown extra workload at a worker count not listed).
    keys = [k for k in keys if any(k in p.cases for p in peers.values() if p.available)
            or k[0] in WORKLOADS]
    steps = [(k, key) for k in keys for key in PEERS
             if key in peers and peers[key].available and k in peers[key].cases]
    if not steps:
        log("nothing to run: no peer binary is available for the selected workloads")

    # Two cores shared with builds and test runs make every number noisy: say so in the report.
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    results = {}
    t_start = time.monotonic()
    for i, ((workload, workers), key) in enumerate(steps, 1):
        peer = peers[key]
        log(f"[{i}/{len(steps)}] {key} {workload}/{workers} ...", end=" ")
        t0 = time.monotonic()
        try:
            res = peer.run_case(workload, workers, opts)
        except OSError as e:
            res = Result(ERROR, message=str(e))
            peer.fatal = True
        took = time.monotonic() - t0
        if res.status == OK:
            log(f"{fmt_ns(res)} ns/op ({took:.1f} s)")
        else:
            log(f"{res.status.upper()}: {res.message} ({took:.1f} s)")
            if res.status == ERROR:
                notes.append(f"{PEER_TITLE[key]} {workload}/{workers}: {res.message}")
            elif res.status == DNF:
                notes.append(f"{PEER_TITLE[key]} {workload}/{workers}: DNF — {res.message}")
        results.setdefault((workload, workers), {})[key] = res
    if steps:
        log(f"done in {time.monotonic() - t_start:.0f} s")

    if steps and load_before >= 0.5:
        notes.append(f"the 1-minute load average was {load_before:.2f} when the run started: other "
                     "processes were competing for the CPUs, so treat small differences as noise")
    if "tokio" in peers and peers["tokio"].available and any(
            w == "spawn_many_remote_busy2" for (w, _) in keys):
        notes.append("spawn_many_remote_busy2: Tokio 1.24's LIFO slot never yields to the injector while "
                     "tasks keep spawning into it (fixed upstream in later releases), so Tokio is expected "
                     f"to DNF; its iterations are bounded at {opts.dnf_timeout:g} s.")
    if opts.scale != 1.0 and any(w in ("tcp_echo", "timer_cancel") for (w, _) in keys):
        notes.append(f"heavy workloads scaled by {opts.scale:g} (tcp_echo round trips, timer_cancel count)")
    bt = cmake_build_type(opts.build)
    if bt and bt.lower() not in ("release", "relwithdebinfo"):
        notes.append(f"CMake build type is {bt}: tideloop/oneTBB numbers are not optimised builds")

    rows = build_rows(results, keys)
    info = run_info(opts, peers)
    print()
    print(text_table(rows))
    print()
    print(summary(rows))
    for n in notes:
        print("note: " + n)

    if opts.out_md:
        write_file(opts.out_md, markdown_doc(rows, info, notes))
        log(f"wrote {opts.out_md}")
    if opts.out_json:
        doc = {"info": info, "targets": {"tokio": TOKIO_TARGET, "tbb": TBB_TARGET},
               "rows": [{k: v for k, v in r.items() if k != "cells"} for r in rows],
               "peer_context": {k: p.context for k, p in peers.items() if p.context},
               "notes": notes}
        write_file(opts.out_json, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        log(f"wrote {opts.out_json}")
    if opts.plot:
        problem = plot(rows, opts.plot)
        if problem:
            log("note: " + problem)
        else:
            log(f"wrote {opts.plot}")

    return 1 if any(p.fatal for p in peers.values()) else 0


def write_file(path, text):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
