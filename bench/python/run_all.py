#!/usr/bin/env python3
"""Every Python benchmark in one run, one table: the classic three (with the plain-call floor),
the other workloads and the scaling series (plot into docs/python-scaling.png).

    /usr/bin/python3 bench/python/run_all.py --build build [--quick] [--json|--md] [--no-scaling]

Progress goes to stderr, the table to stdout. Times are medians; "vs X" is X's time divided by
tideloop's (above 1: tideloop is faster).
"""

import argparse
import pathlib
import sys
import time

from _common import ROOT, add_common_args, emit, loop_factories, progress
from suites import CLASSIC, WORKLOADS, floor_note, plot_scaling, run_scaling, run_suite


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling series")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "python-scaling.png"),
                        help="PNG for the scaling plot ('' for none)")
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
    progress(f"done in {time.perf_counter() - started:.0f} s")
    emit(rows, args, [note] if note else [])


if __name__ == "__main__":
    sys.exit(main())
