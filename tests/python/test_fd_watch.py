"""add_reader/add_writer: fd readiness on the loop's single wait (the base of the network layer)."""

import socket

import pytest

from conftest import run_once


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_reader_called_when_readable(loop, pair):
    a, b = pair
    got = []

    def on_read(tag):
        got.append((tag, a.recv(100)))
        loop.stop()

    loop.add_reader(a, on_read, "tag")  # a file object is accepted, as is its fileno()
    loop.call_soon(b.send, b"hi")
    guard = loop.call_later(5, loop.stop)
    loop.run_forever()
    guard.cancel()
    assert got == [("tag", b"hi")]
    assert loop.remove_reader(a.fileno()) is True
    assert loop.remove_reader(a) is False


def test_writer_called_when_writable(loop, pair):
    a, _ = pair
    got = []
    loop.add_writer(a.fileno(), lambda: (got.append(1), loop.remove_writer(a), loop.stop()))
    loop.run_forever()
    assert got == [1]
    assert loop.remove_writer(a) is False


def test_reader_is_level_triggered_and_replaceable(loop, pair):
    a, b = pair
    calls = []
    b.send(b"x")
    loop.add_reader(a, calls.append, "first")
    run_once(loop)
    run_once(loop)
    assert calls == ["first", "first"]  # still readable: called again
    loop.add_reader(a, calls.append, "second")
    run_once(loop)
    assert calls[-1] == "second"
    loop.remove_reader(a)
    run_once(loop)
    assert calls.count("second") == 1


def test_reader_and_writer_on_same_fd(loop, pair):
    a, b = pair
    events = []
    b.send(b"x")
    loop.add_reader(a, events.append, "r")
    loop.add_writer(a, events.append, "w")
    run_once(loop)
    assert sorted(events) == ["r", "w"]
    assert loop.remove_writer(a) is True
    events.clear()
    run_once(loop)
    assert events == ["r"]
    assert loop.remove_reader(a) is True


def test_remove_on_closed_loop(loop, pair):
    a, _ = pair
    loop.add_reader(a, print)
    loop.close()
    assert loop.remove_reader(a) is False
    with pytest.raises(RuntimeError):
        loop.add_reader(a, print)
