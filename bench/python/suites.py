"""The benchmark suites: (label, function, full size, --quick size), shared by the scripts."""

import workloads as w
from _common import measure, progress, row

CLASSIC = [
    ("call_soon self re-scheduling", w.bench_call_soon, 50_000, 10_000),
    ("call_later timers, (i%10) ms", w.bench_call_later, 5_000, 1_000),
    ("empty loop iterations", w.bench_empty_iterations, 10_000, 2_000),
]

WORKLOADS = [
    ("timer churn, half cancelled", w.bench_timer_churn, 100_000, 20_000),
    ("1000 tasks x sleep(0)", w.bench_sleep0_tasks, 200_000, 20_000),
    ("future round trips", w.bench_future_roundtrip, 50_000, 10_000),
    ("call_soon_threadsafe, 1 thread", w.make_bench_threadsafe(1), 100_000, 20_000),
    ("call_soon_threadsafe, 2 threads", w.make_bench_threadsafe(2), 100_000, 20_000),
    ("call_soon_threadsafe, 4 threads", w.make_bench_threadsafe(4), 100_000, 20_000),
    ("call_soon_threadsafe, 8 threads", w.make_bench_threadsafe(8), 100_000, 20_000),
    ("run_in_executor trivial, x100", w.bench_executor_trivial, 10_000, 2_000),
    ("run_in_executor latency, 1 by 1", w.bench_executor_latency, 2_000, 500),
    ("run_in_executor sha256 1MiB, x16", w.bench_executor_sha256, 160, 32),
]

SCALING_SIZES = [1_000, 5_000, 10_000, 50_000, 100_000]
SCALING_SIZES_QUICK = [1_000, 5_000, 10_000]
SCALING = [
    ("call_soon", w.bench_call_soon),
    ("call_later", w.bench_call_later),
    ("empty iterations", w.bench_empty_iterations),
]


def runs_for(args):
    return args.runs or (3 if args.quick else 5)


def run_suite(suite, factories, args):
    rows = []
    for i, (label, fn, full, quick) in enumerate(suite, 1):
        n = quick if args.quick else full
        progress(f"[{i}/{len(suite)}] {label} (n={n:,})")
        rows.append(row(label, n, "s", measure(fn, factories, n, runs_for(args), label)))
    return rows


def floor_note(rows, args):
    """The plain-call floor of the call_soon benchmark and how close each loop gets to it."""
    cs = next((r for r in rows if r["benchmark"] == CLASSIC[0][0]), None)
    if cs is None:
        return None, None
    n = cs["n"]
    import statistics
    floor = statistics.median(w.bench_call_soon_floor(None, n) for _ in range(runs_for(args)))
    parts = [f"callback floor (same callback in a plain for loop): {floor / n * 1e9:.0f} ns/call;"]
    for name, s in cs["seconds"].items():
        parts.append(f"{name} {s / n * 1e9:.0f} ns/callback = {s / floor:.1f}x floor;")
    floor_row = row("floor: plain for-loop call", n, "s",
                    {name: floor for name in cs["seconds"]}, {"floor": True})
    return " ".join(parts).rstrip(";"), floor_row


def run_scaling(factories, args):
    sizes = SCALING_SIZES_QUICK if args.quick else SCALING_SIZES
    rows = []
    total = len(sizes) * len(SCALING)
    k = 0
    for label, fn in SCALING:
        for n in sizes:
            k += 1
            progress(f"[scaling {k}/{total}] {label} n={n:,}")
            rows.append(row(f"scaling: {label}", n, "s",
                            measure(fn, factories, n, runs_for(args), f"{label} {n}")))
    return rows


def plot_scaling(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SCALING), figsize=(5 * len(SCALING), 4))
    colors = {"asyncio": "tab:blue", "uvloop": "tab:orange", "tideloop": "tab:green"}
    for ax, (label, _fn) in zip(axes, SCALING):
        mine = [r for r in rows if r["benchmark"] == f"scaling: {label}"]
        for loop_name in colors:
            pts = [(r["n"], r["seconds"][loop_name] / r["n"] * 1e6) for r in mine
                   if loop_name in r["seconds"]]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                        label=loop_name, color=colors[loop_name])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(label + (" (includes the 9 ms longest delay)" if label == "call_later" else ""))
        ax.set_xlabel("operations")
        ax.set_ylabel("µs per operation (lower is better)")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("asyncio vs uvloop vs tideloop: cost per operation by size")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    progress(f"plot written to {path}")
