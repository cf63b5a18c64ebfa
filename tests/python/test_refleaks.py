"""Reference and memory leaks: object counts, refcounts and tracemalloc stay flat over 100,000
callbacks, timers, thread-safe calls, futures and executor jobs."""

import asyncio
import gc
import sys
import threading
import tracemalloc

import pytest

from conftest import run_once

N = 100_000
BATCH = 10_000


class Arg:
    pass


def settle():
    for _ in range(3):
        gc.collect()


def test_callbacks_do_not_leak(loop):
    arg = Arg()

    def cb(a):
        pass

    def batch():
        for _ in range(BATCH):
            loop.call_soon(cb, arg)
        run_once(loop)

    batch()  # warm up free lists and queues
    settle()
    rc_arg, rc_cb = sys.getrefcount(arg), sys.getrefcount(cb)
    objects = len(gc.get_objects())
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(N // BATCH):
            batch()
        settle()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sys.getrefcount(arg) == rc_arg
    assert sys.getrefcount(cb) == rc_cb
    assert len(gc.get_objects()) - objects < 100
    assert after - before < 64 * 1024


def test_timers_and_cancellation_do_not_leak(loop):
    arg = Arg()

    def batch():
        handles = [loop.call_later(0 if i % 2 else 3600, print, arg) for i in range(BATCH)]
        for h in handles[::2]:
            h.cancel()
        handles = None
        loop.call_soon(loop.stop)
        loop.run_forever()
        run_once(loop)

    loop.call_soon(lambda: None)
    import builtins
    real_print = builtins.print
    try:
        builtins.print = lambda *a: None
        batch()
        settle()
        rc = sys.getrefcount(arg)
        objects = len(gc.get_objects())
        for _ in range(N // BATCH):
            batch()
        settle()
    finally:
        builtins.print = real_print
    assert sys.getrefcount(arg) == rc
    assert len(gc.get_objects()) - objects < 100


def test_threadsafe_calls_do_not_leak(loop):
    arg = Arg()
    per_thread = N // 4
    got = [0]

    def cb(a):
        got[0] += 1

    def producer():
        for _ in range(per_thread):
            loop.call_soon_threadsafe(cb, arg)

    run_once(loop)
    settle()
    rc = sys.getrefcount(arg)
    objects = len(gc.get_objects())

    async def main():
        threads = [threading.Thread(target=producer) for _ in range(4)]
        for t in threads:
            t.start()
        while got[0] < 4 * per_thread:
            await asyncio.sleep(0.001)
        for t in threads:
            t.join()

    loop.run_until_complete(main())
    settle()
    assert got[0] == 4 * per_thread
    assert sys.getrefcount(arg) == rc
    assert len(gc.get_objects()) - objects < 100


def test_futures_and_tasks_do_not_leak(loop):
    arg = Arg()

    async def roundtrips(n):
        for _ in range(n):
            fut = loop.create_future()
            loop.call_soon(fut.set_result, arg)
            await fut
            await asyncio.sleep(0)

    loop.run_until_complete(roundtrips(1000))
    settle()
    rc = sys.getrefcount(arg)
    objects = len(gc.get_objects())
    loop.run_until_complete(roundtrips(N // 2))
    settle()
    assert sys.getrefcount(arg) == rc
    assert len(gc.get_objects()) - objects < 100


def test_executor_jobs_do_not_leak(loop):
    arg = Arg()

    async def jobs(n):
        for _ in range(n // 100):
            await asyncio.gather(*(loop.run_in_executor(None, id, arg) for _ in range(100)))

    loop.run_until_complete(jobs(1000))
    settle()
    rc = sys.getrefcount(arg)
    objects = len(gc.get_objects())
    loop.run_until_complete(jobs(10_000))
    settle()
    assert sys.getrefcount(arg) == rc
    assert len(gc.get_objects()) - objects < 100


def test_unclosed_loop_is_collected_with_pending_cycle(loop_kind):
    # A loop dropped (not closed) with pending callbacks that refer back to it: the cycle goes
    # through the ready queue and the timer heap, which the GC must see.
    import warnings
    import weakref
    from conftest import make_loop
    lp = make_loop(loop_kind)
    lp.call_soon(lp.stop)
    lp.call_later(3600, lp.call_soon, lp.stop)
    ref = weakref.ref(lp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del lp
        settle()
    assert ref() is None


def test_owner_of_a_fired_timer_is_collected(loop):
    # `self._timer = loop.call_later(0, self._fire)`: after the timer fired, owner -> handle ->
    # owner._fire -> owner is a cycle the GC must be able to break (asyncio.Timeout does this).
    import weakref

    class Owner:
        def __init__(self):
            self.timer = loop.call_later(0, self.fire)
            self.soon = loop.call_soon(self.fire)

        def fire(self):
            pass

    refs = [weakref.ref(Owner()) for _ in range(100)]
    loop.run_until_complete(asyncio.sleep(0.01))
    settle()
    assert all(r() is None for r in refs)


def test_owner_of_a_cancelled_timer_is_collected(loop):
    import weakref

    class Owner:
        def __init__(self):
            self.timer = loop.call_later(3600, self.fire)

        def fire(self):
            pass

    owners = [Owner() for _ in range(100)]
    for o in owners:
        o.timer.cancel()
    refs = [weakref.ref(o) for o in owners]
    del owners, o
    run_once(loop)
    settle()
    assert all(r() is None for r in refs)
