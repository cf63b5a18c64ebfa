#!/usr/bin/env python3
"""Every Python benchmark in one run: the classic three (with the plain-call floor), the other
workloads and the scaling series (plot into docs/python-scaling.png) in one table, then the
network benchmarks (bench_net.py, plot into docs/python-net.png) in a second one.

    /usr/bin/python3 bench/python/run_all.py --build build [--quick] [--json|--md] [--no-scaling]
        [--no-net] [--net-plot PNG] [--duration S] [--warmup S] [--no-ceiling]

Progress goes to stderr, the tables to stdout. Times and rates are medians; "vs X" is X's time
divided by tideloop's, or for the network rates tideloop's rate divided by X's: either way,
above 1 tideloop is faster.
"""

import argparse
import json
import pathlib
import sys
import time

from _common import ROOT, add_common_args, emit, environment, loop_factories, progress
from bench_net import add_net_args, emit_net, net_notes, plot_net, run_net
from suites import CLASSIC, WORKLOADS, floor_note, plot_scaling, run_scaling, run_suite


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling series")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "python-scaling.png"),
                        help="PNG for the scaling plot ('' for none)")
    parser.add_argument("--no-net", action="store_true", help="skip the network benchmarks")
    parser.add_argument("--net-plot", default=str(ROOT / "docs" / "python-net.png"),
                        help="PNG for the network ratio plot ('' for none)")
    add_net_args(parser)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    factories = loop_factories(args)
    progress(f"loops: {', '.join(factories)}; runs: {args.runs or (3 if args.quick else 5)}")
    progress("== classic ==")
    rows = run_suite(CLASSIC, factories, args)
    note, floor_row = floor_note(rows, args)
    if floor_row:
        rows.append(floor_row)
    progress("== workloads ==")
    rows += run_suite(WORKLOADS, factories, args)
    if not args.no_scaling:
        progress("== scaling ==")
        scaling = run_scaling(factories, args)
        rows += scaling
        if args.plot:
            plot_scaling(scaling, pathlib.Path(args.plot))
    net_rows = None
    if not args.no_net:
        progress("== network ==")
        net_rows = run_net(args)
        if args.net_plot:
            plot_net(net_rows, pathlib.Path(args.net_plot))
    progress(f"done in {time.perf_counter() - started:.0f} s")
    notes = [note] if note else []
    if args.json:
        doc = {"environment": environment(), "results": rows, "notes": notes}
        if net_rows is not None:
            doc["net"] = {"results": net_rows, "notes": net_notes(net_rows, args)}
        print(json.dumps(doc, indent=2))
        return
    emit(rows, args, notes)
    if net_rows is not None:
        title = "Network benchmarks (rates: higher is better; µs CPU: lower is better)"
        print(f"\n### {title}\n" if args.md else f"\n{title}")
        emit_net(net_rows, args)


if __name__ == "__main__":
    sys.exit(main())
