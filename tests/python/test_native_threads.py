"""tideloop-only: native threads never run Python code without the GIL (counters compiled into
the extension), and the counters do detect a violation."""

import asyncio
import hashlib
import threading

import tideloop
from tideloop import _tideloop


def test_executor_threads_always_hold_the_gil():
    _tideloop._debug_reset()
    loop = tideloop.new_event_loop()
    data = b"y" * 65536
    try:
        async def main():
            await asyncio.gather(*(loop.run_in_executor(None, pow, i, 3) for i in range(3000)))
            await asyncio.gather(*(loop.run_in_executor(None, hashlib.sha256, data)
                                   for _ in range(200)))
            for i in range(200):
                await loop.run_in_executor(None, abs, -i)

        loop.run_until_complete(main())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
    stats = _tideloop._debug_stats()
    assert stats["executor_calls"] == 3400
    assert stats["native_gil_checks"] >= 3400
    assert stats["native_gil_violations"] == 0
    # Batching: one GIL acquisition serves many queued calls.
    assert stats["executor_gil_acquisitions"] <= stats["executor_calls"]


def test_gil_check_detects_a_thread_without_gil():
    before = _tideloop._debug_stats()
    _tideloop._debug_probe_native_without_gil()
    after = _tideloop._debug_stats()
    assert after["native_gil_violations"] == before["native_gil_violations"] + 1
    _tideloop._debug_reset()


def test_executor_pool_is_bounded_like_thread_pool_executor():
    import os
    stats = _tideloop._debug_stats()
    assert stats["executor_max_threads"] == min(32, (os.cpu_count() or 1) + 4)


def test_executor_result_delivered_on_loop_thread():
    loop = tideloop.new_event_loop()
    try:
        seen = []

        async def main():
            fut = loop.run_in_executor(None, threading.get_ident)
            fut.add_done_callback(lambda f: seen.append(threading.get_ident()))
            return await fut

        worker = loop.run_until_complete(main())
        assert worker != threading.get_ident()
        assert seen == [threading.get_ident()]
    finally:
        loop.close()
