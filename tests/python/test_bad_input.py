"""Wrong types and wrong calls to every public method: tideloop raises the exception class
asyncio raises (never a crash). Where asyncio accepts the call and fails only later, tideloop may
reject it at once with TypeError/ValueError (documented in docs/python-api.md)."""

import asyncio
import gc

import pytest

from conftest import make_loop

_ = object()

BAD_CALLS = [
    ("call_soon", (), {}),
    ("call_soon", (1,), {}),
    ("call_soon", ("not callable", 1), {}),
    ("call_soon", (print,), {"context": 1}),
    ("call_soon", (print,), {"bogus": 1}),
    ("call_soon_threadsafe", (), {}),
    ("call_soon_threadsafe", (1,), {}),
    ("call_soon_threadsafe", (print,), {"bogus": 1}),
    ("call_later", (), {}),
    ("call_later", (1,), {}),
    ("call_later", (None, print), {}),
    ("call_later", ("1", print), {}),
    ("call_later", ([], print), {}),
    ("call_later", (1, 1), {}),
    ("call_later", (1, print), {"bogus": 1}),
    ("call_at", (), {}),
    ("call_at", (None, print), {}),
    ("call_at", ("1", print), {}),
    ("call_at", (1, None), {}),
    ("time", (1,), {}),
    ("stop", (1,), {}),
    ("is_running", (1,), {}),
    ("is_closed", (1,), {}),
    ("get_debug", (1,), {}),
    ("set_debug", (), {}),
    ("create_future", (1,), {}),
    ("create_task", (), {}),
    ("create_task", (1,), {}),
    ("create_task", (print,), {}),
    ("run_forever", (1,), {}),
    ("run_until_complete", (), {}),
    ("run_until_complete", (1,), {}),
    ("run_until_complete", (None,), {}),
    ("close", (1,), {}),
    ("set_exception_handler", (1,), {}),
    ("set_exception_handler", (), {}),
    ("call_exception_handler", (), {}),
    ("set_task_factory", (1,), {}),
    ("set_default_executor", (1,), {}),
    ("set_default_executor", (None,), {}),
    ("run_in_executor", (), {}),
    ("run_in_executor", (1, print), {}),
    ("run_in_executor", (None,), {}),
    ("add_reader", (), {}),
    ("add_reader", ("x", print), {}),
    ("add_reader", (-1, print), {}),
    ("add_reader", (1.5, print), {}),
    ("add_reader", (None, print), {}),
    ("add_writer", ("x", print), {}),
    ("add_writer", (-5, print), {}),
    ("remove_reader", ("x",), {}),
    ("remove_reader", (), {}),
    ("remove_writer", (-1,), {}),
    ("remove_writer", (None,), {}),
    ("add_signal_handler", ("x", print), {}),
    ("add_signal_handler", (), {}),
    ("remove_signal_handler", ("x",), {}),
    ("remove_signal_handler", (10 ** 6,), {}),
    ("shutdown_asyncgens", (1,), {}),
    ("shutdown_default_executor", (1,), {}),
    ("getaddrinfo", (), {}),
]


def outcome(loop, name, args, kwargs):
    try:
        result = getattr(loop, name)(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        return type(e)
    if asyncio.iscoroutine(result):
        result.close()
    elif isinstance(result, asyncio.Handle) or hasattr(result, "cancel"):
        result.cancel()
    return None


@pytest.mark.parametrize("name,args,kwargs", BAD_CALLS,
                         ids=[f"{n}-{i}" for i, (n, _a, _k) in enumerate(BAD_CALLS)])
def test_same_exception_class_as_asyncio(name, args, kwargs):
    loops = {kind: make_loop(kind) for kind in ("asyncio", "tideloop")}
    try:
        expected = outcome(loops["asyncio"], name, args, kwargs)
        got = outcome(loops["tideloop"], name, args, kwargs)
    finally:
        for lp in loops.values():
            lp.close()
        gc.collect()
    if expected is not None:
        assert got is not None and issubclass(got, expected), (name, expected, got)
    else:
        assert got in (None, TypeError, ValueError), (name, got)


@pytest.mark.parametrize("name", [n for n, _a, _k in BAD_CALLS])
def test_closed_loop_never_crashes(name):
    lp = make_loop("tideloop")
    lp.close()
    for args in ((), (1,), (None, None), (print, print, print)):
        try:
            r = getattr(lp, name)(*args)
            if asyncio.iscoroutine(r):
                r.close()
        except Exception:  # noqa: BLE001
            pass


def test_handle_methods_bad_arguments(loop):
    h = loop.call_soon(print)
    t = loop.call_later(10, print)
    with pytest.raises(TypeError):
        h.cancel(1)
    with pytest.raises(TypeError):
        h.cancelled(1)
    with pytest.raises(TypeError):
        t.when(1)
    with pytest.raises(TypeError):
        t < 1
    assert (t == 1) is False
    h.cancel()
    t.cancel()


def test_unbound_core_methods_reject_foreign_self():
    import tideloop
    for name in ("call_soon", "call_later", "run_forever", "time", "stop", "create_future"):
        with pytest.raises(TypeError):
            getattr(tideloop.Loop, name)(object(), print)
    with pytest.raises(TypeError):
        tideloop._tideloop.Handle()
    with pytest.raises(TypeError):
        tideloop._tideloop.TimerHandle()
