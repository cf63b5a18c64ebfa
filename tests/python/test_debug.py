"""Debug mode: slow-callback warnings, wrong-thread detection, source tracebacks, coroutine
checks, coroutine origin tracking."""

import asyncio
import logging
import sys
import threading
import time

import pytest

from conftest import run_once


def test_get_set_debug(loop):
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_slow_callback_is_logged(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01

    def slow():
        time.sleep(0.03)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(slow)
        run_once(loop)
    msgs = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert any(m.startswith("Executing") and "slow" in m and "took" in m for m in msgs)


def test_fast_callback_not_logged_and_no_debug_no_log(loop, caplog):
    loop.slow_callback_duration = 0.01
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(time.sleep, 0.03)  # slow, but debug is off
        run_once(loop)
        loop.set_debug(True)
        loop.call_soon(lambda: None)
        run_once(loop)
    assert not [r for r in caplog.records if r.getMessage().startswith("Executing")]


def test_wrong_thread_detected_in_debug(loop):
    loop.set_debug(True)
    errors = []
    started = threading.Event()

    def other_thread():
        for call in (lambda: loop.call_soon(print), lambda: loop.call_later(1, print),
                     lambda: loop.call_at(1, print)):
            try:
                call()
            except RuntimeError as e:
                errors.append(str(e))
        loop.call_soon_threadsafe(loop.stop)  # always allowed

    def start():
        started.set()
        threading.Thread(target=other_thread).start()

    loop.call_soon(start)
    loop.run_forever()
    assert len(errors) == 3
    assert all("Non-thread-safe operation" in e for e in errors)


def test_source_traceback_in_debug(loop):
    loop.set_debug(True)
    h = loop.call_soon(print)
    assert h._source_traceback
    assert h._source_traceback[-1].name == "test_source_traceback_in_debug"
    h.cancel()
    loop.set_debug(False)
    h = loop.call_soon(print)
    assert not h._source_traceback
    h.cancel()


def test_coroutines_rejected_as_callbacks(loop):
    async def coro_fn():
        pass

    coro = coro_fn()
    for call in (loop.call_soon, loop.call_soon_threadsafe, lambda cb: loop.call_later(1, cb),
                 lambda cb: loop.call_at(1, cb)):
        loop.set_debug(True)
        with pytest.raises(TypeError):
            call(coro)
        with pytest.raises(TypeError):
            call(coro_fn)
        with pytest.raises(TypeError):
            call(42)
    coro.close()


def test_coroutine_origin_tracking_follows_debug(loop):
    loop.set_debug(True)
    depths = []
    loop.call_soon(lambda: depths.append(sys.get_coroutine_origin_tracking_depth()))
    before = sys.get_coroutine_origin_tracking_depth()
    run_once(loop)
    assert depths[0] > 0
    assert sys.get_coroutine_origin_tracking_depth() == before


def test_default_handler_shows_handle_traceback_in_debug(loop, caplog):
    loop.set_debug(True)

    def bad():
        raise ValueError("x")

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(bad)
        run_once(loop)
    msg = "\n".join(r.getMessage() for r in caplog.records)
    assert "Object created at" in msg


def test_run_in_executor_checks_callback_in_debug(loop):
    loop.set_debug(True)

    async def coro_fn():
        pass

    with pytest.raises(TypeError):
        loop.run_in_executor(None, coro_fn)
