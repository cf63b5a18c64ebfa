"""run_in_executor when the function raises concurrent.futures.CancelledError: asyncio turns
it into asyncio.CancelledError in the awaiting coroutine (the two classes differ since 3.8:
concurrent.futures.CancelledError is an Exception, asyncio's a BaseException)."""

import asyncio
import concurrent.futures

import pytest

from net_support import run


def _raise_cancelled():
    raise concurrent.futures.CancelledError("from the worker")


@pytest.mark.parametrize("executor", ["default", "thread pool"])
def test_cancelled_error_from_the_worker_is_converted(loop, executor):
    pool = concurrent.futures.ThreadPoolExecutor(1) if executor == "thread pool" else None
    assert concurrent.futures.CancelledError is not asyncio.CancelledError

    async def body():
        with pytest.raises(asyncio.CancelledError) as info:
            await loop.run_in_executor(pool, _raise_cancelled)
        assert type(info.value) is asyncio.CancelledError
        assert asyncio.current_task().cancelling() == 0  # the task itself was not cancelled

    try:
        run(loop, body())
    finally:
        if pool is not None:
            pool.shutdown()


def test_uncaught_it_cancels_the_awaiting_task(loop):
    async def waiter():
        await loop.run_in_executor(None, _raise_cancelled)

    async def body():
        task = loop.create_task(waiter())
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    run(loop, body())
