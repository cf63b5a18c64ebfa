"""Exceptions in callbacks: the exception-handler API, default logging, and the exceptions that
must escape run_forever (KeyboardInterrupt, SystemExit)."""

import asyncio
import logging

import pytest

from conftest import run_once


def test_exception_in_callback_goes_to_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append((lp, ctx)))

    def bad():
        raise ZeroDivisionError("x")

    h = loop.call_soon(bad)
    loop.call_soon(lambda: None)
    run_once(loop)
    assert len(contexts) == 1
    lp, ctx = contexts[0]
    assert lp is loop
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert ctx["handle"] is h
    assert ctx["message"].startswith("Exception in callback")
    assert "bad" in ctx["message"]


def test_default_handler_logs_to_asyncio_logger(loop, caplog):
    def bad():
        raise ValueError("logged-error")

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(bad)
        run_once(loop)
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 1
    assert "Exception in callback" in records[0].getMessage()
    assert records[0].exc_info[0] is ValueError


def test_exception_handler_api(loop):
    assert loop.get_exception_handler() is None

    def handler(lp, ctx):
        pass

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None
    with pytest.raises(TypeError):
        loop.set_exception_handler(42)


def test_failing_handler_falls_back_to_default(loop, caplog):
    def handler(lp, ctx):
        raise RuntimeError("handler broke")

    loop.set_exception_handler(handler)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"message": "original"})
    msgs = [r.getMessage() for r in caplog.records]
    assert any("Unhandled error in exception handler" in m for m in msgs)


def test_call_exception_handler_directly(loop, caplog):
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"message": "custom message", "extra": 1})
    assert any("custom message" in r.getMessage() and "extra: 1" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_escape_run_forever(loop, exc):
    calls = []

    def raiser():
        raise exc()

    loop.call_soon(raiser)
    loop.call_soon(calls.append, "after")
    with pytest.raises(exc):
        loop.run_forever()
    assert not loop.is_running()
    assert calls == []
    run_once(loop)  # the rest of the batch was kept
    assert calls == ["after"]


def test_cancelled_error_in_callback_goes_to_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def cb():
        raise asyncio.CancelledError()

    loop.call_soon(cb)
    run_once(loop)
    assert isinstance(contexts[0]["exception"], asyncio.CancelledError)


def test_unretrieved_task_exception_reported(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def fail():
        raise KeyError("lost")

    task = loop.create_task(fail())
    loop.run_until_complete(asyncio.sleep(0.001))
    del task
    import gc
    gc.collect()
    assert any(isinstance(c.get("exception"), KeyError) for c in contexts)
