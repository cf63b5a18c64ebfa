"""Shared machinery of the Python benchmarks: loop factories, the runner (all loops in one
process, interleaved repetitions, median), progress on stderr, and text/markdown/JSON tables.

Every benchmark is a function ``bench(loop, n) -> seconds`` that measures one run of size ``n``
on an already created loop. Results are medians over ``--runs`` repetitions; the repetitions of
the loops are interleaved (asyncio, uvloop, tideloop, asyncio, ...) so a machine-wide slowdown
hits all loops alike.
"""

import argparse
import asyncio
import gc
import json
import os
import pathlib
import platform
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
LOOP_NAMES = ("asyncio", "uvloop", "tideloop")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--build", default=os.environ.get("TIDELOOP_BUILD_DIR", "build"),
                        help="CMake build dir holding python/tideloop (default: build)")
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 runs: a smoke test")
    parser.add_argument("--runs", type=int, default=None, help="repetitions (median is reported)")
    parser.add_argument("--loops", default=",".join(LOOP_NAMES),
                        help="comma-separated subset of asyncio,uvloop,tideloop")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print results as JSON")
    out.add_argument("--md", action="store_true", help="print results as a Markdown table")


def import_tideloop(build: str):
    path = pathlib.Path(build)
    if not path.is_absolute():
        path = ROOT / path
    pkg = path / "python"
    if (pkg / "tideloop").is_dir():
        sys.path.insert(0, str(pkg))
    import tideloop
    return tideloop


def loop_factories(args) -> dict:
    wanted = [n.strip() for n in args.loops.split(",") if n.strip()]
    factories = {}
    for name in wanted:
        if name == "asyncio":
            factories[name] = asyncio.SelectorEventLoop
        elif name == "uvloop":
            try:
                import uvloop
            except ImportError:
                progress("uvloop is not installed: skipped")
                continue
            factories[name] = uvloop.new_event_loop
        elif name == "tideloop":
            factories[name] = import_tideloop(args.build).new_event_loop
        else:
            raise SystemExit(f"unknown loop {name!r}")
    return factories


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(bench, factories: dict, n: int, runs: int, label: str) -> dict:
    """Median seconds of `runs` runs of bench(loop, n) for each loop."""
    samples = {name: [] for name in factories}
    loops = {name: f() for name, f in factories.items()}
    try:
        for name, loop in loops.items():  # warm-up: imports, free lists, thread pools
            asyncio.set_event_loop(loop)
            bench(loop, max(1, n // 10))
        for r in range(runs):
            for name, loop in loops.items():
                asyncio.set_event_loop(loop)
                gc.collect()
                samples[name].append(bench(loop, n))
            progress(f"  {label}: run {r + 1}/{runs} " + " ".join(
                f"{k}={v[-1] * 1e3:.1f}ms" for k, v in samples.items()))
    finally:
        for loop in loops.values():
            try:
                loop.run_until_complete(loop.shutdown_default_executor())
            except Exception:  # noqa: BLE001
                pass
            loop.close()
        asyncio.set_event_loop(None)
    return {name: statistics.median(v) for name, v in samples.items()}


def row(name: str, n: int, unit: str, result: dict, extra: dict | None = None) -> dict:
    r = {"benchmark": name, "n": n, "unit": unit, "seconds": result}
    if extra:
        r.update(extra)
    return r


def speedup(r: dict, base: str, loop: str = "tideloop"):
    s = r["seconds"]
    if base in s and loop in s and s[loop] > 0:
        return s[base] / s[loop]
    return None


def format_table(rows: list, markdown: bool = False) -> str:
    loops = [n for n in LOOP_NAMES if any(n in r["seconds"] for r in rows)]
    head = ["benchmark", "n"] + [f"{l} ms" for l in loops]
    if "tideloop" in loops:
        head += [f"vs {b}" for b in loops if b != "tideloop"]
    body = []
    for r in rows:
        cells = [r["benchmark"], f"{r['n']:,}"]
        for l in loops:
            v = r["seconds"].get(l)
            cells.append("-" if v is None else f"{v * 1e3:.2f}")
        if "tideloop" in loops:
            for b in loops:
                if b == "tideloop":
                    continue
                sp = speedup(r, b)
                cells.append("-" if sp is None else f"{sp:.2f}x")
        body.append(cells)
    if markdown:
        lines = ["| " + " | ".join(head) + " |",
                 "|" + "|".join("---" if i < 1 else "---:" for i in range(len(head))) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in body]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    fmt = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    lines = [fmt(head), "  ".join("-" * w for w in widths)]
    lines += [fmt(c) for c in body]
    return "\n".join(lines)


def environment() -> dict:
    import asyncio as _a  # noqa: F401
    env = {"python": sys.version.split()[0], "machine": platform.machine(),
           "cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        import uvloop
        env["uvloop"] = uvloop.__version__
    except ImportError:
        pass
    try:
        import tideloop
        env["tideloop"] = tideloop.__version__
    except ImportError:
        pass
    return env


def emit(rows: list, args, notes: list | None = None) -> None:
    if args.json:
        print(json.dumps({"environment": environment(), "results": rows,
                          "notes": notes or []}, indent=2))
        return
    print(format_table(rows, markdown=args.md))
    for note in notes or []:
        print(("- " if args.md else "") + note)


def timed_run(loop, coro) -> float:
    t0 = time.perf_counter()
    loop.run_until_complete(coro)
    return time.perf_counter() - t0
