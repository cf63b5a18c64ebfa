"""call_soon, stop/run_forever semantics, handles, the batch rule: parity with asyncio."""

import asyncio
import contextvars
import threading
import time

import pytest

from conftest import run_once


def test_call_soon_runs_in_fifo_order_with_args(loop):
    calls = []
    for i in range(10):
        loop.call_soon(calls.append, i)
    loop.call_soon(lambda *a: calls.append(a), 1, 2, 3)
    run_once(loop)
    assert calls == list(range(10)) + [(1, 2, 3)]


def test_call_soon_returns_cancellable_handle(loop):
    calls = []
    h = loop.call_soon(calls.append, 1)
    assert not h.cancelled()
    h.cancel()
    assert h.cancelled()
    h.cancel()  # idempotent
    run_once(loop)
    assert calls == []


def test_callbacks_scheduled_during_a_tick_run_next_tick(loop):
    calls = []

    def first():
        calls.append("first")
        loop.call_soon(calls.append, "scheduled-by-first")

    loop.call_soon(first)
    loop.call_soon(calls.append, "second")
    run_once(loop)
    assert calls == ["first", "second"]
    run_once(loop)
    assert calls == ["first", "second", "scheduled-by-first"]


def test_stop_before_run_forever_runs_one_iteration(loop):
    calls = []
    loop.call_soon(calls.append, 1)
    loop.stop()
    loop.run_forever()
    assert calls == [1]
    assert not loop.is_running()


def test_stop_inside_callback_finishes_the_batch(loop):
    calls = []
    loop.call_soon(loop.stop)
    loop.call_soon(calls.append, "same-batch")
    loop.run_forever()
    assert calls == ["same-batch"]


def test_run_forever_can_be_called_again(loop):
    calls = []
    for i in range(3):
        loop.call_soon(calls.append, i)
        run_once(loop)
    assert calls == [0, 1, 2]


def test_is_running_and_thread_state(loop):
    seen = []
    loop.call_soon(lambda: seen.append((loop.is_running(), asyncio.get_running_loop() is loop,
                                        asyncio.get_event_loop() is loop)))
    assert not loop.is_running()
    run_once(loop)
    assert seen == [(True, True, True)]
    assert not loop.is_running()
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_running_a_running_loop_raises(loop):
    errors = []

    def nested():
        coro = asyncio.sleep(0)
        for fn in (loop.run_forever, lambda: loop.run_until_complete(coro)):
            try:
                fn()
            except RuntimeError as e:
                errors.append(str(e))
        coro.close()

    loop.call_soon(nested)
    run_once(loop)
    assert len(errors) == 2
    assert all("already running" in e for e in errors)


def test_running_while_another_loop_runs_raises(loop, new_loop):
    other = new_loop()
    errors = []

    def inside():
        try:
            other.run_forever()
        except RuntimeError as e:
            errors.append(str(e))

    loop.call_soon(inside)
    run_once(loop)
    assert errors == ["Cannot run the event loop while another loop is running"]


def test_close_while_running_raises(loop):
    errors = []

    def inside():
        try:
            loop.close()
        except RuntimeError as e:
            errors.append(e)

    loop.call_soon(inside)
    run_once(loop)
    assert len(errors) == 1
    assert not loop.is_closed()


def test_closed_loop_rejects_work(loop):
    loop.close()
    loop.close()  # idempotent
    assert loop.is_closed()
    coro = asyncio.sleep(0)
    for call in (lambda: loop.call_soon(print), lambda: loop.call_later(1, print),
                 lambda: loop.call_at(1, print), lambda: loop.call_soon_threadsafe(print),
                 loop.run_forever, lambda: loop.create_task(coro),
                 lambda: loop.run_in_executor(None, print)):
        with pytest.raises(RuntimeError, match="closed"):
            call()
    with pytest.raises(RuntimeError, match="closed"):
        loop.run_until_complete(coro)
    coro.close()


def test_close_drops_pending_callbacks(loop):
    class Canary:
        pass

    import weakref
    c = Canary()
    ref = weakref.ref(c)
    loop.call_soon(print, c)
    loop.call_later(100, print, c)
    del c
    assert ref() is not None
    loop.close()
    import gc
    gc.collect()
    assert ref() is None


def test_time_is_monotonic_clock(loop):
    t0 = time.monotonic()
    t = loop.time()
    t1 = time.monotonic()
    assert t0 <= t <= t1


def test_context_is_copied_at_schedule_time(loop):
    var = contextvars.ContextVar("var", default="unset")
    seen = []
    var.set("at-schedule")
    loop.call_soon(lambda: seen.append(var.get()))
    var.set("later")
    run_once(loop)
    assert seen == ["at-schedule"]


def test_explicit_context_is_used_and_mutations_stay_inside(loop):
    var = contextvars.ContextVar("var", default="unset")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")
    seen = []

    def cb():
        seen.append(var.get())
        var.set("mutated")

    loop.call_soon(cb, context=ctx)
    loop.call_soon(cb, context=ctx)
    run_once(loop)
    assert seen == ["in-ctx", "mutated"]
    assert ctx[var] == "mutated"
    assert var.get() == "unset"


def test_handle_repr_mentions_callback(loop):
    def my_callback():
        pass

    h = loop.call_soon(my_callback)
    assert "my_callback" in repr(h)
    h.cancel()
    assert "cancelled" in repr(h)


def test_callback_that_cancels_itself(loop):
    calls = []
    holder = {}

    def cb(x):
        holder["h"].cancel()
        calls.append(x)

    holder["h"] = loop.call_soon(cb, "arg")
    run_once(loop)
    assert calls == ["arg"]


def test_callback_cancelled_by_earlier_callback_in_same_batch(loop):
    calls = []
    h2 = None

    def first():
        h2.cancel()

    loop.call_soon(first)
    h2 = loop.call_soon(calls.append, 2)
    run_once(loop)
    assert calls == []


def test_loop_releases_gil_while_waiting(loop):
    # Another Python thread makes progress while the loop sleeps on a timer.
    progress = []
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            progress.append(1)
            time.sleep(0.001)

    t = threading.Thread(target=spin)
    t.start()
    try:
        loop.run_until_complete(asyncio.sleep(0.1))
    finally:
        stop.set()
        t.join()
    assert len(progress) > 10
