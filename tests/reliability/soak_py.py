"""soak_py: a bounded mixed workload on tideloop's asyncio loop for a set time, checking that every
operation issued completed exactly once and that nothing leaks.

    /usr/bin/python3 tests/reliability/soak_py.py --seconds N [--loop tideloop|asyncio]
        [--build DIR] [--seed S] [--warmup SECONDS] [--progress SECONDS]

The package is imported from PYTHONPATH, or from <DIR>/python with --build DIR (default: the
repository's build/ when PYTHONPATH has no tideloop).

Lanes (each a coroutine or thread looping until the deadline with a bounded number of operations
in flight, so memory use is flat by construction):
  callback    bursts of 256 call_soon(cb, id); the burst's last callback wakes the lane
  timer       bursts of 32 call_later/call_at of 0..3 ms, half cancelled at once: a cancelled
              timer must never run, a live one never before its deadline
  task        4 lanes: a task asleep in sleep(3600) is cancelled after 0..2 ms (or before it
              first runs); its awaiter must see CancelledError and its except block ran once
  threadsafe  2 threads, call_soon_threadsafe(cb, id), at most 1,024 in flight each
  executor    bursts of 8 run_in_executor(None, f, id) (some sleep 100 us), values checked
  stream      2 persistent stream connections (start_server/open_connection), round trips
              of 1..32 KiB of seeded bytes compared byte for byte
  protocol    2 persistent create_connection/create_server Protocol connections, same checks
  sock        2 socketpairs, sock_sendall/sock_recv round trips of 1..64 KiB
  churn       2 lanes: open_connection, one 16-byte round trip, close (every other one by
              abort())
  accept      the server side of stream, protocol and churn: every accepted connection's
              handler (or protocol) must end

Every operation gets an id when issued (Ledger.issue) and reports it when it completes
(Ledger.complete): an id completed twice, or one never issued, is a violation at once; ids
still outstanding when every lane has ended were lost. Wrong values, early or cancelled timers
and missing cancellations are violations too. Every wait is bounded (OP_TIMEOUT), so a lost
wake-up ends as a counted violation, not a hang.

Baseline: after a warm-up phase (the same workload, default 3 s) every lane has ended (so no
executor job is queued or running), every server handler has ended, the loop waited idle once
and the garbage collector ran; fds, RSS and OS threads are read then. After the measured phase
the same quiescent point is reached and compared: fds must be equal; RSS at most RSS_DRIFT
above the baseline; OS threads at most the executor's bound above it. Exit code 1 on any
violation, 0 otherwise.

Measured on this 2-core VM (release build, 60 s, shared with other jobs): ~5 million operations
(~80k/s, three quarters of them call_soon_threadsafe and call_soon), RSS drift < 1 MiB, fds
equal. A good run prints every kind with lost 0 and ends in "OK".
"""

import argparse
import asyncio
import gc
import os
import pathlib
import random
import socket
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Why 8 MiB: pymalloc arenas and glibc's per-thread malloc arenas (executor and producer
# threads come and go) keep memory whose amount depends on which thread freed what last;
# measured drift is well under 1 MiB, while a leak of one 100-byte object per operation exceeds
# 8 MiB within seconds (tens of thousands of operations per second).
RSS_DRIFT = 8 << 20
# Any single wait; a correct loop needs microseconds to milliseconds.
OP_TIMEOUT = 10.0
# After the deadline, the lanes get this long to finish what they have in flight.
DRAIN_TIMEOUT = 30.0
POOL_THREADS = min(32, (os.cpu_count() or 1) + 4)
# Under AddressSanitizer freed memory sits in its quarantine (256 MiB by default): RSS grows by
# design, so the bound is reported but not enforced.
UNDER_ASAN = "asan" in os.environ.get("LD_PRELOAD", "")

KINDS = ("callback", "timer", "task", "threadsafe", "executor", "stream", "protocol", "sock",
         "churn", "accept")


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fd_count():
    return len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir opened


def fd_targets():
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass  # the directory's own fd, closed by now
    return out


def os_threads():
    return len(os.listdir("/proc/self/task"))


class Ledger:
    """Issued and completed operations of one kind; thread-safe (producers issue on their own
    threads). Outstanding ids are a set, so memory is bounded by the operations in flight."""

    def __init__(self, kind, violation):
        self.kind = kind
        self.violation = violation
        self.lock = threading.Lock()
        self.next_id = 0
        self.outstanding = set()
        self.issued = self.completed = 0

    def issue(self):
        with self.lock:
            i = self.next_id
            self.next_id += 1
            self.outstanding.add(i)
            self.issued += 1
            return i

    def complete(self, i):
        with self.lock:
            if i not in self.outstanding:
                self.violation(f"{self.kind}: id {i} completed twice or never issued")
                return
            self.outstanding.remove(i)
            self.completed += 1


class Soak:
    def __init__(self, loop, seed):
        self.loop = loop
        self.rng = random.Random(seed)
        self.violations = []
        self.ledgers = {k: Ledger(k, self.violation) for k in KINDS}
        self.deadline = 0.0
        self.stop_threads = threading.Event()

    def violation(self, text):
        if len(self.violations) < 1000:  # a systematic failure should not eat the memory
            self.violations.append(text)

    def running(self):
        return time.monotonic() < self.deadline

    async def bounded(self, aw, what):
        try:
            return await asyncio.wait_for(aw, OP_TIMEOUT)
        except asyncio.TimeoutError:
            self.violation(f"{what}: no result within {OP_TIMEOUT} s")
            raise

    # --- lanes -------------------------------------------------------------------------------

    async def lane_callback(self):
        led = self.ledgers["callback"]
        while self.running():
            done = self.loop.create_future()
            ids = [led.issue() for _ in range(256)]

            def cb(i, last):
                led.complete(i)
                if last:
                    done.set_result(None)

            for n, i in enumerate(ids):
                self.loop.call_soon(cb, i, n == len(ids) - 1)
            await self.bounded(done, "callback burst")

    async def lane_timer(self):
        led = self.ledgers["timer"]
        res = time.get_clock_info("monotonic").resolution
        while self.running():
            live = {}
            done = self.loop.create_future()

            def fire(i, when):
                if i not in live:
                    self.violation(f"timer {i} ran after cancel()")
                    return
                if self.loop.time() + res < when:
                    self.violation(f"timer {i} ran {when - self.loop.time():.6f} s early")
                del live[i]
                led.complete(i)
                if not live and not done.done():
                    done.set_result(None)

            for n in range(32):
                i = led.issue()
                delay = self.rng.random() * 0.003
                when = self.loop.time() + delay
                if n % 2:
                    h = self.loop.call_at(when, fire, i, when)
                else:
                    h = self.loop.call_later(delay, fire, i, when)
                if n % 4 < 2:
                    h.cancel()
                    led.complete(i)  # a cancel completes at once; fire() checks it never runs
                else:
                    live[i] = h
            await self.bounded(done, "timer burst")
            await asyncio.sleep(0.004)  # a cancelled one would have fired by now

    async def lane_task(self):
        led = self.ledgers["task"]
        caught = set()

        async def sleeper(i):
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if i in caught:
                    self.violation(f"task {i} saw CancelledError twice")
                caught.add(i)
                raise
            self.violation(f"task {i} woke from sleep(3600)")

        while self.running():
            i = led.issue()
            t = self.loop.create_task(sleeper(i))
            wait = self.rng.choice((None, 0.0, 0.001, 0.002))
            if wait is not None:
                await asyncio.sleep(wait)
            started = wait is not None
            t.cancel()
            try:
                await self.bounded(asyncio.shield(t), "cancelled task")
                self.violation(f"task {i} finished instead of being cancelled")
            except asyncio.CancelledError:
                if not t.cancelled():
                    raise  # this lane itself was cancelled
                if started and i not in caught:
                    self.violation(f"task {i}: cancelled without CancelledError at its await")
                caught.discard(i)
                led.complete(i)

    def producer(self, n):
        led = self.ledgers["threadsafe"]
        in_flight = threading.Semaphore(1024)

        def cb(i):
            led.complete(i)
            in_flight.release()

        while not self.stop_threads.is_set() and self.running():
            if not in_flight.acquire(timeout=OP_TIMEOUT):
                self.violation(f"threadsafe producer {n}: 1024 callbacks did not run in "
                               f"{OP_TIMEOUT} s")
                return
            i = led.issue()
            if i % 256 == 0:
                # Let the GIL go: a producer spinning on it would starve the loop thread (it
                # gets the GIL back only every switch interval, 5 ms) and the other lanes.
                time.sleep(0.001)
            try:
                self.loop.call_soon_threadsafe(cb, i)
            except RuntimeError as e:
                self.violation(f"threadsafe producer {n}: {e}")
                led.complete(i)
                return
        for _ in range(1024):  # wait until every callback of this producer ran
            if not in_flight.acquire(timeout=OP_TIMEOUT):
                self.violation(f"threadsafe producer {n}: callbacks lost at the end")
                return

    async def lane_threadsafe(self):
        threads = [threading.Thread(target=self.producer, args=(n,), daemon=True)
                   for n in range(2)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            await asyncio.sleep(0.01)

    async def lane_executor(self):
        led = self.ledgers["executor"]

        def job(i, nap):
            if nap:
                time.sleep(0.0001)
            return i * 2 + 1

        while self.running():
            ids = [led.issue() for _ in range(8)]
            futs = [self.loop.run_in_executor(None, job, i, i % 4 == 0) for i in ids]
            results = await self.bounded(asyncio.gather(*futs), "executor burst")
            for i, r in zip(ids, results):
                if r != i * 2 + 1:
                    self.violation(f"executor job {i} returned {r}")
                led.complete(i)

    def payload(self, lo, hi):
        return self.rng.randbytes(self.rng.randint(lo, hi))

    async def stream_handler(self, reader, writer):
        led = self.ledgers["accept"]
        i = led.issue()
        try:
            while True:
                header = await reader.read(4)
                if not header:
                    break
                header += await reader.readexactly(4 - len(header))
                n = int.from_bytes(header, "big")
                writer.write(await reader.readexactly(n))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the churn lane resets half of its connections
        finally:
            writer.close()
            led.complete(i)

    async def lane_stream(self, addr):
        led = self.ledgers["stream"]
        reader, writer = await self.bounded(asyncio.open_connection(*addr), "stream connect")
        try:
            while self.running():
                i = led.issue()
                data = self.payload(1, 32 << 10)
                writer.write(len(data).to_bytes(4, "big") + data)
                got = await self.bounded(reader.readexactly(len(data)), "stream round trip")
                if got != data:
                    self.violation(f"stream round trip {i}: bytes differ")
                led.complete(i)
        finally:
            writer.close()
            await writer.wait_closed()

    async def lane_protocol(self, addr):
        led = self.ledgers["protocol"]
        soak = self

        class Client(asyncio.Protocol):
            def __init__(self):
                self.buf = bytearray()
                self.want = 0
                self.waiter = None
                self.lost = soak.loop.create_future()

            def data_received(self, data):
                self.buf += data
                if self.waiter and len(self.buf) >= self.want and not self.waiter.done():
                    self.waiter.set_result(None)

            def connection_lost(self, exc):
                self.lost.set_result(exc)

        transport, proto = await self.bounded(
            self.loop.create_connection(Client, *addr), "protocol connect")
        try:
            while self.running():
                i = led.issue()
                data = self.payload(1, 32 << 10)
                proto.want, proto.waiter = len(data), self.loop.create_future()
                transport.write(len(data).to_bytes(4, "big") + data)
                await self.bounded(proto.waiter, "protocol round trip")
                if bytes(proto.buf) != data:
                    self.violation(f"protocol round trip {i}: bytes differ")
                proto.buf.clear()
                led.complete(i)
        finally:
            transport.close()
            await self.bounded(proto.lost, "protocol connection_lost")

    async def lane_sock(self):
        led = self.ledgers["sock"]
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        try:
            while self.running():
                i = led.issue()
                data = self.payload(1, 64 << 10)
                send = self.loop.create_task(self.loop.sock_sendall(a, data))
                got = bytearray()
                while len(got) < len(data):
                    chunk = await self.bounded(self.loop.sock_recv(b, 1 << 16), "sock_recv")
                    if not chunk:
                        break
                    got += chunk
                await self.bounded(send, "sock_sendall")
                if got != data:
                    self.violation(f"sock round trip {i}: bytes differ")
                led.complete(i)
        finally:
            a.close()
            b.close()

    async def lane_churn(self, addr):
        led = self.ledgers["churn"]
        n = 0
        while self.running():
            i = led.issue()
            reader, writer = await self.bounded(asyncio.open_connection(*addr), "churn connect")
            data = self.payload(16, 16)
            writer.write(len(data).to_bytes(4, "big") + data)
            got = await self.bounded(reader.readexactly(16), "churn round trip")
            if got != data:
                self.violation(f"churn {i}: bytes differ")
            n += 1
            if n % 2:
                writer.transport.abort()
            else:
                writer.close()
            await self.bounded(writer.wait_closed(), "churn close")
            led.complete(i)

    # --- a phase ------------------------------------------------------------------------------

    async def phase(self, seconds):
        """Runs every lane for `seconds`, then waits until each has ended and every server
        handler has ended."""
        self.deadline = time.monotonic() + seconds
        self.stop_threads.clear()
        proto_handlers = []
        soak = self

        class Server(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport
                self.id = soak.ledgers["accept"].issue()
                self.buf = bytearray()
                proto_handlers.append(self)

            def data_received(self, data):
                self.buf += data
                while len(self.buf) >= 4:
                    n = int.from_bytes(self.buf[:4], "big")
                    if len(self.buf) < 4 + n:
                        break
                    self.transport.write(bytes(self.buf[4:4 + n]))
                    del self.buf[:4 + n]

            def connection_lost(self, exc):
                soak.ledgers["accept"].complete(self.id)

        stream_server = await asyncio.start_server(self.stream_handler, "127.0.0.1", 0)
        proto_server = await self.loop.create_server(Server, "127.0.0.1", 0)
        saddr = stream_server.sockets[0].getsockname()
        paddr = proto_server.sockets[0].getsockname()
        lanes = [self.lane_callback(), self.lane_timer(), self.lane_threadsafe(),
                 self.lane_executor()]
        # The lanes that wait between steps run several at once, so their kinds get a share of
        # the loop comparable to the others'.
        lanes += [self.lane_task() for _ in range(4)]
        lanes += [self.lane_sock() for _ in range(2)]
        lanes += [self.lane_churn(saddr) for _ in range(2)]
        lanes += [self.lane_stream(saddr) for _ in range(2)]
        lanes += [self.lane_protocol(paddr) for _ in range(2)]
        tasks = [self.loop.create_task(c) for c in lanes]
        reporter = self.loop.create_task(self.report_progress())
        done, pending = await asyncio.wait(tasks, timeout=seconds + DRAIN_TIMEOUT)
        reporter.cancel()
        self.stop_threads.set()
        for t in pending:
            self.violation(f"lane {t.get_coro().__name__} did not end {DRAIN_TIMEOUT} s after "
                           f"the deadline")
            t.cancel()
        for t in done:
            if t.exception() is not None and not isinstance(t.exception(),
                                                            asyncio.TimeoutError):
                self.violation(f"lane {t.get_coro().__name__} raised {t.exception()!r}")
        await asyncio.gather(*pending, reporter, return_exceptions=True)
        stream_server.close()
        proto_server.close()
        await stream_server.wait_closed()
        await proto_server.wait_closed()
        # the server side of every connection must end on its own
        accept = self.ledgers["accept"]
        end = time.monotonic() + DRAIN_TIMEOUT
        while accept.outstanding and time.monotonic() < end:
            await asyncio.sleep(0.01)

    def counts(self):
        return {k: self.ledgers[k].completed for k in KINDS}

    async def report_progress(self):
        start = time.monotonic()
        last, last_t = self.counts(), start
        while True:
            await asyncio.sleep(self.progress)
            now, t = self.counts(), time.monotonic()
            rates = " ".join(f"{k} {(now[k] - last[k]) / (t - last_t):.0f}" for k in KINDS)
            print(f"[{t - start:6.1f} s] ops/s: {rates}; rss {rss() >> 20} MiB, "
                  f"fds {fd_count()}, violations {len(self.violations)}", flush=True)
            last, last_t = now, t


def quiescent_snapshot():
    for _ in range(3):
        gc.collect()
    time.sleep(0.05)
    return {"rss": rss(), "fds": fd_count(), "threads": os_threads(), "fd_targets": fd_targets()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--loop", choices=("tideloop", "asyncio"), default="tideloop")
    ap.add_argument("--build", help="build directory (its python/ holds the tideloop package)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--progress", type=float, default=5.0, help="seconds between progress lines")
    args = ap.parse_args()
    if args.build:
        sys.path.insert(0, str(pathlib.Path(args.build).resolve() / "python"))
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    print(f"soak_py: --loop {args.loop} --seconds {args.seconds} --seed {seed} "
          f"--warmup {args.warmup}", flush=True)
    if args.loop == "tideloop":
        try:
            import tideloop
        except ImportError:
            sys.path.insert(0, str(ROOT / "build" / "python"))
            import tideloop
        print(f"tideloop from {pathlib.Path(tideloop.__file__).parent}", flush=True)
        loop = tideloop.new_event_loop()
    else:
        loop = asyncio.SelectorEventLoop()
    asyncio.set_event_loop(loop)
    soak = Soak(loop, seed)
    soak.progress = args.progress

    t0 = time.monotonic()
    loop.run_until_complete(soak.phase(args.warmup))
    # An idle wait: tideloop creates its signal wake-up socket pair on the first tick that
    # blocks, which a warm-up under constant load may never reach.
    loop.run_until_complete(asyncio.sleep(0.05))
    base = quiescent_snapshot()
    warm_counts = soak.counts()
    print(f"baseline after {time.monotonic() - t0:.1f} s warm-up: rss {base['rss'] >> 10} KiB, "
          f"fds {base['fds']}, threads {base['threads']}", flush=True)
    t1 = time.monotonic()
    loop.run_until_complete(soak.phase(args.seconds))
    elapsed = time.monotonic() - t1
    loop.run_until_complete(asyncio.sleep(0.05))
    end = quiescent_snapshot()

    print("\nissued/completed: the whole run (warm-up included); ops/s: the measured phase")
    print(f"{'kind':<11} {'issued':>11} {'completed':>11} {'lost':>6} {'ops/s':>9}")
    total = 0
    for k in KINDS:
        led = soak.ledgers[k]
        measured = led.completed - warm_counts[k]
        total += measured
        print(f"{k:<11} {led.issued:>11} {led.completed:>11} {len(led.outstanding):>6} "
              f"{measured / elapsed:>9.0f}")
        if led.outstanding:
            soak.violation(f"{k}: {len(led.outstanding)} issued operations never completed "
                           f"(e.g. {sorted(led.outstanding)[:5]})")
        if led.issued != led.completed + len(led.outstanding):
            soak.violation(f"{k}: issued {led.issued} != completed {led.completed} + "
                           f"outstanding {len(led.outstanding)}")
        if measured <= 0:
            soak.violation(f"{k}: no operation completed in the measured phase")
    print(f"{'total':<11} {'':>11} {total:>11} {'':>6} {total / elapsed:>9.0f}  "
          f"(measured phase, {elapsed:.1f} s)")
    drift = end["rss"] - base["rss"]
    print(f"rss {base['rss'] >> 10} -> {end['rss'] >> 10} KiB (drift {drift / 1024:+.0f} KiB, "
          f"bound {RSS_DRIFT >> 10} KiB); fds {base['fds']} -> {end['fds']} (must be equal); "
          f"os threads {base['threads']} -> {end['threads']} (bound +{POOL_THREADS})")
    if drift > RSS_DRIFT and not UNDER_ASAN:
        soak.violation(f"rss grew by {drift >> 10} KiB (bound {RSS_DRIFT >> 10} KiB)")
    if end["fds"] != base["fds"]:
        b, e = base["fd_targets"], end["fd_targets"]
        soak.violation(f"fds {base['fds']} -> {end['fds']}: opened "
                       f"{ {fd: e[fd] for fd in e if b.get(fd) != e[fd]} }, closed "
                       f"{ {fd: b[fd] for fd in b if e.get(fd) != b[fd]} }")
    if end["threads"] > base["threads"] + POOL_THREADS:
        soak.violation(f"os threads {base['threads']} -> {end['threads']}")
    loop.run_until_complete(loop.shutdown_default_executor())
    loop.close()
    asyncio.set_event_loop(None)
    if soak.violations:
        print(f"\nFAIL: {len(soak.violations)} violations (replay: --seed {seed}; the "
              f"interleavings differ between runs, the sizes and delays do not)")
        for v in soak.violations[:50]:
            print("  " + v)
        return 1
    print("\nOK: every operation completed exactly once; fds equal, rss within bound")
    return 0


if __name__ == "__main__":
    sys.exit(main())
