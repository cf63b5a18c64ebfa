"""call_soon_threadsafe at the edges: a producer racing close(), a post landing while the loop
goes to sleep, and the contexts of handles (tideloop creates the empty context of a handle
lazily and recycles it; none of that may be observable)."""

import asyncio
import contextvars
import gc
import random
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest

from conftest import BUILD_PYTHON

_RACE_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, threading, time
    sys.path.insert(0, {path!r})
    import tideloop

    def make():
        return tideloop.new_event_loop() if {kind!r} == "tideloop" else asyncio.SelectorEventLoop()

    # Switch threads as often as possible: in debug mode call_soon_threadsafe runs Python code
    # (callback check, traceback capture) between its closed check and the push, where another
    # thread can close the loop.
    sys.setswitchinterval(1e-6)
    for rnd in range(30):
        loop = make()
        loop.set_debug(True)
        loop.slow_callback_duration = 10.0
        started = threading.Barrier(5)
        outcomes = []

        def producer():
            started.wait()
            n = 0
            while True:
                try:
                    loop.call_soon_threadsafe(len, ())
                except RuntimeError as e:
                    assert "closed" in str(e), e
                    outcomes.append(n)
                    return
                n += 1

        threads = [threading.Thread(target=producer) for _ in range(4)]
        for t in threads:
            t.start()
        started.wait()
        loop.run_until_complete(asyncio.sleep(0.002 * (rnd % 4)))
        loop.close()
        for t in threads:
            t.join()
        assert len(outcomes) == 4
    print("ok")
    """
)


def test_threadsafe_racing_close_never_crashes(loop_kind):
    # In a subprocess: the failure this guards against is a crash (a post into the released
    # wake-up state of a closed loop), which would take pytest down with it.
    script = _RACE_SCRIPT.format(path=str(BUILD_PYTHON), kind=loop_kind)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "ok"


def _ping_pong(loop, producers, rounds):
    """Each producer posts one callback, waits until it ran, then posts the next one, after a
    random short delay: the loop has just run out of work and is going to sleep (no timer, so it
    would sleep forever) at varying points when the next post lands."""
    failures = []

    def producer(seed):
        rng = random.Random(seed)
        ran = threading.Event()
        for i in range(rounds):
            ran.clear()
            spin = rng.randrange(0, 200)
            for _ in range(spin):
                pass
            if rng.random() < 0.1:
                time.sleep(0)
            loop.call_soon_threadsafe(ran.set)
            if not ran.wait(5):
                failures.append(f"producer {seed}: post {i} not run within 5 s (lost wake-up)")
                break
        loop.call_soon_threadsafe(finished)

    left = [producers]

    def finished():
        left[0] -= 1
        if left[0] == 0:
            loop.stop()

    threads = [threading.Thread(target=producer, args=(s,)) for s in range(producers)]
    for t in threads:
        t.start()
    # Only so that a lost wake-up fails the test instead of hanging it: the loop would
    # otherwise sleep with no deadline at all.
    guard = loop.call_later(30, loop.stop)
    loop.run_forever()
    guard.cancel()
    for t in threads:
        t.join()
    assert failures == []
    assert left[0] == 0


def test_wakeup_not_lost_when_loop_goes_to_sleep(loop):
    _ping_pong(loop, producers=1, rounds=3000)


def test_wakeup_not_lost_with_several_producers(loop):
    _ping_pong(loop, producers=3, rounds=1000)


def test_wakeup_not_lost_with_native_completions_in_flight(loop):
    # Executor completions (native threads, lock-free inbox) and Python producers (ready queue
    # under the GIL) wake the same sleeping loop.
    async def main():
        stop = threading.Event()
        posted = [0]
        ran = [0]

        def on_item():
            ran[0] += 1

        def producer():
            while not stop.is_set():
                loop.call_soon_threadsafe(on_item)
                posted[0] += 1
                time.sleep(0.0001)

        t = threading.Thread(target=producer)
        t.start()
        try:
            for _ in range(300):
                await loop.run_in_executor(None, time.sleep, 0)
        finally:
            stop.set()
            t.join()
        for _ in range(100):
            if ran[0] == posted[0]:
                break
            await asyncio.sleep(0.01)
        assert ran[0] == posted[0]

    loop.run_until_complete(asyncio.wait_for(main(), 30))


var = contextvars.ContextVar("var", default="unset")


def _ctx(h):
    # asyncio 3.11's Handle has no get_context() yet (3.12); both have _context.
    return h.get_context() if hasattr(h, "get_context") else h._context


def _empty(fn):
    """Runs fn in a new empty context: what a thread that never set a variable schedules from
    (tideloop's lazily created contexts), whatever earlier tests left in this thread's."""
    return contextvars.Context().run(fn)


def test_threadsafe_callback_sees_the_producer_context(loop):
    seen = []

    def producer(value):
        if value is not None:
            var.set(value)
        loop.call_soon_threadsafe(lambda: seen.append((value, var.get())))

    def main():
        var.set("loop thread")  # the loop thread's own value must not leak into the callbacks
        threads = [threading.Thread(target=producer, args=(v,)) for v in ("a", None, "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        loop.call_soon(loop.stop)
        loop.run_forever()

    _empty(main)
    assert sorted(seen, key=str) == sorted([("a", "a"), (None, "unset"), ("b", "b")], key=str)


def test_empty_context_is_one_object_and_keeps_what_the_callback_set(loop):
    def cb():
        var.set("set by cb")

    def main():
        h = loop.call_soon(cb)
        ctx = _ctx(h)
        assert isinstance(ctx, contextvars.Context)
        assert len(ctx) == 0
        assert _ctx(h) is ctx
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert _ctx(h) is ctx
        assert ctx[var] == "set by cb"
        assert var.get() == "unset"

    _empty(main)


def test_context_of_a_handle_fetched_after_it_ran(loop):
    def cb():
        var.set("x")

    def main():
        h = loop.call_soon(cb)
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert _ctx(h)[var] == "x"  # the context it ran in, not a new empty one

    _empty(main)


def test_callbacks_never_see_each_others_variables(loop):
    # Each callback runs in its own (copied or fresh) context, even when the loop reuses a
    # context object that is empty again.
    seen = []

    def setter():
        seen.append(var.get())
        var.set("leak")

    def set_and_reset():
        seen.append(var.get())
        token = var.set("leak")
        var.reset(token)

    def main():
        for i in range(200):
            loop.call_soon(setter if i % 2 else set_and_reset)
        loop.call_soon(loop.stop)
        loop.run_forever()

    _empty(main)
    assert seen == ["unset"] * 200


def test_context_referenced_weakly_is_not_kept_alive(loop):
    def main():
        h = loop.call_soon(len, ())
        ref = weakref.ref(_ctx(h))
        loop.call_soon(loop.stop)
        loop.run_forever()
        return ref

    ref = _empty(main)
    gc.collect()
    assert ref() is None


def test_context_kept_by_a_token_is_not_reused(loop):
    tokens = []

    def cb():
        tokens.append(var.set("mine"))
        var.reset(tokens[-1])  # empty again, but the token still references it
        tokens.append(var.set("mine"))

    def main():
        h = loop.call_soon(cb)
        loop.call_soon(loop.stop)
        loop.run_forever()
        ctx = _ctx(h)
        del h
        seen = []
        loop.call_soon(lambda: seen.append(var.get()))
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert seen == ["unset"]
        assert ctx[var] == "mine"

    _empty(main)


@pytest.mark.parametrize("n", [1, 3])
def test_threadsafe_with_explicit_context(loop, n):
    ctx = contextvars.copy_context()
    ctx.run(var.set, "explicit")
    seen = []

    def producer():
        for _ in range(n):
            loop.call_soon_threadsafe(lambda: seen.append(var.get()), context=ctx)

    t = threading.Thread(target=producer)
    t.start()
    t.join()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["explicit"] * n
