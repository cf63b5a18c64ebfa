#!/usr/bin/env python3
"""The classic event-loop benchmarks, asyncio vs uvloop vs tideloop in one run:

  * call_soon: a callback re-scheduling itself 50,000 times;
  * call_later: 5,000 timers with delays (i % 10) ms;
  * empty loop iterations: 10,000 times call_soon(stop) + run_forever().

Prints the median time of each loop and tideloop's speed-up over the others, plus the floor: the
same callback called from a plain for loop. Lower times are better; a speed-up above 1 means
tideloop is faster.

    /usr/bin/python3 bench/python/bench_event_loop.py --build build [--quick] [--json|--md]
"""

import argparse
import sys

from _common import add_common_args, emit, loop_factories
from suites import CLASSIC, floor_note, run_suite


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    args = parser.parse_args(argv)
    factories = loop_factories(args)
    rows = run_suite(CLASSIC, factories, args)
    note, floor_row = floor_note(rows, args)
    if floor_row:
        rows.append(floor_row)
    emit(rows, args, [note] if note else [])


if __name__ == "__main__":
    sys.exit(main())
