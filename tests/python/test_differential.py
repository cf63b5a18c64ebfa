"""Differential tests: hypothesis draws random programs, each runs on asyncio's own loop and on
tideloop's, and the observable traces must be equal.

The programs and the interpreter live in differential_support.py, whose docstring says how time
is kept deterministic and which of asyncio's undefined orders are never generated. Also never
generated, because docs/python-api.md lists them as deliberate differences:
* non-callable callbacks, coroutine objects as callbacks (tideloop rejects them at once);
* `isinstance(handle, asyncio.Handle)`, handle reprs and handle internals (`_callback`...);
* timers with equal deadlines (tideloop: scheduling order; asyncio: undefined);
* how long a cancelled timer stays in the loop (`_scheduled`, timer counts are not traced);
* what a handle holds after it ran, and garbage collection of loops never closed;
* `run_in_executor` internals: cancelled-before-start jobs (never run on tideloop), functions
  raising StopIteration (RuntimeError on tideloop), concurrent.futures being bypassed;
* when written bytes leave (tideloop coalesces the writes of a phase of the tick): only what
  arrives is traced, never chunk boundaries or the moment of arrival;
* where readiness callbacks (data_received, sock_* completions) run relative to the ready
  handles of the same tick: socket events are traced per connection, not against callbacks;
* a second owner of an fd (add_reader on a transport's socket), blocking sockets in sock_*,
  closing a loop with live transports, transport subclassing and write-buffer limit types.

Run:
    cd /work/main && TIDELOOP_BUILD_DIR=build /usr/bin/python3 -m pytest \\
        tests/python/test_differential.py -q -p no:cacheprovider
Environment:
    TIDELOOP_DIFF_EXAMPLES=N      examples per test (default 200; a long run: 20000)
    TIDELOOP_DIFF_SEED=S          replay: the seed a failure printed (with -k <test>)
    TIDELOOP_DIFF_DERANDOMIZE=1   hypothesis's fixed per-test seed instead of a random one
    TIDELOOP_DIFF_SELF=1          compare asyncio with itself (checks a case is deterministic)
    TIDELOOP_DIFF_STATS=1         print (with -s) how often each kind of trace item occurred
"""

import collections
import os
import random
import sys

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import differential_support as ds
from conftest import make_loop

EXAMPLES = int(os.environ.get("TIDELOOP_DIFF_EXAMPLES", "200"))
SEED = os.environ.get("TIDELOOP_DIFF_SEED")
DERANDOMIZE = os.environ.get("TIDELOOP_DIFF_DERANDOMIZE") == "1"
SELF_CHECK = os.environ.get("TIDELOOP_DIFF_SELF") == "1"
STATS = os.environ.get("TIDELOOP_DIFF_STATS") == "1"
stats = collections.Counter()  # trace item kinds seen by the current test (TIDELOOP_DIFF_STATS)
KINDS = ("asyncio", "asyncio") if SELF_CHECK else ("asyncio", "tideloop")


def differential(strategy, examples=EXAMPLES):
    """Turn `test(program)` into a seeded hypothesis test that prints how to replay a failure.

    Each run takes a fresh random seed (or TIDELOOP_DIFF_SEED); the database is off, so the
    seed alone decides every example and the shrinking, and a failure replays exactly."""

    def decorate(fn):
        def test():
            seed = int(SEED) if SEED else random.SystemRandom().randrange(2**32)
            inner = settings(max_examples=examples, database=None, deadline=None,
                             derandomize=DERANDOMIZE and not SEED, print_blob=False,
                             suppress_health_check=list(HealthCheck))(given(strategy)(fn))
            if SEED or not DERANDOMIZE:
                inner = hypothesis.seed(seed)(inner)
            stats.clear()
            try:
                inner()
                if STATS:
                    print(f"\n{fn.__name__}: {sum(stats.values())} trace items: "
                          f"{dict(stats.most_common())}")
            except BaseException:
                env = {"TIDELOOP_DIFF_EXAMPLES": str(EXAMPLES),
                       "TIDELOOP_BUILD_DIR": os.environ.get("TIDELOOP_BUILD_DIR", "build")}
                env.update((k, v) for k, v in os.environ.items()
                           if k.startswith("TIDELOOP_DIFF_") and k != "TIDELOOP_DIFF_SEED")
                if not (DERANDOMIZE and not SEED):
                    env["TIDELOOP_DIFF_SEED"] = str(seed)
                how = " ".join(f"{k}={v}" for k, v in sorted(env.items()))
                print(f"\nreplay: cd {ds.ROOT} && {how} /usr/bin/python3 -m pytest "
                      f"tests/python/test_differential.py -p no:cacheprovider -k {fn.__name__}",
                      file=sys.stderr)
                raise

        # Not functools.wraps: pytest would read fn's signature and look for a fixture.
        test.__name__ = test.__qualname__ = fn.__name__
        test.__doc__ = fn.__doc__
        return test

    return decorate


def compare(program, run):
    """run(loop, program) -> trace, on each loop kind; the traces must be equal."""
    traces = []
    for kind in KINDS:
        loop = make_loop(kind)
        try:
            traces.append(run(loop, program))
        finally:
            loop.close()
    a, b = traces
    stats.update(item[0] for item in a)
    if STATS and any(item[0] == "timeout" for item in a):
        print(f"\na wait timed out on both loops:\n{ds.format_program(program)}\n{a}")
    if a != b:
        i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        lo = max(0, i - 6)

        def window(t):
            return "\n".join(f"    [{j}] {t[j]!r}" for j in range(lo, min(len(t), i + 4)))

        raise AssertionError(
            f"traces differ at item {i} ({len(a)} vs {len(b)} items)\nprogram:\n"
            f"{ds.format_program(program)}\n{KINDS[0]}:\n{window(a)}\n{KINDS[1]}:\n{window(b)}")


@differential(ds.program_strategy(st))
def test_callbacks_timers_futures_tasks(program):
    compare(program, lambda loop, prog: ds.ProgramRun(loop, prog).run())


@differential(ds.executor_program_strategy(st), examples=max(1, EXAMPLES // 2))
def test_run_in_executor(program):
    compare(program, lambda loop, prog: ds.ExecutorRun(loop, prog).run())


@differential(ds.socket_program_strategy(st))
def test_sockets_and_transports(program):
    compare(program, lambda loop, prog: ds.SocketRun(loop, prog, False).run())


@pytest.mark.skipif(SELF_CHECK, reason="a tideloop regression test")
def test_writelines_after_a_deferred_write():
    """The minimal program the socket test found (seed 1434027537): write(1 byte) then
    writelines(300000 bytes) in one callback. tideloop delivered 219264 of 300001 bytes: the
    phase-end flush of the deferred write sent part of the queue and did not watch EPOLLOUT for
    the rest (fixed in bridge/handles/stream.cpp)."""
    program = [ds.Pair(False, False, False, False), ds.Send(0, "a", 1),
               ds.Send(0, "a", 300000, True)]
    ds.number(program)
    compare(program, lambda loop, prog: ds.SocketRun(loop, prog, False, wait=1.0).run())
