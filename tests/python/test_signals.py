"""Ctrl-C and signals: SIGINT interrupts a waiting or busy loop promptly with KeyboardInterrupt
(checked in a subprocess), Python signal handlers run while the loop waits, add_signal_handler."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import subprocess_env

CHILD_PRELUDE = """
import asyncio, os, sys, time
import tideloop
KIND = sys.argv[1]
def make_loop():
    return asyncio.SelectorEventLoop() if KIND == "asyncio" else tideloop.new_event_loop()
def ready():
    print("READY", flush=True)
"""


def run_child(kind, body, signal_after=0.3):
    code = CHILD_PRELUDE + textwrap.dedent(body)
    proc = subprocess.Popen([sys.executable, "-c", code, kind], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=subprocess_env(), text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "READY", proc.stderr.read()
        time.sleep(signal_after)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        return proc.returncode, out, err, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("waiting", ["no-timers", "far-timer"])
def test_sigint_interrupts_waiting_run_forever(loop_kind, waiting):
    body = f"""
    loop = make_loop()
    if {waiting!r} == "far-timer":
        loop.call_later(3600, print)
    loop.call_soon(ready)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        print("KI", loop.is_running(), flush=True)
    loop.close()
    """
    code, out, err, latency = run_child(loop_kind, body)
    assert code == 0, err
    assert "KI False" in out
    assert latency < 5


def test_sigint_interrupts_busy_loop(loop_kind):
    body = """
    loop = make_loop()
    def spin():
        loop.call_soon(spin)
    loop.call_soon(ready)
    loop.call_soon(spin)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        print("KI", flush=True)
    loop.close()
    """
    code, out, err, latency = run_child(loop_kind, body)
    assert code == 0, err
    assert "KI" in out


def test_sigint_cancels_asyncio_run_main_task(loop_kind):
    body = """
    async def main():
        ready()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            print("CANCELLED", flush=True)
            raise
    try:
        with asyncio.Runner(loop_factory=make_loop) as r:
            r.run(main())
    except KeyboardInterrupt:
        print("KI", flush=True)
    """
    code, out, err, latency = run_child(loop_kind, body)
    assert code == 0, err
    assert "CANCELLED" in out and "KI" in out


def test_sigint_in_run_in_executor_wait(loop_kind):
    body = """
    loop = make_loop()
    async def main():
        ready()
        await loop.run_in_executor(None, time.sleep, 1)
    try:
        loop.run_until_complete(main())
    except KeyboardInterrupt:
        print("KI", flush=True)
    """
    code, out, err, latency = run_child(loop_kind, body)
    assert code == 0, err
    assert "KI" in out
    assert latency < 10


def test_python_signal_handler_runs_while_loop_waits(loop):
    got = []
    old = signal.signal(signal.SIGUSR1, lambda s, f: got.append(time.monotonic()))
    try:
        def sender():
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.05)
            loop.call_soon_threadsafe(loop.stop)

        t = threading.Thread(target=sender)
        t.start()
        loop.run_forever()
        t.join()
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert len(got) == 1


def test_signal_to_another_thread_still_wakes_loop(loop):
    # The signal is directed at a helper thread: only the wakeup fd can end the loop's wait.
    got = []
    old = signal.signal(signal.SIGUSR2, lambda s, f: (got.append(1), loop.stop()))
    ready = threading.Event()
    release = threading.Event()

    def helper():
        ready.set()
        release.wait(10)

    t = threading.Thread(target=helper)
    t.start()
    ready.wait()
    try:
        def kill_helper():
            time.sleep(0.05)
            signal.pthread_kill(t.ident, signal.SIGUSR2)

        k = threading.Thread(target=kill_helper)
        k.start()
        guard = loop.call_later(1.0, loop.stop)
        start = time.monotonic()
        loop.run_forever()
        elapsed = time.monotonic() - start
        guard.cancel()
        k.join()
    finally:
        release.set()
        t.join()
        signal.signal(signal.SIGUSR2, old)
    assert got == [1]
    if loop_kind_is_tideloop(loop):
        assert elapsed < 0.9  # asyncio's loop sleeps until its 1 s guard timer here


def loop_kind_is_tideloop(loop):
    import tideloop
    return isinstance(loop, tideloop.Loop)


def test_add_remove_signal_handler(loop):
    got = []
    loop.add_signal_handler(signal.SIGUSR1, lambda *a: (got.append(a), loop.stop()), "x")
    try:
        loop.call_later(0.02, os.kill, os.getpid(), signal.SIGUSR1)
        guard = loop.call_later(5, loop.stop)
        loop.run_forever()
        guard.cancel()
        assert got == [("x",)]
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
        assert loop.remove_signal_handler(signal.SIGUSR1) is False
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


def test_add_signal_handler_errors(loop):
    with pytest.raises(TypeError):
        loop.add_signal_handler("SIGINT", print)
    with pytest.raises(ValueError):
        loop.add_signal_handler(100000, print)
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGKILL, print)

    async def coro_fn():
        pass

    with pytest.raises(TypeError):
        loop.add_signal_handler(signal.SIGUSR1, coro_fn)


def test_add_signal_handler_outside_main_thread(loop):
    errors = []

    def other():
        try:
            loop.add_signal_handler(signal.SIGUSR1, print)
        except RuntimeError as e:
            errors.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1


def test_wakeup_fd_restored_after_run(loop):
    before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(before)
    loop.run_until_complete(asyncio.sleep(0.01))
    after = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(after)
    assert after == before
