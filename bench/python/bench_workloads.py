#!/usr/bin/env python3
"""Beyond the classic three, asyncio vs uvloop vs tideloop in one run: timer churn, task
switching with sleep(0), future round trips, call_soon_threadsafe from 1/2/4/8 threads, and
run_in_executor (trivial jobs in batches, one-by-one latency, GIL-releasing sha256 of 1 MiB).

    /usr/bin/python3 bench/python/bench_workloads.py --build build [--quick] [--json|--md]
"""

import argparse
import sys

from _common import add_common_args, emit, loop_factories
from suites import WORKLOADS, run_suite


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--only", default="", help="run benchmarks whose label contains this")
    args = parser.parse_args(argv)
    suite = [b for b in WORKLOADS if args.only in b[0]]
    emit(run_suite(suite, loop_factories(args), args), args)


if __name__ == "__main__":
    sys.exit(main())
