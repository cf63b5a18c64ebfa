"""add_reader/add_writer edge cases that any reactor behind the loop's wait must get right
(epoll by default; bridge/engine/asio_poller.hpp when built with -DTIDELOOP_BRIDGE_REACTOR=asio):
level-triggered readiness, many fds in one tick, removal from callbacks, hang-ups, regular
files, and prompt wake-ups while fds are watched."""

import os
import socket
import tempfile
import threading
import time

import pytest

from conftest import run_once


def _pairs(n):
    out = []
    for _ in range(n):
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        out.append((a, b))
    return out


def _close(pairs):
    for a, b in pairs:
        a.close()
        b.close()


def test_reader_keeps_firing_while_data_is_unread(loop):
    (a, b), = pairs = _pairs(1)
    try:
        b.send(b"x" * 10)
        calls = []
        loop.add_reader(a, lambda: calls.append(a.recv(1)))
        for _ in range(10):
            run_once(loop)
        assert calls == [b"x"] * 10  # one byte per tick, one call per tick
        run_once(loop)
        assert len(calls) == 10  # drained: no more calls
        b.send(b"yz")
        run_once(loop)
        run_once(loop)
        assert calls[10:] == [b"y", b"z"]
        loop.remove_reader(a)
    finally:
        _close(pairs)


def test_reader_that_reads_nothing_is_called_every_tick(loop):
    (a, b), = pairs = _pairs(1)
    try:
        b.send(b"pending")
        calls = []
        loop.add_reader(a, calls.append, 1)
        for _ in range(5):
            run_once(loop)
        assert calls == [1] * 5
        loop.remove_reader(a)
        run_once(loop)
        assert calls == [1] * 5
    finally:
        _close(pairs)


def test_many_readers_fire_in_the_same_tick(loop):
    pairs = _pairs(40)
    try:
        fired = []
        for i, (a, _) in enumerate(pairs):
            loop.add_reader(a, lambda i=i, a=a: (fired.append(i), a.recv(10)))
        for _, b in pairs:
            b.send(b"!")
        deadline = time.monotonic() + 5
        while len(fired) < 40 and time.monotonic() < deadline:
            run_once(loop)
        assert sorted(fired) == list(range(40))
        for a, _ in pairs:
            assert loop.remove_reader(a)
    finally:
        _close(pairs)


def test_remove_reader_and_writer_from_their_callbacks(loop):
    (a, b), = pairs = _pairs(1)
    try:
        b.send(b"data")
        calls = []

        def on_read():
            calls.append("r")
            assert loop.remove_reader(a)

        def on_write():
            calls.append("w")
            assert loop.remove_writer(a)

        loop.add_reader(a, on_read)
        loop.add_writer(a, on_write)
        for _ in range(4):
            run_once(loop)
        assert sorted(calls) == ["r", "w"]
        assert not loop.remove_reader(a) and not loop.remove_writer(a)
    finally:
        _close(pairs)


def test_replace_reader_in_the_same_tick(loop):
    (a, b), = pairs = _pairs(1)
    try:
        b.send(b"ab")
        calls = []

        def first():
            calls.append(("first", a.recv(1)))
            loop.remove_reader(a)
            loop.add_reader(a, second)

        def second():
            calls.append(("second", a.recv(1)))
            loop.remove_reader(a)

        loop.add_reader(a, first)
        for _ in range(4):
            run_once(loop)
        assert calls == [("first", b"a"), ("second", b"b")]
    finally:
        _close(pairs)


def test_reader_sees_peer_hang_up(loop):
    (a, b), = pairs = _pairs(1)
    try:
        got = []

        def on_read():
            got.append(a.recv(10))
            loop.remove_reader(a)
            loop.stop()

        loop.add_reader(a, on_read)
        loop.call_soon(b.close)
        guard = loop.call_later(5, loop.stop)
        loop.run_forever()
        guard.cancel()
        assert got == [b""]
    finally:
        _close(pairs)


def test_add_reader_on_regular_file_is_refused(loop):
    with tempfile.TemporaryFile() as f:
        with pytest.raises(PermissionError):
            loop.add_reader(f.fileno(), print)
        assert loop.remove_reader(f.fileno()) is False


def test_threadsafe_wakeup_is_prompt_while_fds_are_watched(loop):
    (a, b), = pairs = _pairs(1)
    try:
        loop.add_reader(a, lambda: a.recv(100))
        woke = []

        def producer():
            time.sleep(0.05)
            t0 = time.monotonic()
            loop.call_soon_threadsafe(lambda: (woke.append(time.monotonic() - t0), loop.stop()))

        th = threading.Thread(target=producer)
        th.start()
        guard = loop.call_later(10, loop.stop)
        loop.run_forever()
        guard.cancel()
        th.join()
        assert len(woke) == 1 and woke[0] < 1.0
        loop.remove_reader(a)
    finally:
        _close(pairs)


def test_timer_precision_while_fds_are_watched(loop):
    # A wait that ends on a timer must not be stretched (e.g. rounded to a long tick) by the
    # reactor; generous bound for a noisy machine.
    (a, b), = pairs = _pairs(1)
    try:
        loop.add_reader(a, lambda: a.recv(100))
        start = loop.time()
        fired = []
        for k in range(1, 11):
            loop.call_at(start + k * 0.003, lambda: fired.append(loop.time()))
        loop.call_at(start + 0.04, loop.stop)
        loop.run_forever()
        assert len(fired) == 10
        for k, at in enumerate(fired, 1):
            assert at >= start + k * 0.003 - 1e-9
        loop.remove_reader(a)
    finally:
        _close(pairs)


def test_pipe_writer_and_reader(loop):
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    try:
        got = []

        def on_writable():
            os.write(w, b"ping")
            loop.remove_writer(w)

        def on_readable():
            got.append(os.read(r, 100))
            loop.remove_reader(r)
            loop.stop()

        loop.add_writer(w, on_writable)
        loop.add_reader(r, on_readable)
        guard = loop.call_later(5, loop.stop)
        loop.run_forever()
        guard.cancel()
        assert got == [b"ping"]
    finally:
        os.close(r)
        os.close(w)
