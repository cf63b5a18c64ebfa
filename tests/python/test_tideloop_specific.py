"""Behaviour where tideloop deliberately differs from asyncio's loop (docs/python-api.md,
"Differences from asyncio's own loop"), and its C core used directly."""

import asyncio
import gc

import pytest

import tideloop
from conftest import run_once


@pytest.fixture
def tl():
    loop = tideloop.new_event_loop()
    yield loop
    if not loop.is_closed():
        loop.close()


def test_non_callables_rejected_without_debug(tl):
    assert not tl.get_debug()
    for bad in (42, "str", None):
        with pytest.raises(TypeError, match="callable"):
            tl.call_soon(bad)
        with pytest.raises(TypeError):
            tl.call_later(1, bad)
        with pytest.raises(TypeError):
            tl.call_soon_threadsafe(bad)


def test_coroutine_objects_rejected_without_debug(tl):
    async def f():
        pass

    coro = f()
    with pytest.raises(TypeError, match="coroutines cannot be used"):
        tl.call_soon(coro)
    coro.close()


def test_equal_deadlines_fire_in_scheduling_order(tl):
    calls = []
    when = tl.time() + 0.005
    for i in range(500):
        tl.call_at(when, calls.append, i)
    tl.run_until_complete(asyncio.sleep(0.02))
    assert calls == list(range(500))


def test_one_shot_handle_drops_callback_after_run_when_held(tl):
    h = tl.call_soon(print, "x")
    assert h._callback is print
    import builtins
    real = builtins.print
    h2 = tl.call_soon(lambda: None)
    run_once(tl)
    assert h._callback is None and h2._callback is None
    assert not h.cancelled()
    assert builtins.print is real


def test_executor_stop_iteration_fails_the_future(tl):
    def raise_stop():
        raise StopIteration

    with pytest.raises(RuntimeError):
        tl.run_until_complete(tl.run_in_executor(None, raise_stop))


def test_handles_are_not_asyncio_handles_but_quack_alike(tl):
    h = tl.call_soon(print)
    t = tl.call_later(5, print, 1, 2)
    assert isinstance(h, tideloop._tideloop.Handle)
    assert isinstance(t, tideloop._tideloop.TimerHandle)
    assert isinstance(t, tideloop._tideloop.Handle)
    assert t._args == (1, 2) and t._callback is print and t._loop is tl
    assert t._when == t.when() and t._scheduled
    h.cancel()
    t.cancel()
    assert t._callback is None and t._args is None


def test_loop_core_alone_never_crashes():
    core = tideloop._tideloop.LoopCore()
    core.call_soon(core.stop)
    with pytest.raises(AttributeError):  # the Python half (asyncgen hooks) is missing
        core.run_forever()
    core.call_soon(lambda: 1 / 0)
    core._close_core()
    del core
    gc.collect()


def test_stats_reflect_queues(tl):
    tl.call_soon(print)
    tl.call_later(20, print)
    tl.call_later(10, print).cancel()
    s = tl._stats()
    # The timer wheel unlinks a cancelled timer at once: nothing is left for a lazy clean-up.
    assert s["ready"] == 1 and s["scheduled"] == 1 and s["timer_cancelled_count"] == 0


def test_subclassing_loop():
    class MyLoop(tideloop.Loop):
        def __init__(self):
            super().__init__()
            self.extra = 1

    loop = MyLoop()
    try:
        assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
        assert loop.extra == 1
    finally:
        loop.close()
