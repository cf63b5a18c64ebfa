"""The measured workloads. Each ``bench_*(loop, n) -> seconds`` runs one measurement of size n.

What each one measures (and what a good number is) is in its docstring; lower is better for all.
"""

import asyncio
import hashlib
import threading
import time

# --- the classic three ------------------------------------------------------------------------


def bench_call_soon(loop, n):
    """A callback that re-schedules itself with call_soon, n times: pure scheduling overhead
    (handle creation, ready queue, one tick per callback). Good: close to the plain-call floor."""
    count = 0

    def cb():
        nonlocal count
        count += 1
        if count < n:
            loop.call_soon(cb)
        else:
            loop.stop()

    loop.call_soon(cb)
    t0 = time.perf_counter()
    loop.run_forever()
    return time.perf_counter() - t0


def bench_call_soon_floor(_loop, n):
    """The floor: the same callback body called from a plain for loop, no event loop at all."""
    count = 0

    def schedule(_cb):
        pass

    def cb():
        nonlocal count
        count += 1
        if count < n:
            schedule(cb)

    t0 = time.perf_counter()
    for _ in range(n):
        cb()
    return time.perf_counter() - t0


def bench_call_later(loop, n):
    """n call_later timers with delays (i % 10) ms, until the last fired: timer insertion, expiry
    and the waits in between. Bounded below by the 9 ms of the longest delay."""
    fired = 0

    def cb():
        nonlocal fired
        fired += 1
        if fired == n:
            loop.stop()

    t0 = time.perf_counter()
    for i in range(n):
        loop.call_later((i % 10) / 1000, cb)
    loop.run_forever()
    return time.perf_counter() - t0


def bench_empty_iterations(loop, n):
    """n empty loop iterations (call_soon(stop); run_forever(), asyncio's run_once idiom): the
    fixed cost of entering, ticking and leaving the loop."""
    stop = loop.stop
    t0 = time.perf_counter()
    for _ in range(n):
        loop.call_soon(stop)
        loop.run_forever()
    return time.perf_counter() - t0


# --- more workloads -----------------------------------------------------------------------------


def bench_timer_churn(loop, n):
    """n timers with delays 0-0.9 ms, every other one cancelled right away, until the rest fired:
    schedule + cancel cost and the cancelled-timer clean-up (timeouts that never fire)."""
    fired = 0
    expected = n // 2

    def cb():
        nonlocal fired
        fired += 1
        if fired == expected:
            loop.stop()

    t0 = time.perf_counter()
    call_later = loop.call_later
    for i in range(n):
        h = call_later((i % 10) / 10000, cb)
        if i % 2:
            h.cancel()
    loop.run_forever()
    return time.perf_counter() - t0


def bench_sleep0_tasks(loop, n, tasks=1000):
    """`tasks` tasks each doing n // tasks `await asyncio.sleep(0)`: task switching through the
    ready queue (asyncio's C Task on every loop)."""
    per_task = max(1, n // tasks)

    async def worker():
        for _ in range(per_task):
            await asyncio.sleep(0)

    async def main():
        await asyncio.gather(*[worker() for _ in range(tasks)])

    t0 = time.perf_counter()
    loop.run_until_complete(main())
    return time.perf_counter() - t0


def bench_future_roundtrip(loop, n):
    """n times: create_future(), call_soon(fut.set_result, i), await fut: the future/callback path
    a protocol's waiter takes."""
    async def main():
        create_future = loop.create_future
        call_soon = loop.call_soon
        for i in range(n):
            fut = create_future()
            call_soon(fut.set_result, i)
            await fut

    t0 = time.perf_counter()
    loop.run_until_complete(main())
    return time.perf_counter() - t0


def make_bench_threadsafe(producers):
    def bench_threadsafe(loop, n):
        """n call_soon_threadsafe calls from `producers` Python threads while the loop consumes
        them: cross-thread handoff and wake-ups (a good loop makes no syscall per item)."""
        per = n // producers
        total = per * producers
        got = 0

        def cb():
            nonlocal got
            got += 1
            if got == total:
                loop.stop()

        go = threading.Event()

        def producer():
            go.wait()
            cst = loop.call_soon_threadsafe
            for _ in range(per):
                cst(cb)

        threads = [threading.Thread(target=producer) for _ in range(producers)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        loop.call_soon(go.set)
        loop.run_forever()
        elapsed = time.perf_counter() - t0
        for t in threads:
            t.join()
        return elapsed

    bench_threadsafe.__name__ = f"bench_threadsafe_{producers}"
    return bench_threadsafe


def _noop():
    return None


def bench_executor_trivial(loop, n, batch=100):
    """n run_in_executor(None, f) of a trivial f, awaited in gathers of `batch`: the default
    executor's per-job overhead (submit, thread hand-off, result delivery)."""
    async def main():
        rie = loop.run_in_executor
        for _ in range(max(1, n // batch)):
            await asyncio.gather(*[rie(None, _noop) for _ in range(batch)])

    t0 = time.perf_counter()
    loop.run_until_complete(main())
    return time.perf_counter() - t0


def bench_executor_latency(loop, n):
    """n sequential `await run_in_executor(None, f)`: the round-trip latency of one job (two
    thread wake-ups per job on every loop)."""
    async def main():
        rie = loop.run_in_executor
        for _ in range(n):
            await rie(None, _noop)

    t0 = time.perf_counter()
    loop.run_until_complete(main())
    return time.perf_counter() - t0


_MIB = b"\x5a" * (1 << 20)


def _sha256_mib():
    return hashlib.sha256(_MIB).digest()


def bench_executor_sha256(loop, n, batch=16):
    """n run_in_executor(None, sha256 of 1 MiB), in gathers of `batch`: work that releases the
    GIL, so it scales with cores; the executor must not serialize it."""
    async def main():
        rie = loop.run_in_executor
        for _ in range(max(1, n // batch)):
            await asyncio.gather(*[rie(None, _sha256_mib) for _ in range(batch)])

    t0 = time.perf_counter()
    loop.run_until_complete(main())
    return time.perf_counter() - t0
