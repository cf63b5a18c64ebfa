"""call_later / call_at: ordering, when(), cancellation and its clean-up heuristic."""

import asyncio
import time

import pytest

from conftest import pending_timers, run_once


def test_timers_fire_in_deadline_order(loop):
    calls = []
    for d in (0.03, 0.01, 0.02, 0.0):
        loop.call_later(d, calls.append, d)
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert calls == [0.0, 0.01, 0.02, 0.03]


def test_timer_never_fires_early(loop):
    fired = []
    start = loop.time()
    for i in range(20):
        when = start + i * 0.002
        loop.call_at(when, lambda w=when: fired.append((w, loop.time())))
    loop.call_at(start + 0.05, loop.stop)
    loop.run_forever()
    assert len(fired) == 20
    for when, at in fired:
        assert at >= when - 1e-9


def test_call_at_when_is_exact(loop):
    when = loop.time() + 12.345678901
    h = loop.call_at(when, print)
    assert h.when() == when
    h.cancel()


def test_call_later_when_is_time_plus_delay(loop):
    t0 = loop.time()
    h = loop.call_later(10, print)
    t1 = loop.time()
    assert t0 + 10 <= h.when() <= t1 + 10
    h.cancel()


def test_negative_delay_runs_next_iteration(loop):
    calls = []
    loop.call_later(-1, calls.append, 1)
    run_once(loop)
    assert calls == [1]


def test_expired_timers_run_after_ready_callbacks(loop):
    calls = []
    loop.call_later(0, calls.append, "timer")
    loop.call_soon(calls.append, "soon")
    run_once(loop)
    assert calls == ["soon", "timer"]


def test_cancelled_timer_does_not_run(loop):
    calls = []
    h = loop.call_later(0.001, calls.append, 1)
    h.cancel()
    assert h.cancelled()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert calls == []


def test_cancelled_timers_are_compacted(loop):
    handles = [loop.call_later(100 + i, print) for i in range(1000)]
    for h in handles[:600]:
        h.cancel()
    run_once(loop)
    # More than half cancelled (and > 100 scheduled): the heap was rebuilt without them.
    assert pending_timers(loop) == 400
    for h in handles[600:]:
        h.cancel()
    run_once(loop)
    assert pending_timers(loop) == 0


def test_cancelled_head_timers_are_dropped(loop):
    h1 = loop.call_later(50, print)
    loop.call_later(100, print)
    h1.cancel()
    run_once(loop)
    assert pending_timers(loop) == 1


def test_timer_handle_ordering_and_hash(loop):
    t = loop.time()
    a = loop.call_at(t + 1, print)
    b = loop.call_at(t + 2, print)
    assert a < b and b > a and a <= b and b >= a and a != b
    assert hash(a) == hash(t + 1)
    a2 = loop.call_at(t + 1, print)
    assert a == a2 and a <= a2 and a >= a2
    for h in (a, b, a2):
        h.cancel()


def test_none_deadlines_raise_type_error(loop):
    with pytest.raises(TypeError):
        loop.call_later(None, print)
    with pytest.raises(TypeError):
        loop.call_at(None, print)


def test_timer_wakes_sleeping_loop_on_time(loop):
    t0 = time.monotonic()
    loop.run_until_complete(asyncio.sleep(0.05))
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.05
    assert elapsed < 2.0  # generous: only catches a wait that ignores the deadline


def test_many_timers_same_deadline_all_fire(loop):
    calls = []
    when = loop.time() + 0.01
    for i in range(100):
        loop.call_at(when, calls.append, i)
    loop.run_until_complete(asyncio.sleep(0.03))
    assert sorted(calls) == list(range(100))
