"""run_in_executor: the native default pool (tideloop) vs ThreadPoolExecutor (asyncio)."""

import asyncio
import concurrent.futures
import hashlib
import threading
import time

import pytest


def test_result_args_and_thread(loop):
    async def main():
        r = await loop.run_in_executor(None, lambda a, b: (a + b, threading.get_ident()), 2, 3)
        return r

    (value, ident) = loop.run_until_complete(main())
    assert value == 5
    assert ident != threading.get_ident()


def test_exception_propagates(loop):
    def fail():
        raise KeyError("from-thread")

    with pytest.raises(KeyError, match="from-thread"):
        loop.run_until_complete(loop.run_in_executor(None, fail))


def test_non_callable_fails_when_awaited(loop):
    fut = loop.run_in_executor(None, 42)
    with pytest.raises(TypeError):
        loop.run_until_complete(fut)


def test_blocking_calls_do_not_block_loop_and_run_in_parallel(loop):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        t = asyncio.ensure_future(ticker())
        start = time.monotonic()
        await asyncio.gather(*(loop.run_in_executor(None, time.sleep, 0.1) for _ in range(4)))
        elapsed = time.monotonic() - start
        t.cancel()
        return elapsed, ticks

    elapsed, ticks = loop.run_until_complete(main())
    assert elapsed < 0.35  # 4 x 0.1 s in parallel, not 0.4 s in a row
    assert ticks >= 5


def test_parallel_after_a_long_run_of_single_calls(loop):
    # Calls awaited one by one leave the pool's threads idle in a particular way (the previous
    # call's thread finishes while the next call is submitted); the next burst must still get
    # one thread per call. Each job waits for all the others at a barrier: run one at a time,
    # the barrier breaks (tideloop's executor once ran such bursts on a single thread).
    width = 4

    async def main():
        for _ in range(5):
            for _ in range(200):
                await loop.run_in_executor(None, int)
            barrier = threading.Barrier(width)
            await asyncio.gather(
                *(loop.run_in_executor(None, barrier.wait, 10) for _ in range(width)))

    loop.run_until_complete(main())


def test_many_small_jobs(loop):
    async def main():
        return await asyncio.gather(*(loop.run_in_executor(None, pow, i, 2) for i in range(2000)))

    assert loop.run_until_complete(main()) == [i * i for i in range(2000)]


def test_gil_releasing_jobs(loop):
    data = b"x" * (1 << 20)
    expected = hashlib.sha256(data).hexdigest()

    async def main():
        return await asyncio.gather(
            *(loop.run_in_executor(None, lambda: hashlib.sha256(data).hexdigest())
              for _ in range(8)))

    assert loop.run_until_complete(main()) == [expected] * 8


def test_set_default_executor_is_used(loop):
    names = []
    ex = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="custom-pool")
    loop.set_default_executor(ex)
    loop.run_until_complete(
        loop.run_in_executor(None, lambda: names.append(threading.current_thread().name)))
    assert names[0].startswith("custom-pool")
    loop.run_until_complete(loop.shutdown_default_executor())
    ex.shutdown()


def test_set_default_executor_type_checked(loop):
    with pytest.raises(TypeError):
        loop.set_default_executor(object())


def test_explicit_executor(loop):
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as ex:
        assert loop.run_until_complete(loop.run_in_executor(ex, sum, [1, 2])) == 3


def test_shutdown_default_executor_waits_then_refuses(loop):
    done = []

    async def main():
        fut = loop.run_in_executor(None, lambda: (time.sleep(0.05), done.append(1)))
        await loop.shutdown_default_executor()
        assert done == [1]
        await fut
        with pytest.raises(RuntimeError):
            loop.run_in_executor(None, print)

    loop.run_until_complete(main())


def test_cancel_before_start_skips_call(loop):
    ran = []
    started = threading.Event()
    release = threading.Event()

    def blocker():
        started.set()
        release.wait(5)

    async def main():
        # Occupy every worker so the next job queues (both pools are bounded by min(32, cpus+4)).
        blockers = [loop.run_in_executor(None, blocker) for _ in range(64)]
        while not started.is_set():
            await asyncio.sleep(0.001)
        fut = loop.run_in_executor(None, ran.append, 1)
        fut.cancel()
        await asyncio.sleep(0)  # asyncio hands the cancel to its pool in a callback
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(*blockers, return_exceptions=True)
        await asyncio.sleep(0.05)
        assert fut.cancelled()

    loop.run_until_complete(main())
    loop.run_until_complete(loop.shutdown_default_executor())
    assert ran == []


def test_close_with_jobs_in_flight(loop):
    loop.run_in_executor(None, time.sleep, 0.05)
    loop.close()  # must not wait for the job, nor crash when it finishes
    time.sleep(0.1)
