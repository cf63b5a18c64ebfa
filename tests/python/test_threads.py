"""call_soon_threadsafe from other threads: delivery, wake-ups, and closing under fire."""

import asyncio
import threading
import time

import pytest

import tideloop


def test_threadsafe_wakes_a_sleeping_loop(loop):
    def later():
        time.sleep(0.05)
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=later)
    t.start()
    start = time.monotonic()
    loop.run_forever()  # nothing scheduled: sleeps until woken
    t.join()
    assert time.monotonic() - start < 5


def test_many_producer_threads_deliver_everything(loop):
    n_threads, per_thread = 8, 2000
    total = n_threads * per_thread
    received = []
    done = loop.create_future()

    def on_item(item):
        received.append(item)
        if len(received) == total:
            done.set_result(None)

    def producer(tid):
        for i in range(per_thread):
            loop.call_soon_threadsafe(on_item, (tid, i))

    async def main():
        threads = [threading.Thread(target=producer, args=(t,)) for t in range(n_threads)]
        for t in threads:
            t.start()
        await done
        for t in threads:
            t.join()

    loop.run_until_complete(main())
    assert len(received) == total
    for tid in range(n_threads):  # per-producer FIFO
        mine = [i for (t, i) in received if t == tid]
        assert mine == list(range(per_thread))


def test_threadsafe_handle_can_be_cancelled(loop):
    calls = []
    box = {}

    def producer():
        box["h"] = loop.call_soon_threadsafe(calls.append, 1)

    t = threading.Thread(target=producer)
    t.start()
    t.join()
    box["h"].cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == []


def test_producers_while_loop_runs_and_closes(loop):
    stop = threading.Event()
    errors = []
    counts = [0]

    def producer():
        while not stop.is_set():
            try:
                loop.call_soon_threadsafe(counts.__setitem__, 0, counts[0] + 1)
            except RuntimeError as e:  # "Event loop is closed", once it is
                errors.append(str(e))
                return

    threads = [threading.Thread(target=producer) for _ in range(4)]
    for t in threads:
        t.start()
    loop.run_until_complete(asyncio.sleep(0.1))
    loop.close()
    time.sleep(0.02)
    stop.set()
    for t in threads:
        t.join()
    assert counts[0] > 0
    assert errors and all("closed" in e for e in errors)


def test_threadsafe_from_loop_thread(loop):
    calls = []
    loop.call_soon(lambda: loop.call_soon_threadsafe(calls.append, 1))
    loop.call_soon(lambda: loop.call_soon(loop.stop))
    loop.run_forever()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [1]


def test_loop_in_a_non_main_thread(loop):
    result = []

    def run():
        asyncio.set_event_loop(loop)
        result.append(loop.run_until_complete(asyncio.sleep(0.01, "ok")))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert result == ["ok"]


def test_busy_producers_make_few_wake_syscalls():
    # tideloop only: the inbox writes the eventfd only when the loop sleeps, not per item.
    loop = tideloop.new_event_loop()
    try:
        total = 20000
        got = [0]
        done = loop.create_future()

        def on_item():
            got[0] += 1
            if got[0] == total:
                done.set_result(None)

        def producer():
            for _ in range(total // 4):
                loop.call_soon_threadsafe(on_item)

        async def main():
            threads = [threading.Thread(target=producer) for _ in range(4)]
            for t in threads:
                t.start()
            await done
            for t in threads:
                t.join()

        loop.run_until_complete(main())
        assert got[0] == total
        assert loop._stats()["wake_writes"] < total // 10
    finally:
        loop.close()
