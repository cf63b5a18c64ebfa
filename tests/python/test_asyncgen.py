"""Async generator hooks and shutdown_asyncgens."""

import asyncio
import sys

from conftest import run_once


def test_hooks_installed_while_running_and_restored(loop):
    before = sys.get_asyncgen_hooks()
    seen = []
    loop.call_soon(lambda: seen.append(sys.get_asyncgen_hooks()))
    run_once(loop)
    firstiter, finalizer = seen[0]
    assert firstiter.__self__ is loop and finalizer.__self__ is loop
    assert sys.get_asyncgen_hooks() == before


def test_shutdown_asyncgens_closes_generators(loop):
    closed = []

    async def agen():
        try:
            for i in range(10):
                yield i
        finally:
            closed.append(True)

    async def main():
        g = agen()
        assert await g.__anext__() == 0
        await loop.shutdown_asyncgens()
        return g

    g = loop.run_until_complete(main())
    assert closed == [True]
    del g


def test_finalizer_schedules_aclose(loop):
    closed = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    async def main():
        g = agen()
        await g.__anext__()
        del g  # finalizer hook -> loop.create_task(g.aclose())
        import gc
        gc.collect()
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert closed == [True]


def test_asyncio_run_shuts_down_asyncgens(loop_kind):
    from conftest import make_loop
    closed = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    async def main():
        g = agen()
        await g.__anext__()
        main.g = g  # keep it alive until the runner shuts async generators down

    with asyncio.Runner(loop_factory=lambda: make_loop(loop_kind)) as runner:
        runner.run(main())
    assert closed == [True]
