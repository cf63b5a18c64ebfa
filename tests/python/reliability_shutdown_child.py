"""Child process of test_reliability_shutdown: shut a loop down while it is under load.

usage: reliability_shutdown_child.py asyncio|tideloop run|close

The load, started by main() and left running when the loop is shut down:
- TASKS tasks asleep in asyncio.sleep(3600), half of them catching CancelledError to run an
  awaited clean-up step before they re-raise;
- TIMERS call_later(3600) timers and as many call_later(0.001) timers re-armed forever;
- EXECUTOR_JOBS run_in_executor(None, job) jobs (each sleeps JOB_SECONDS), more than the
  executor runs at once (some are still queued at shutdown), awaited by tasks; then FREE_JOBS
  not awaited by anyone;
- PRODUCERS threads calling call_soon_threadsafe in a loop until it raises;
- CLIENTS stream connections to a local echo server, each pumping messages.

Shutdown:
  run    main() returns while the load runs, inside asyncio.run(main()) (or tideloop.run): the
         runner cancels the remaining tasks and awaits them, shuts down async generators and
         the default executor, closes the loop
  close  the load runs under run_until_complete(sleep), loop.stop() is called from a callback
         while the producers keep posting, then loop.close() with everything still pending

Prints one JSON line of what happened to each kind of pending work (see the test).
"""

import asyncio
import gc
import json
import os
import sys
import threading
import time
import warnings

KIND = SCENARIO = None  # from the command line (the test imports this module for its constants)

TASKS = 200
TIMERS = 100
# 36 awaited jobs of 0.1 s on at most 6 executor threads (both loops: min(32, cpus + 4) on 2
# cores) take 0.6 s, twice the 0.3 s the load runs: some are still queued at shutdown.
EXECUTOR_JOBS = 36
FREE_JOBS = 10
JOB_SECONDS = 0.1
PRODUCERS = 2
CLIENTS = 8
LOAD_SECONDS = 0.3


def fd_count():
    return len(os.listdir("/proc/self/fd")) - 1


def make_loop():
    if KIND == "asyncio":
        return asyncio.SelectorEventLoop()
    import tideloop
    return tideloop.new_event_loop()


class Load:
    def __init__(self):
        self.c = {k: 0 for k in (
            "task_cancelled", "task_cleanup_done", "task_finished", "long_timer_fired",
            "short_timer_fired", "job_started", "job_finished", "threadsafe_issued",
            "threadsafe_ran", "free_job_finished", "echo_roundtrips", "client_cancelled",
            "handler_cancelled")}
        self.lock = threading.Lock()
        self.tasks = []
        self.long_timers = []
        self.producer_errors = []
        self.producers = []
        self.stop_producers = threading.Event()

    def count(self, key, n=1):
        with self.lock:
            self.c[key] += n

    def job(self, free=False):
        self.count("job_started")
        time.sleep(JOB_SECONDS)
        self.count("job_finished")
        if free:
            self.count("free_job_finished")
        return 1

    async def sleeper(self, i):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.count("task_cancelled")
            if i % 2:
                await asyncio.sleep(0)  # a clean-up step that itself awaits
                self.count("task_cleanup_done")
            raise
        self.count("task_finished")

    async def job_waiter(self, loop):
        await loop.run_in_executor(None, self.job)

    def short_timer(self, loop):
        self.count("short_timer_fired")
        loop.call_later(0.001, self.short_timer, loop)

    def produce(self, loop):
        def cb():
            self.count("threadsafe_ran")
        n = 0
        try:
            while not self.stop_producers.is_set():
                loop.call_soon_threadsafe(cb)
                n += 1
                if n % 64 == 0:
                    time.sleep(0.0005)  # let the loop thread have the GIL
        except Exception as e:  # the loop closed: the defined way to learn it
            self.producer_errors.append(f"{type(e).__name__}: {e}")
        self.count("threadsafe_issued", n)

    async def echo_handler(self, reader, writer):
        try:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        except asyncio.CancelledError:
            self.count("handler_cancelled")
            raise

    async def client(self, addr):
        r, w = await asyncio.open_connection(*addr)
        self.writers.append(w)
        try:
            while True:
                w.write(b"x" * 100)
                await r.readexactly(100)
                self.count("echo_roundtrips")
        except asyncio.CancelledError:
            self.count("client_cancelled")
            raise

    async def start(self, loop):
        self.writers = []
        for i in range(TASKS):
            self.tasks.append(loop.create_task(self.sleeper(i)))
        for _ in range(TIMERS):
            self.long_timers.append(loop.call_later(3600, self.count, "long_timer_fired"))
            loop.call_later(0.001, self.short_timer, loop)
        for _ in range(EXECUTOR_JOBS):
            self.tasks.append(loop.create_task(self.job_waiter(loop)))
        await asyncio.sleep(0)  # the waiters submit their jobs first
        for _ in range(FREE_JOBS):
            loop.run_in_executor(None, self.job, True)  # nobody awaits these
        self.server = await asyncio.start_server(self.echo_handler, "127.0.0.1", 0)
        addr = self.server.sockets[0].getsockname()
        for _ in range(CLIENTS):
            self.tasks.append(loop.create_task(self.client(addr)))
        for _ in range(PRODUCERS):
            t = threading.Thread(target=self.produce, args=(loop,))
            t.start()
            self.producers.append(t)
        await asyncio.sleep(LOAD_SECONDS)
        # On a slow machine (ASan, a loaded VM) give the load a moment more to get going.
        for _ in range(1000):
            if self.c["echo_roundtrips"] > 0 and self.c["threadsafe_ran"] > 0:
                break
            await asyncio.sleep(0.01)
        assert self.c["echo_roundtrips"] > 0 and self.c["threadsafe_ran"] > 0, self.c


def settle_jobs(load):
    """Waits (bounded) until no executor job ran for longer than a job takes (a queued job
    still to start would have started by then); returns how long it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < 20:
        with load.lock:
            before = load.c["job_started"]
        time.sleep(JOB_SECONDS * 3)
        with load.lock:
            if load.c["job_started"] == before == load.c["job_finished"]:
                break
    return time.monotonic() - t0


def main():
    warnings.simplefilter("always", ResourceWarning)
    fds_before = fd_count()
    threads_before = threading.active_count()
    load = Load()
    out = {}
    t0 = time.monotonic()
    caught = []
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        if SCENARIO == "run":
            async def main_coro():
                await load.start(asyncio.get_running_loop())
                return "main done"
            runner = asyncio.run if KIND == "asyncio" else __import__("tideloop").run
            out["run_returned"] = runner(main_coro())
            loop = None
        else:
            loop = make_loop()
            loop.run_until_complete(load.start(loop))
            loop.call_soon(loop.stop)
            loop.run_forever()
            loop.close()
        out["shutdown_seconds"] = round(time.monotonic() - t0 - LOAD_SECONDS, 3)
        out["counts_at_close"] = dict(load.c)
        # Producers keep going until call_soon_threadsafe raises.
        for t in load.producers:
            t.join(10)
        out["producers_alive"] = sum(t.is_alive() for t in load.producers)
        out["producer_errors"] = sorted(set(load.producer_errors))
        ran_at_join = load.c["threadsafe_ran"]
        out["jobs_settle_seconds"] = round(settle_jobs(load), 3)
        time.sleep(0.05)
        out["threadsafe_ran_after_close"] = load.c["threadsafe_ran"] - ran_at_join
        out["tasks_pending"] = sum(not t.done() for t in load.tasks)
        out["tasks_cancelled_state"] = sum(t.done() and t.cancelled() for t in load.tasks)
        out["long_timer_handles_cancelled"] = sum(h.cancelled() for h in load.long_timers)
        if loop is not None:
            out["call_soon_after_close"] = error_of(lambda: loop.call_soon(print))
            out["call_later_after_close"] = error_of(lambda: loop.call_later(1, print))
            out["run_after_close"] = error_of(lambda: loop.run_until_complete(asyncio.sleep(0)))
            out["threadsafe_after_close"] = error_of(lambda: loop.call_soon_threadsafe(print))
            out["executor_after_close"] = error_of(lambda: loop.run_in_executor(None, print))
            out["close_again"] = error_of(loop.close)
        out["fds_open_before_gc"] = fd_count() - fds_before
        writers = load.writers
        out["writers_closing"] = sum(wr.transport.is_closing() for wr in writers)
        del writers
        load.tasks = load.writers = load.server = load.long_timers = None
        loop = None
        # The tasks and transports left pending only go with their last reference.
        for _ in range(3):
            gc.collect()
        caught = [str(x.category.__name__) for x in w]
    out["fds_open_after_gc"] = fd_count() - fds_before
    out["threads_after"] = threading.active_count() - threads_before
    out["counts_final"] = dict(load.c)
    out["resource_warnings"] = caught.count("ResourceWarning")
    print(json.dumps(out))


def error_of(call):
    try:
        call()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


if __name__ == "__main__":
    KIND, SCENARIO = sys.argv[1], sys.argv[2]
    main()
