#!/usr/bin/env python3
"""The classic three at sizes 1k, 5k, 10k, 50k and 100k, asyncio vs uvloop vs tideloop, with a
plot of the cost per operation (docs/python-scaling.png). A flat line is the goal: the cost per
callback/timer/iteration should not grow with the size.

    /usr/bin/python3 bench/python/bench_scaling.py --build build [--quick] [--plot PATH]
"""

import argparse
import pathlib
import sys

from _common import ROOT, add_common_args, emit, loop_factories
from suites import plot_scaling, run_scaling


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--plot", default=str(ROOT / "docs" / "python-scaling.png"),
                        help="PNG to write ('' for none)")
    args = parser.parse_args(argv)
    rows = run_scaling(loop_factories(args), args)
    if args.plot:
        plot_scaling(rows, pathlib.Path(args.plot))
    emit(rows, args)


if __name__ == "__main__":
    sys.exit(main())
