"""Timer ordering edge cases: equal and sub-microsecond deadlines, days-long delays, cancellation
from callbacks, many cancels, odd deadlines (inf, -inf, NaN), and timers scheduled while the loop
sleeps towards a near deadline. Every test runs on asyncio's loop and on tideloop's (whose timers
live in the runtime's hierarchical timer wheel, bridge/engine/timer_queue.hpp).

asyncio leaves the order of timers with equal `when` undefined (heapq is not stable); tideloop
fires them in scheduling order, which the tests check on tideloop only.
"""

import math
import random
import threading
import time

import pytest

import tideloop
from conftest import pending_timers, run_once

DAY = 86400.0


@pytest.fixture
def clock(loop, loop_kind):
    """Moves `loop.time()` forward without waiting: asyncio's loop by patching its time(),
    tideloop's through the bridge's test hook (which shifts the clock of every tideloop loop)."""

    class Clock:
        offset = 0.0

        def advance(self, seconds):
            self.offset += seconds
            if loop_kind == "tideloop":
                tideloop._tideloop._debug_clock_offset(self.offset)

    c = Clock()
    if loop_kind == "asyncio":
        real_time = loop.time
        loop.time = lambda: real_time() + c.offset
    yield c
    if loop_kind == "tideloop":
        tideloop._tideloop._debug_clock_offset(0.0)


def _fire_log(loop, log, label):
    """A callback that records (label, when-it-ran)."""
    return lambda: log.append((label, loop.time()))


def _run_until_all_fired(loop, log, expected, limit=5.0):
    deadline = time.monotonic() + limit
    while len(log) < expected and time.monotonic() < deadline:
        run_once(loop)
        time.sleep(0.0005)


def test_equal_when_fire_together_and_in_scheduling_order_on_tideloop(loop, loop_kind):
    calls = []
    base = loop.time() + 0.005
    whens = [base + (i % 4) * 0.001 for i in range(200)]
    for i, w in enumerate(whens):
        loop.call_at(w, calls.append, (w, i))
    loop.call_at(base + 0.02, loop.stop)
    loop.run_forever()
    assert len(calls) == 200
    assert [w for w, _ in calls] == sorted(whens)  # `when` order on both loops
    if loop_kind == "tideloop":
        assert calls == sorted(calls)  # and scheduling order among equal `when`


def test_equal_when_scheduled_by_a_callback_runs_after_the_pending_ones(loop, loop_kind):
    calls = []
    when = loop.time() + 0.005

    def first():
        calls.append("first")
        loop.call_at(when, calls.append, "added-by-first")  # already due: next iteration

    loop.call_at(when, first)
    loop.call_at(when, calls.append, "second")
    loop.call_at(when + 0.01, loop.stop)
    loop.run_forever()
    assert sorted(calls) == ["added-by-first", "first", "second"]
    assert calls[-1] == "added-by-first"
    if loop_kind == "tideloop":
        assert calls == ["first", "second", "added-by-first"]


def test_sub_microsecond_deadlines_fire_in_when_order(loop):
    # Many deadlines inside the same microsecond (the same wheel tick), scheduled shuffled.
    base = loop.time() + 0.003
    whens = [base + k * 1e-8 for k in range(50)] + [base + 1e-6 + k * 1e-8 for k in range(50)]
    shuffled = whens[:]
    random.Random(7).shuffle(shuffled)
    calls = []
    for w in shuffled:
        loop.call_at(w, calls.append, w)
    loop.call_at(base + 0.01, loop.stop)
    loop.run_forever()
    assert calls == sorted(whens)


def test_random_deadlines_across_wheel_levels_fire_in_order_never_early(loop):
    rng = random.Random(11)
    start = loop.time()
    # 0 .. 80 ms: levels 0 to 2 of tideloop's wheel (3.8 us ticks).
    delays = [rng.choice([rng.uniform(0, 0.0001), rng.uniform(0, 0.004), rng.uniform(0, 0.08)])
              for _ in range(400)]
    fired = []
    for d in delays:
        when = start + d
        loop.call_at(when, lambda w=when: fired.append((w, loop.time())))
    loop.call_at(start + 0.1, loop.stop)
    loop.run_forever()
    assert len(fired) == len(delays)
    assert [w for w, _ in fired] == sorted(start + d for d in delays)
    for when, at in fired:
        assert at >= when - 1e-9


def test_far_future_timers_fire_in_order_never_early(loop, clock):
    # Hours to days: tideloop's wheel keeps them in its top levels (68 min slots, 72.8 h span);
    # farther ones wait outside the wheel until they come within its span. They must all fire
    # when due, in order, and not before.
    log = []
    delays = {"1h": 3600.0, "19h": 19 * 3600.0, "25h": 25 * 3600.0, "1d": DAY, "3d": 3 * DAY,
              "11.9d": 11.9 * DAY, "13d": 13 * DAY, "40d": 40 * DAY}
    t0 = loop.time()
    handles = {name: loop.call_later(d, _fire_log(loop, log, name)) for name, d in delays.items()}
    for name, h in handles.items():
        assert t0 + delays[name] <= h.when() <= loop.time() + delays[name]
    order = sorted(delays, key=delays.get)
    elapsed = 0.0
    for name in order:
        d = delays[name]
        # Just before the deadline: nothing new fires (the loop may run many turns of its wheel).
        clock.advance(d - 1.0 - elapsed)
        elapsed = d - 1.0
        run_once(loop)
        assert [n for n, _ in log] == order[:order.index(name)]
        clock.advance(2.0)
        elapsed += 2.0
        _run_until_all_fired(loop, log, order.index(name) + 1)
        assert [n for n, _ in log] == order[:order.index(name) + 1]
        assert log[-1][1] >= handles[name].when()
    assert pending_timers(loop) == 0


def test_far_future_timer_does_not_delay_near_ones(loop, clock):
    calls = []
    far = loop.call_later(5 * DAY, calls.append, "far")
    loop.call_later(0.01, calls.append, "near")
    loop.call_later(0.02, loop.stop)
    t0 = time.monotonic()
    loop.run_forever()
    assert calls == ["near"]
    assert time.monotonic() - t0 < 2.0
    far.cancel()
    run_once(loop)
    assert pending_timers(loop) == 0


def test_cancel_from_callback_same_when_and_later(loop):
    calls = []
    when = loop.time() + 0.005
    handles = {}

    def canceller():
        calls.append("canceller")
        handles["same"].cancel()  # already moved to the ready queue with it: must not run
        handles["later"].cancel()  # still pending
        handles["self"].cancel()  # cancelling the running timer itself is harmless

    handles["self"] = loop.call_at(when, canceller)
    handles["same"] = loop.call_at(when, calls.append, "same")
    handles["later"] = loop.call_at(when + 0.002, calls.append, "later")
    loop.call_at(when + 0.01, calls.append, "end")
    loop.call_at(when + 0.011, loop.stop)
    loop.run_forever()
    assert calls == ["canceller", "end"]
    assert handles["same"].cancelled() and handles["later"].cancelled()
    assert pending_timers(loop) == 0


def test_callback_cancels_and_reschedules_itself_repeatedly(loop):
    # A timeout pattern: every fire cancels the pending one and schedules a fresh timer.
    state = {"n": 0, "h": None}

    def tick():
        state["n"] += 1
        if state["n"] == 50:
            loop.stop()
            return
        state["h"] = loop.call_later(0.0002, tick)
        decoy = loop.call_later(10, tick)
        decoy.cancel()

    loop.call_soon(tick)
    loop.run_forever()
    assert state["n"] == 50
    run_once(loop)
    assert pending_timers(loop) == 0


def test_many_cancels_leave_the_rest_in_order(loop):
    rng = random.Random(3)
    base = loop.time() + 0.005
    fired = []
    handles = []
    for i in range(5000):
        w = base + rng.uniform(0, 0.02)
        handles.append((w, i, loop.call_at(w, fired.append, (w, i))))
    order = list(range(len(handles)))
    rng.shuffle(order)
    cancelled = set(order[:4500])
    for i in order[:4500]:
        handles[i][2].cancel()
    loop.call_at(base + 0.03, loop.stop)
    loop.run_forever()
    kept = sorted((w, i) for w, i, _ in handles if i not in cancelled)
    assert sorted(fired) == kept
    assert [w for w, _ in fired] == [w for w, _ in kept]
    assert pending_timers(loop) == 0


def test_cancelling_every_timer_empties_the_loop(loop):
    handles = [loop.call_later(1 + (i % 100) * 0.5, print) for i in range(3000)]
    for h in reversed(handles):
        h.cancel()
    run_once(loop)
    assert pending_timers(loop) == 0
    t0 = time.monotonic()
    loop.run_until_complete(_sleep(loop, 0.01))  # the wait is not held up by cancelled timers
    assert time.monotonic() - t0 < 1.0


async def _sleep(loop, d):
    import asyncio
    await asyncio.sleep(d)


def test_cancel_twice_and_after_firing_is_harmless(loop):
    calls = []
    h = loop.call_later(0, calls.append, 1)
    run_once(loop)
    h.cancel()
    h.cancel()
    assert calls == [1]
    h2 = loop.call_later(100, calls.append, 2)
    h2.cancel()
    h2.cancel()
    assert pending_timers(loop) in (0, 1)  # asyncio cleans up lazily
    run_once(loop)
    assert pending_timers(loop) == 0


def test_infinite_and_minus_infinite_deadlines(loop):
    calls = []
    hinf = loop.call_at(math.inf, calls.append, "inf")
    loop.call_at(-math.inf, calls.append, "-inf")
    loop.call_at(-1.0, calls.append, "past")
    assert hinf.when() == math.inf
    run_once(loop)
    assert calls == ["-inf", "past"]
    loop.run_until_complete(_sleep(loop, 0.01))  # a wait with an infinite deadline pending
    assert calls == ["-inf", "past"]
    hinf.cancel()
    run_once(loop)
    assert pending_timers(loop) == 0


def test_nan_deadline_fires_at_once(loop):
    # asyncio: `nan >= end_time` is false, so a NaN deadline counts as expired.
    calls = []
    h = loop.call_at(math.nan, calls.append, "nan")
    assert math.isnan(h.when())
    run_once(loop)
    assert calls == ["nan"]


def test_timer_scheduled_while_the_loop_sleeps_before_a_near_deadline(loop):
    # The loop sleeps towards a deadline a few ms away (tideloop settles that wheel slot ahead of
    # time); a thread then makes it schedule an earlier timer, which must still fire first.
    fired = []
    go = threading.Event()
    start = loop.time()
    loop.call_at(start + 0.003, lambda: fired.append(("late", start + 0.003)))

    def add_early():
        when = loop.time() + 0.0003
        loop.call_at(when, lambda: fired.append(("early", when)))

    def producer():
        go.wait()
        time.sleep(0.001)
        loop.call_soon_threadsafe(add_early)

    th = threading.Thread(target=producer)
    th.start()
    loop.call_soon(go.set)
    loop.call_at(start + 0.05, loop.stop)
    loop.run_forever()
    th.join()
    assert sorted(name for name, _ in fired) == ["early", "late"]
    assert [w for _, w in fired] == sorted(w for _, w in fired)


def test_timers_do_not_fire_before_their_when_within_one_tick(loop):
    # Deadlines a fraction of a microsecond apart, each checked against the clock when it ran.
    fired = []
    base = loop.time() + 0.002
    for k in range(40):
        w = base + k * 2.5e-7
        loop.call_at(w, lambda w=w: fired.append((w, loop.time())))
    loop.call_at(base + 0.01, loop.stop)
    loop.run_forever()
    assert len(fired) == 40
    for when, at in fired:
        assert at >= when - 1e-9


def test_held_handles_of_fired_and_cancelled_timers_survive_gc_and_close(loop):
    # tideloop keeps a lazily maintained list of its wheel's timers for the GC: handles that
    # left the wheel (fired, cancelled) but are still held must stay valid through collections,
    # more scheduling (which compacts that list) and close().
    import gc
    calls = []
    held = [loop.call_later(0.001 * (i % 5), calls.append, i) for i in range(300)]
    for h in held[::3]:
        h.cancel()
    loop.run_until_complete(_sleep(loop, 0.02))
    gc.collect()
    more = [loop.call_later(50 + i, calls.append, -i) for i in range(500)]
    del held[::2]
    gc.collect()
    for h in more[:400]:
        h.cancel()
    gc.collect()
    assert sorted(calls) == sorted(i for i in range(300) if i % 3)
    loop.close()
    del more, held
    gc.collect()
