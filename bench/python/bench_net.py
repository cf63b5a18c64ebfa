#!/usr/bin/env python3
"""Network benchmarks: echo servers and an aiohttp server on asyncio, uvloop and tideloop.

    /usr/bin/python3 bench/python/bench_net.py --build build [--quick] [--json|--md]
        [--loops asyncio,uvloop] [--runs N] [--duration S] [--warmup S] [--no-ceiling]
        [--only TEXT] [--plot docs/python-net.png]

Each measurement starts the server of one row on one loop in its own process (net_server.py),
loads it from another process over loopback (127.0.0.1 or a unix socket in a temp dir), and
kills it. The load is the same for every loop: the C++ echo client (echo_client.cpp, target
tideloop_echo_client) or, for aiohttp, wrk -t2 -c50. Repetitions are interleaved across the loops
(row 1: asyncio, uvloop, tideloop, asyncio, ...) and the median rate is reported. Rates are
round trips (or HTTP requests) per second, so "vs X" is tideloop's rate divided by X's: above 1,
tideloop is faster. A loop whose server fails shows "n/a (error: ...)" and the run goes on.
The "C echo" column is no loop but a minimal C++ echo server (echo_server.cpp), for scale: how
much of a row is the kernel's loopback cost.

The same runs also give the server's CPU time per message ("µs CPU X"): the user + system time
of the server process (every thread) inside the measured window, divided by the round trips
completed in it (aiohttp: by wrk's requests). The echo client samples it itself at the window's
two ends (--server-pid: /proc/PID/task/*/schedstat, ns; /proc/PID/stat utime+stime without
schedstat); for aiohttp the driver samples around wrk. Unlike the rates it is not capped by the
client's speed: a loop that waits for the client shows its cost here. "CPU vs uvloop" is
uvloop's CPU per message / tideloop's: above 1, tideloop is cheaper.
"""

import argparse
import dataclasses
import http.client
import importlib.util
import json
import os
import pathlib
import re
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from _common import LOOP_NAMES, ROOT, add_common_args, environment, progress

HERE = pathlib.Path(__file__).resolve().parent
KIB = 1024
UDP_MAX = 60 * KIB  # echo_client's cap: below the 65,507-byte IPv4 datagram limit
READY_TIMEOUT = 20.0  # seconds for a server to import its loop and bind
STOP_TIMEOUT = 3.0  # seconds between SIGTERM and SIGKILL

# The targets, as tideloop's rate over uvloop's; every row also has to reach asyncio.
TARGET_VS_UVLOOP = {"protocol": 1.30, "sock": 1.30, "streams": 1.15, "aiohttp": 1.15}
# The reference column: echo_server.cpp, a minimal C++ epoll echo (not a loop; echo rows only):
# how much of a row's cost is the kernel's.
CEILING = "c-echo"
COLUMNS = LOOP_NAMES + (CEILING,)


@dataclasses.dataclass(frozen=True)
class Row:
    mode: str  # net_server.py --mode
    size: int = 0  # message bytes (0: aiohttp)
    conns: int = 0  # concurrent connections / UDP sockets (aiohttp: wrk's 50)

    @property
    def transport(self) -> str:
        return {"unix-protocol": "unix", "udp": "udp", "aiohttp": "http"}.get(self.mode, "tcp")

    @property
    def label(self) -> str:
        if self.mode == "aiohttp":
            return "aiohttp hello world, wrk -t2 -c50"
        what = {"protocol": "TCP protocol echo", "streams": "TCP streams echo",
                "sock": "TCP sock_* echo", "unix-protocol": "unix protocol echo",
                "udp": "UDP echo"}[self.mode]
        return f"{what}, {self.size // KIB} KiB x {self.conns}"

    @property
    def short(self) -> str:  # x-axis label of the plot
        if self.mode == "aiohttp":
            return "aiohttp"
        name = {"protocol": "proto", "streams": "streams", "sock": "sock_*",
                "unix-protocol": "unix", "udp": "udp"}[self.mode]
        return f"{name} {self.size // KIB}K x{self.conns}"

    @property
    def unit(self) -> str:
        return "req/s" if self.mode == "aiohttp" else "msg/s"

    @property
    def target(self):
        return TARGET_VS_UVLOOP.get(self.mode)


def rows_for(quick: bool) -> list:
    if quick:
        echo = [(KIB, 1), (KIB, 10), (100 * KIB, 10)]
        rows = [Row(m, s, c) for m in ("protocol", "streams", "sock") for s, c in echo]
        return rows + [Row("unix-protocol", KIB, 10), Row("udp", KIB, 10), Row("aiohttp")]
    rows = [Row(m, s * KIB, c) for m in ("protocol", "streams", "sock")
            for s in (1, 10, 100) for c in (1, 10)]
    rows += [Row("unix-protocol", s * KIB, c) for s in (1, 10) for c in (1, 10)]
    rows += [Row("udp", s * KIB, c) for s in (1, 10) for c in (1, 10)]
    return rows + [Row("aiohttp")]


class Failure(Exception):
    """A measurement that produced no number; the message goes into the table."""


def process_cpu_s(pid: int):
    """(CPU seconds of process pid so far, over all its threads, source) or None: the sum of the
    first field of /proc/PID/task/*/schedstat (ns on a CPU), or utime + stime of /proc/PID/stat
    (fields 14 and 15, clock ticks, all threads) where schedstat is missing. The same reading as
    echo_client.cpp's; a thread that exits between two samples takes its schedstat time away."""
    task = f"/proc/{pid}/task"
    try:
        ns, ok = 0, True
        for tid in os.listdir(task):
            try:
                with open(f"{task}/{tid}/schedstat") as f:
                    ns += int(f.read().split()[0])
            except FileNotFoundError:
                if os.path.exists(f"{task}/{tid}"):
                    ok = False  # the thread is there, schedstat is not: the kernel has none
                    break
        if ok:
            return ns * 1e-9, "schedstat"
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the name (field 2) may hold spaces
    except (OSError, IndexError):
        return None
    utime, stime = int(fields[11]), int(fields[12])  # fields 14, 15; fields[0] is field 3
    return (utime + stime) / os.sysconf("SC_CLK_TCK"), "stat"


def built(build: str, target: str) -> pathlib.Path:
    b = pathlib.Path(build)
    if not b.is_absolute():
        b = ROOT / b
    return b / "bench" / "python" / target


# --- the server process ---------------------------------------------------------------------

class Server:
    """net_server.py for one (loop, mode), or echo_server.cpp for the C echo column, in its own
    process group. A context manager: on exit the group gets SIGTERM, then SIGKILL if it is
    still there after STOP_TIMEOUT."""

    def __init__(self, loop: str, row: Row, build: str, tmpdir: str):
        self.loop, self.row, self.build = loop, row, build
        self.path = os.path.join(tmpdir, f"{loop}.sock") if row.transport == "unix" else None
        self.port = None
        self.proc = None
        self.stderr = tempfile.TemporaryFile(mode="w+")

    def __enter__(self):
        if self.path and os.path.exists(self.path):
            os.unlink(self.path)
        if self.loop == CEILING:
            cmd = [str(built(self.build, "tideloop_echo_server")),
                   "--transport", self.row.transport]
        else:
            cmd = [sys.executable, str(HERE / "net_server.py"), "--loop", self.loop,
                   "--mode", self.row.mode, "--build", self.build]
        if self.path:
            cmd += ["--path", self.path]
        # stdin stays open: the server exits at its EOF, so even our own death stops it.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, cwd=ROOT, start_new_session=True)
        _live.add(self)
        try:
            self._await_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def _await_ready(self):
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + READY_TIMEOUT
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Failure(f"server not ready after {READY_TIMEOUT:.0f} s")
                if sel.select(left):
                    line = self.proc.stdout.readline()
                    break
        finally:
            sel.close()
        if not line:
            self.proc.wait()
            raise Failure(self.error_text() or f"server exited with {self.proc.returncode}")
        ready = json.loads(line)
        running = ready["loop"].split(".")[0]
        if running != self.loop:
            raise Failure(f"server ran on {ready['loop']}, not {self.loop}")
        self.port = ready["port"]

    def error_text(self) -> str:
        """The server's last stderr line (net_server.py writes one line on failure)."""
        self.stderr.seek(0)
        lines = [ln.strip() for ln in self.stderr.read().splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        _live.discard(self)
        if self.path and os.path.exists(self.path):
            os.unlink(self.path)
        self.stderr.close()
        self.proc = None

    def died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None


_live: set = set()  # servers running now: stopped on any exit of the driver


def _stop_all():
    for s in list(_live):
        s.stop()


def _exit_on_signal(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds through every `finally`, which stops the servers


# --- the load -------------------------------------------------------------------------------

def run_echo(client: pathlib.Path, server: Server, row: Row, duration: float, warmup: float):
    cmd = [str(client), "--transport", row.transport, "--size", str(row.size),
           "--conns", str(row.conns), "--duration", f"{duration}", "--warmup", f"{warmup}",
           "--server-pid", str(server.proc.pid)]
    if row.transport == "unix":
        cmd += ["--path", server.path]
    else:
        cmd += ["--host", "127.0.0.1", "--port", str(server.port)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True,
                             timeout=duration + warmup + 15, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise Failure("echo client timed out") from None
    try:
        res = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise Failure(f"echo client: {out.stderr.strip() or out.returncode}") from None
    if "error" in res:
        # A server that failed says why; the client's view (refused, closed...) comes second.
        why = server.error_text()
        raise Failure((f"{why}; client: " if why else "client: ") + res["error"])
    extra = {"latency_us_p50": res["latency_us_p50"], "mib_per_s": res["mib_per_s"],
             "lost": res["lost"]}
    if "server_cpu_s" in res and res["messages"] > 0:
        extra["cpu_us_per_msg"] = res["server_cpu_s"] / res["messages"] * 1e6
        extra["cpu_util"] = res["server_cpu_s"] / res["duration_s"]
        extra["cpu_source"] = res["server_cpu_source"]
    return res["messages_per_s"], extra


def http_warmup(port: int, n: int = 20):
    """A few requests before wrk: checks the answer and lets the server settle."""
    for _ in range(n):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                body = r.read()
        except (OSError, http.client.HTTPException) as exc:
            raise Failure(f"GET /: {type(exc).__name__}: {exc}") from None
        if body != b"Hello, World!":
            raise Failure(f"aiohttp answered {body[:40]!r}")


def run_wrk(server: Server, duration: float):
    secs = max(1, round(duration))  # wrk takes whole seconds
    http_warmup(server.port)
    # The server's CPU around the whole of wrk: it includes wrk's 50 connects and closes, and
    # nothing else (an idle server costs nothing), so divided by wrk's request count it is the
    # cost of a request.
    cpu0 = process_cpu_s(server.proc.pid)
    t0 = time.monotonic()
    try:
        out = subprocess.run(["wrk", "-t2", "-c50", f"-d{secs}s", "--latency",
                              f"http://127.0.0.1:{server.port}/"],
                             capture_output=True, text=True, timeout=secs + 30,
                             start_new_session=True)
    except subprocess.TimeoutExpired:
        raise Failure("wrk timed out") from None
    cpu1 = process_cpu_s(server.proc.pid)
    elapsed = time.monotonic() - t0
    text = out.stdout
    m = re.search(r"Requests/sec:\s*([\d.]+)", text)
    if out.returncode != 0 or not m:
        raise Failure(f"wrk: {(out.stderr or text).strip()[:200]}")
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    if bad:
        raise Failure(f"wrk saw {bad.group(1)} non-2xx responses")
    errs = re.search(r"Socket errors:\s*(.*)", text)
    extra = {"socket_errors": errs.group(1).strip()} if errs else {}
    lat = re.search(r"^\s*50%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if lat:
        extra["latency_us_p50"] = float(lat.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[lat.group(2)]
    done = re.search(r"^\s*(\d+) requests in ", text, re.M)
    if cpu0 and cpu1 and cpu0[1] == cpu1[1] and done and int(done.group(1)) > 0:
        extra["cpu_us_per_msg"] = (cpu1[0] - cpu0[0]) / int(done.group(1)) * 1e6
        extra["cpu_util"] = (cpu1[0] - cpu0[0]) / elapsed
        extra["cpu_source"] = cpu0[1]
    return float(m.group(1)), extra


def measure_once(loop: str, row: Row, args, client, tmpdir: str):
    with Server(loop, row, args.build, tmpdir) as server:
        if row.mode == "aiohttp":
            try:
                return run_wrk(server, args.duration)
            except Failure as exc:
                why = server.error_text()
                raise Failure(f"{exc}; server: {why}" if why else str(exc)) from None
        return run_echo(client, server, row, args.duration, args.warmup)


# --- the runner -----------------------------------------------------------------------------

def wanted_loops(args) -> list:
    loops = []
    for name in (n.strip() for n in args.loops.split(",") if n.strip()):
        if name not in LOOP_NAMES:
            raise SystemExit(f"unknown loop {name!r}")
        if name == "uvloop" and importlib.util.find_spec("uvloop") is None:
            progress("uvloop is not installed: skipped")
            continue
        loops.append(name)
    return loops


def fill_defaults(args) -> None:
    """Durations and runs when not given: see the README for the time budget they fit."""
    if getattr(args, "duration", None) is None:
        args.duration = 0.5 if args.quick else 0.7
    if getattr(args, "warmup", None) is None:
        args.warmup = 0.1 if args.quick else 0.15
    if getattr(args, "net_runs", None) is None:
        args.net_runs = args.runs or (3 if args.quick else 5)
    if not hasattr(args, "only"):
        args.only = None
    if not hasattr(args, "no_ceiling"):
        args.no_ceiling = False
    # A reference, not a contender: fewer runs keep the default run within its time budget.
    args.ceiling_runs = 0 if args.no_ceiling else min(args.net_runs, max(2, args.net_runs // 2))


def run_net(args) -> list:
    """Every row on every loop; returns the result rows (see row_dict)."""
    fill_defaults(args)
    loops = wanted_loops(args)
    rows = rows_for(args.quick)
    if args.only:
        rows = [r for r in rows if args.only.lower() in r.label.lower()]
    client = built(args.build, "tideloop_echo_client")
    if not client.exists() and any(r.mode != "aiohttp" for r in rows):
        raise SystemExit(f"{client} is missing: build it with\n"
                         f"  cmake --build {args.build} --target tideloop_echo_client "
                         "tideloop_echo_server")
    if args.ceiling_runs and not built(args.build, "tideloop_echo_server").exists():
        progress("tideloop_echo_server is not built: the C echo column is skipped")
        args.ceiling_runs = 0
    if any(r.mode == "aiohttp" for r in rows) and shutil.which("wrk") is None:
        progress("wrk is not installed (apt-get install wrk): the aiohttp row is skipped")
        rows = [r for r in rows if r.mode != "aiohttp"]
    if importlib.util.find_spec("aiohttp") is None:
        progress("aiohttp is not installed (python3-aiohttp): the aiohttp row is skipped")
        rows = [r for r in rows if r.mode != "aiohttp"]
    progress(f"net: loops {', '.join(loops)}; {len(rows)} rows x {args.net_runs} runs of "
             f"{args.duration:g} s after {args.warmup:g} s warm-up (aiohttp: wrk, "
             f"{max(1, round(args.duration))} s)" +
             (f"; C echo reference: {args.ceiling_runs} run{'s' if args.ceiling_runs != 1 else ''}"
              if args.ceiling_runs else ""))
    old = {s: signal.signal(s, _exit_on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    tmpdir = tempfile.mkdtemp(prefix="tideloop-net-")
    results = []
    try:
        for i, row in enumerate(rows, 1):
            progress(f"[net {i}/{len(rows)}] {row.label}")
            columns = list(loops)
            if args.ceiling_runs and row.mode != "aiohttp":
                columns.append(CEILING)
            samples = {name: [] for name in columns}
            extras = {name: [] for name in columns}
            errors = {}
            for r in range(args.net_runs):
                for name in columns:
                    if name == CEILING and r >= args.ceiling_runs:
                        continue
                    if name in errors:
                        continue  # a loop that failed once fails again: do not wait for it
                    try:
                        rate, extra = measure_once(name, row, args, client, tmpdir)
                    except Exception as exc:  # noqa: BLE001 (Failure, or a surprise of ours)
                        if not isinstance(exc, Failure):
                            exc = f"{type(exc).__name__}: {exc}"
                        errors[name] = str(exc)
                        progress(f"  {row.short}: run {r + 1}/{args.net_runs} {name}: "
                                 f"error: {exc}")
                        continue
                    samples[name].append(rate)
                    extras[name].append(extra)
                    cpu = extra.get("cpu_us_per_msg")
                    progress(f"  {row.short}: run {r + 1}/{args.net_runs} {name} "
                             f"{rate:,.0f} {row.unit}" +
                             (f", {cpu:.1f} µs CPU/{row.unit[:-2]}" if cpu is not None else ""))
            results.append(row_dict(row, columns, samples, extras, errors))
    finally:
        _stop_all()
        shutil.rmtree(tmpdir, ignore_errors=True)
        for s, h in old.items():
            signal.signal(s, h)
    return results


def row_dict(row: Row, loops, samples, extras, errors) -> dict:
    rate = {n: statistics.median(v) for n, v in samples.items() if v and n not in errors}
    lat = {}
    for n, ex in extras.items():
        vals = [e["latency_us_p50"] for e in ex if "latency_us_p50" in e]
        if vals and n in rate:
            lat[n] = statistics.median(vals)
    cpu, cpu_samples, cpu_util, sources = {}, {}, {}, set()
    for n, ex in extras.items():
        vals = [e["cpu_us_per_msg"] for e in ex if "cpu_us_per_msg" in e]
        if vals and n in rate:
            cpu[n], cpu_samples[n] = statistics.median(vals), vals
            cpu_util[n] = statistics.median(e["cpu_util"] for e in ex if "cpu_util" in e)
            sources.update(e["cpu_source"] for e in ex if "cpu_source" in e)
    d = {"benchmark": row.label, "mode": row.mode, "transport": row.transport,
         "size": row.size, "conns": 50 if row.mode == "aiohttp" else row.conns,
         "unit": row.unit, "loops": list(loops), "rate": rate,
         "samples": {n: v for n, v in samples.items() if v},
         "latency_us_p50": lat, "errors": errors,
         "target_vs_uvloop": row.target, "short": row.short,
         # Server CPU (user + system, all threads) per message or request in the measured
         # window, µs: medians and the runs; cpu_util: CPU seconds per second (1.0: one core).
         "cpu_us_per_msg": cpu, "cpu_samples": cpu_samples, "cpu_util": cpu_util,
         "cpu_source": "+".join(sorted(sources))}
    lost = sum(e.get("lost", 0) for ex in extras.values() for e in ex)
    if lost:
        d["udp_lost"] = lost
    d["vs"] = {b: rate["tideloop"] / rate[b] for b in ("asyncio", "uvloop")
               if "tideloop" in rate and b in rate and rate[b] > 0}
    # X's CPU per message / tideloop's: above 1, tideloop is cheaper.
    d["cpu_vs"] = {b: cpu[b] / cpu["tideloop"] for b in ("asyncio", "uvloop")
                   if "tideloop" in cpu and b in cpu and cpu["tideloop"] > 0}
    d["meets_target"] = verdict(d)
    return d


def verdict(d: dict):
    """True/False against the row's target (and never below asyncio); None: nothing to judge."""
    vs = d["vs"]
    checks = []
    if "asyncio" in vs:
        checks.append(vs["asyncio"] >= 1.0)
    if d["target_vs_uvloop"] and "uvloop" in vs:
        checks.append(vs["uvloop"] >= d["target_vs_uvloop"])
    if "tideloop" in d["errors"]:
        return False
    return all(checks) if checks else None


# --- output ---------------------------------------------------------------------------------

def target_text(d: dict) -> str:
    t = d["target_vs_uvloop"]
    return f">={t:.2f}x uvloop" if t else ">=1x asyncio"


def format_net_table(rows: list, markdown: bool = False) -> str:
    loops = [n for n in COLUMNS if any(n in r["loops"] for r in rows)]
    bases = [b for b in ("asyncio", "uvloop") if b in loops] if "tideloop" in loops else []
    head = ["benchmark", "unit"] + [("C echo" if n == CEILING else n) for n in loops]
    head += [f"vs {b}" for b in bases]
    if "tideloop" in loops:
        head += ["target", "met"]
    # The second measure: server CPU per message (per request for aiohttp), then the ratio.
    cpu_loops = [n for n in loops if any(n in r.get("cpu_us_per_msg", {}) for r in rows)]
    cpu_vs = "tideloop" in cpu_loops and "uvloop" in cpu_loops
    head += [f"µs CPU {'C echo' if n == CEILING else n}" for n in cpu_loops]
    if cpu_vs:
        head.append("CPU vs uvloop")
    body = []
    for r in rows:
        cells = [r["benchmark"], r["unit"]]
        for n in loops:
            if n in r["errors"]:
                cells.append(f"n/a (error: {r['errors'][n]})")
            elif n in r["rate"]:
                cells.append(f"{r['rate'][n]:,.0f}")
            else:
                cells.append("-")
        for b in bases:
            v = r["vs"].get(b)
            cells.append("-" if v is None else f"{v:.2f}x")
        if "tideloop" in loops:
            ok = r["meets_target"]
            cells += [target_text(r), "-" if ok is None else ("✓" if ok else "✗")]
        for n in cpu_loops:
            v = r.get("cpu_us_per_msg", {}).get(n)
            cells.append("-" if v is None else f"{v:.1f}")
        if cpu_vs:
            v = r.get("cpu_vs", {}).get("uvloop")
            cells.append("-" if v is None else f"{v:.2f}x")
        body.append(cells)
    if markdown:
        esc = lambda c: c.replace("|", "\\|")  # noqa: E731
        lines = ["| " + " | ".join(head) + " |",
                 "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|"]
        lines += ["| " + " | ".join(esc(c) for c in cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(c) for c in col) for col in zip(head, *body)]
    fmt = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), "  ".join("-" * w for w in widths)] + [fmt(c) for c in body])


def net_notes(rows: list, args) -> list:
    fill_defaults(args)
    notes = [
        f"Medians of {args.net_runs} run{'s' if args.net_runs != 1 else ''}, interleaved across "
        f"loops; each run is a fresh server process, {args.warmup:g} s warm-up, then "
        f"{args.duration:g} s measured "
        f"(aiohttp: wrk -t2 -c50 for {max(1, round(args.duration))} s after 20 requests).",
        "msg/s = request/response round trips per second summed over the connections (send S "
        "bytes, read back exactly S); req/s = HTTP requests per second. Higher is better.",
        "vs X = tideloop's rate / X's rate: above 1, tideloop is faster.",
        "Targets (the issue): protocol and sock_* echo >=1.30x uvloop, streams >=1.15x, "
        "aiohttp >=1.15x, and no row below asyncio (>=1x asyncio); met: ✓ or ✗.",
        f"UDP datagrams are capped at {UDP_MAX // KIB} KiB (below the 64 KiB IPv4 limit); the "
        "UDP rows use 1 and 10 KiB; x N = N client sockets.",
    ]
    if any(CEILING in r["rate"] for r in rows):
        notes.append(
            f"C echo: a minimal C++ epoll echo server (echo_server.cpp; median of "
            f"{args.ceiling_runs} run{'s' if args.ceiling_runs != 1 else ''}), for scale: what "
            "the kernel's loopback costs with this client. Where a loop is near it the row is "
            "bound by the kernel, not by the loop, and a target above C echo / uvloop is out of "
            "reach. Not a strict bound at 100 KiB: a server that wakes later finds the whole "
            "message in its socket and each read costs less (uvloop's protocol echo beats it).")
    if any(r.get("cpu_us_per_msg") for r in rows):
        sources = {x for r in rows for x in r.get("cpu_source", "").split("+") if x}
        how = {"schedstat": "/proc/PID/task/*/schedstat, ns",
               "stat": "/proc/PID/stat utime+stime, 10 ms ticks"}
        notes.append(
            "µs CPU X = what X's loop itself costs per message (per request for aiohttp): the "
            "user + system CPU time of the server process, all threads, inside the measured "
            "window, divided by the round trips completed in it; median of the runs; lower is "
            "better. The echo client samples it at the window's two ends, the driver around wrk "
            f"({'; '.join(how[x] for x in sorted(sources) if x in how) or 'n/a'}). Unlike the "
            "rates it is not bounded by the client: where a row's rates are squeezed towards "
            "the client's speed (C echo near uvloop), this still shows the loop's cost. It "
            "includes the server's syscalls and the kernel work done in them (on loopback a "
            "send also runs part of the peer's receive path), and it falls as a server gets "
            "busier: more events per wake-up, fewer wake-ups per message. So C echo's is the "
            "kernel's share, not a strict floor: a loop can come out under it when it gathers "
            "more per wake-up. The targets stay the throughput ones.")
        if any(r.get("cpu_vs") for r in rows):
            notes.append("CPU vs uvloop = uvloop's µs CPU per message / tideloop's: above 1, "
                         "tideloop is cheaper.")
    lost = sum(r.get("udp_lost", 0) for r in rows)
    if lost:
        notes.append(f"UDP: {lost} datagrams were given up after 200 ms without a reply and "
                     "sent again (the round trip is not counted).")
    return notes


def emit_net(rows: list, args) -> None:
    if args.json:
        print(json.dumps({"environment": environment(), "results": rows,
                          "notes": net_notes(rows, args)}, indent=2))
        return
    print(format_net_table(rows, markdown=args.md))
    for note in net_notes(rows, args):
        print(("- " if args.md else "") + note)


def _bars(ax, rows, series, ratio, have_tl) -> None:
    """One bar per (row, series): ratio(row, base), or "n/a" where there is none."""
    width = 0.8 / len(series)
    xs = range(len(rows))
    for k, (label, base, color) in enumerate(series):
        vals = [ratio(r, base) for r in rows]
        pos = [x - 0.4 + width * (k + 0.5) for x in xs]
        ax.bar([p for p, v in zip(pos, vals) if v is not None],
               [v for v in vals if v is not None], width, label=label, color=color)
        for p, v in zip(pos, vals):
            if v is None and have_tl:
                ax.text(p, 0.05, "n/a", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="gray", linewidth=1)
    ax.set_xticks(list(xs))
    ax.grid(True, axis="y", alpha=0.3)


def plot_net(rows: list, path: pathlib.Path) -> None:
    """Top panel, rates: bars per row of tideloop/uvloop and tideloop/asyncio, with the row's
    target marked. Bottom panel, server CPU per message: uvloop's/tideloop's and
    asyncio's/tideloop's (above 1: tideloop is cheaper). Without tideloop numbers, uvloop
    against asyncio, so the picture still says what the rows look like."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    have_tl = any("tideloop" in r["rate"] for r in rows)
    if have_tl:
        series = [("tideloop / uvloop", "uvloop", "tab:orange"),
                  ("tideloop / asyncio", "asyncio", "tab:blue")]
        ratio = lambda r, b: r["vs"].get(b)  # noqa: E731
        cpu_series = [("uvloop / tideloop", "uvloop", "tab:orange"),
                      ("asyncio / tideloop", "asyncio", "tab:blue")]
        cpu_ratio = lambda r, b: r.get("cpu_vs", {}).get(b)  # noqa: E731
    else:
        series = [("uvloop / asyncio (no tideloop results)", "asyncio", "tab:orange")]
        ratio = lambda r, b: (r["rate"]["uvloop"] / r["rate"]["asyncio"]  # noqa: E731
                              if "uvloop" in r["rate"] and "asyncio" in r["rate"] else None)
        cpu_series = [("asyncio / uvloop (no tideloop results)", "asyncio", "tab:orange")]

        def cpu_ratio(r, _b):
            c = r.get("cpu_us_per_msg", {})
            return c["asyncio"] / c["uvloop"] if c.get("asyncio") and c.get("uvloop") else None
    if all(ratio(r, base) is None for r in rows for _l, base, _c in series):
        progress(f"no ratios to plot (no row has two loops with results): {path} not written")
        return
    have_cpu = any(cpu_ratio(r, base) is not None for r in rows for _l, base, _c in cpu_series)
    xs = range(len(rows))
    fig, axes = plt.subplots(2 if have_cpu else 1, 1, sharex=True, squeeze=False,
                             figsize=(max(8, 0.55 * len(rows) + 2), 9 if have_cpu else 5))
    ax = axes[0][0]
    _bars(ax, rows, series, ratio, have_tl)
    ceil = [(x, r["rate"][CEILING] / r["rate"]["uvloop"]) for x, r in zip(xs, rows)
            if CEILING in r["rate"] and r["rate"].get("uvloop")]
    if ceil:
        ax.scatter([c[0] for c in ceil], [c[1] for c in ceil], marker="o", s=18, color="gray",
                   zorder=3, label="C echo / uvloop (for scale)")
    if have_tl:
        tx = [x for x, r in zip(xs, rows) if r["target_vs_uvloop"]]
        ty = [r["target_vs_uvloop"] for r in rows if r["target_vs_uvloop"]]
        ax.scatter(tx, ty, marker="_", s=300, color="black", zorder=3,
                   label="target vs uvloop")
    ax.set_ylabel("rate ratio (above 1: the first loop is faster)")
    ax.set_title("Network benchmarks: echo round trips/s and aiohttp requests/s, ratio of medians")
    ax.legend(fontsize=8)
    if have_cpu:
        ax = axes[1][0]
        _bars(ax, rows, cpu_series, cpu_ratio, have_tl)
        floor = [(x, r["cpu_us_per_msg"]["uvloop"] / r["cpu_us_per_msg"][CEILING])
                 for x, r in zip(xs, rows)
                 if r.get("cpu_us_per_msg", {}).get(CEILING)
                 and "uvloop" in r.get("cpu_us_per_msg", {})]
        if floor:
            ax.scatter([c[0] for c in floor], [c[1] for c in floor], marker="o", s=18,
                       color="gray", zorder=3, label="uvloop / C echo (for scale)")
        ax.set_ylabel("CPU per message ratio (above 1: the second loop is cheaper)")
        ax.set_title("Server CPU time (user + system) per round trip / request, ratio of medians")
        ax.legend(fontsize=8)
    axes[-1][0].set_xticklabels([r["short"] for r in rows], rotation=60, ha="right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    progress(f"plot written to {path}")


def add_net_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=None,
                        help="network rows: measured seconds per run (default 0.7, --quick 0.5)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="network rows: warm-up seconds per run (default 0.15, --quick 0.1)")
    parser.add_argument("--no-ceiling", action="store_true",
                        help="network rows: skip the C echo reference column")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    add_net_args(parser)
    parser.add_argument("--only", help="run the rows whose label contains TEXT")
    parser.add_argument("--plot", default="", help="PNG for the ratio plot (default: none)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        rows = run_net(args)
    except KeyboardInterrupt:  # the servers are stopped by then (run_net's finally)
        progress("interrupted")
        return 130
    if args.plot:
        plot_net(rows, pathlib.Path(args.plot))
    progress(f"done in {time.perf_counter() - started:.0f} s")
    emit_net(rows, args)


if __name__ == "__main__":
    sys.exit(main())
