"""Futures, tasks and the asyncio library on top of them (run, sleep, wait_for, gather,
timeout, TaskGroup, queues, locks): parity with asyncio's own loop."""

import asyncio
import contextvars

import pytest


def test_create_future_belongs_to_loop(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    loop.call_soon(fut.set_result, 42)
    assert loop.run_until_complete(fut) == 42


def test_run_until_complete_propagates_exception(loop):
    async def boom():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        loop.run_until_complete(boom())


def test_run_until_complete_future_of_other_loop(loop, new_loop):
    other = new_loop()
    fut = other.create_future()
    with pytest.raises(ValueError):
        loop.run_until_complete(fut)


def test_run_until_complete_stopped_early(loop):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError, match="Event loop stopped before Future completed"):
        loop.run_until_complete(fut)


def test_create_task_name_and_context(loop):
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "from-ctx")

    async def read():
        return var.get()

    task = loop.create_task(read(), name="reader", context=ctx)
    assert isinstance(task, asyncio.Task)
    assert task.get_name() == "reader"
    assert loop.run_until_complete(task) == "from-ctx"


def test_task_factory(loop):
    made = []

    def factory(lp, coro, **kwargs):
        made.append(kwargs)
        return asyncio.Task(coro, loop=lp, **kwargs)

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory
    task = loop.create_task(asyncio.sleep(0, "x"), name="n")
    assert loop.run_until_complete(task) == "x"
    assert task.get_name() == "n"
    assert made == [{}]
    loop.set_task_factory(None)
    with pytest.raises(TypeError):
        loop.set_task_factory(1)


def test_sleep_gather_wait_for(loop):
    async def job(i, d):
        await asyncio.sleep(d)
        return i

    async def main():
        r = await asyncio.gather(*(job(i, 0.001 * (5 - i)) for i in range(5)))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), 0.01)
        return r

    assert loop.run_until_complete(main()) == [0, 1, 2, 3, 4]


def test_timeout_and_taskgroup(loop):
    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await asyncio.sleep(10)
        results = []
        async with asyncio.TaskGroup() as tg:
            for i in range(3):
                tg.create_task(asyncio.sleep(0.001 * i, i)).add_done_callback(
                    lambda t: results.append(t.result()))
        with pytest.raises(ExceptionGroup):
            async with asyncio.TaskGroup() as tg:
                tg.create_task(asyncio.sleep(10))

                async def fail():
                    raise KeyError("x")
                tg.create_task(fail())
        return sorted(results)

    assert loop.run_until_complete(main()) == [0, 1, 2]


def test_queue_and_locks(loop):
    async def main():
        q = asyncio.Queue(maxsize=2)
        lock = asyncio.Lock()
        event = asyncio.Event()
        sem = asyncio.Semaphore(2)
        out = []

        async def producer():
            for i in range(20):
                await q.put(i)
            await q.put(None)

        async def consumer():
            while (item := await q.get()) is not None:
                async with lock, sem:
                    out.append(item)
            event.set()

        await asyncio.gather(producer(), consumer(), event.wait())
        cond = asyncio.Condition()
        async with cond:
            loop.call_soon(lambda: asyncio.ensure_future(notify(cond)))
            await cond.wait()
        return out

    async def notify(cond):
        async with cond:
            cond.notify_all()

    assert loop.run_until_complete(main()) == list(range(20))


def test_cancellation(loop):
    async def main():
        task = asyncio.ensure_future(asyncio.sleep(10))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

        fut = loop.create_future()
        loop.call_soon(fut.cancel)
        with pytest.raises(asyncio.CancelledError):
            await fut

    loop.run_until_complete(main())


def test_asyncio_run_with_loop_factory(loop_kind):
    import tideloop
    from conftest import make_loop

    async def main():
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop())

    with asyncio.Runner(loop_factory=lambda: make_loop(loop_kind)) as runner:
        cls = runner.run(main())
    assert issubclass(cls, tideloop.Loop) == (loop_kind == "tideloop")


def test_many_tasks_switching(loop):
    counter = [0]

    async def worker():
        for _ in range(50):
            counter[0] += 1
            await asyncio.sleep(0)

    async def main():
        await asyncio.gather(*(worker() for _ in range(100)))

    loop.run_until_complete(main())
    assert counter[0] == 5000


def test_get_running_loop_inside_callbacks_and_tasks(loop):
    seen = []

    async def coro():
        seen.append(asyncio.get_running_loop())
        loop.call_soon(lambda: seen.append(asyncio.get_running_loop()))
        await asyncio.sleep(0)

    loop.run_until_complete(coro())
    assert seen == [loop, loop]
