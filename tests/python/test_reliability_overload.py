"""Overload: an echo server (loop.create_server) in a child process whose RLIMIT_NOFILE is NOFILE
(reliability_overload_server.py), under more connections than the limit allows and under a
client thread that opens and drops connections as fast as it can for FLOOD_SECONDS.

Checked, on asyncio's loop and on tideloop's:
- the server reaches the limit (its fd count is within LIMIT_SLACK of NOFILE, and EMFILE
  reaches its exception handler) while connections are still waiting in its backlog;
- connections accepted before the overload keep being served: every echo round trip on them
  during the flood succeeds (each bounded by ROUNDTRIP_TIMEOUT, a hang bound, not a latency
  target), and there is at least one per connection;
- when the load stops (flood over, the held connections closed) new connections are accepted
  and served;
- the server never crashes or hangs (alive throughout, exits 0 when told to, no exception
  handler call other than EMFILE), and its fd count returns exactly to the baseline measured
  after a warm-up connection.

FLOOD_SECONDS scales with TIDELOOP_RELIABILITY_SCALE; TIDELOOP_OVERLOAD_SECONDS overrides it.
"""

import errno
import json
import os
import pathlib
import select
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from conftest import subprocess_env

HERE = pathlib.Path(__file__).resolve().parent
SCALE = float(os.environ.get("TIDELOOP_RELIABILITY_SCALE", "1.0"))
FLOOD_SECONDS = float(os.environ.get("TIDELOOP_OVERLOAD_SECONDS", max(0.5, 3.0 * SCALE)))

NOFILE = 64
HELD = 2 * NOFILE  # opened and left open: twice what the server may accept
ESTABLISHED = 8  # accepted before the overload, round trips throughout
FRESH = 16  # opened after the load stops
LIMIT_SLACK = 4  # fds the server cannot use for connections at the limit (the limit itself
#                  counts fd numbers; a few may be free while accept() fails on the next one)
ROUNDTRIP_TIMEOUT = 10.0
DEADLINE = 20.0  # for the server to reach the limit, recover, return to its baseline


def server_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def stable_fds(pid, settle=0.2):
    """The server's fd count once it has stayed the same for `settle` seconds."""
    deadline = time.monotonic() + DEADLINE
    last, since = server_fds(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = server_fds(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle:
            return now
    raise AssertionError(f"the server's fd count never settled (last {last})")


def wait_for(predicate, timeout=DEADLINE, interval=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def roundtrip(sock, i):
    msg = b"%08d" % i
    sock.sendall(msg)
    got = b""
    while len(got) < len(msg):
        chunk = sock.recv(len(msg) - len(got))
        if not chunk:
            raise ConnectionError("EOF from the server")
        got += chunk
    if got != msg:
        raise AssertionError((got, msg))


def connect(addr):
    s = socket.create_connection(addr, timeout=ROUNDTRIP_TIMEOUT)
    s.settimeout(ROUNDTRIP_TIMEOUT)
    return s


class Flood(threading.Thread):
    """Opens and drops connections as fast as it can: half closed with a FIN, half reset."""

    def __init__(self, addr, seconds):
        super().__init__(daemon=True)
        self.addr, self.seconds = addr, seconds
        self.attempts = self.connected = 0

    def run(self):
        end = time.monotonic() + self.seconds
        linger = struct.pack("ii", 1, 0)
        while time.monotonic() < end:
            s = socket.socket()
            s.setblocking(False)
            self.attempts += 1
            if s.connect_ex(self.addr) in (0, errno.EINPROGRESS):
                _, w, _ = select.select([], [s], [], 0.02)
                if w and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    self.connected += 1
            if self.attempts % 2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            s.close()


@pytest.fixture
def server(loop_kind):
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "reliability_overload_server.py"), loop_kind, str(NOFILE)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=subprocess_env())
    try:
        ready, _, _ = select.select([proc.stdout], [], [], DEADLINE)
        assert ready, "server did not start"
        line = proc.stdout.readline()
        assert line.startswith("PORT "), (line, proc.stderr.read() if proc.poll() else "")
        yield proc, ("127.0.0.1", int(line.split()[1]))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def flood_while_serving(proc, addr, established, seconds):
    flood = Flood(addr, seconds)
    flood.start()
    served = [0] * len(established)
    n = 0
    while flood.is_alive():
        for i, s in enumerate(established):
            roundtrip(s, n)  # raises (fails the test) on a timeout, EOF or wrong bytes
            served[i] += 1
            n += 1
    flood.join()
    assert proc.poll() is None, proc.stderr.read()
    assert min(served) >= 1, served
    return {"attempts": flood.attempts, "connected": flood.connected, "round_trips": n}


def test_overload_keeps_serving_and_recovers(server, loop_kind):
    proc, addr = server
    warm = connect(addr)
    roundtrip(warm, 0)
    warm.close()
    base = stable_fds(proc.pid)  # once the server closed its side of the warm-up connection

    established = [connect(addr) for _ in range(ESTABLISHED)]
    for i, s in enumerate(established):
        roundtrip(s, i)

    held = []
    for _ in range(HELD):  # the kernel completes these into the backlog; not waited for
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(addr)
        held.append(s)
    peak = wait_for(lambda: server_fds(proc.pid) if server_fds(proc.pid) >= NOFILE - LIMIT_SLACK
                    else 0)
    assert peak, f"the server never reached its fd limit: {server_fds(proc.pid)} fds"

    # The flood, first while the server is at its limit (its connects wait in or are dropped
    # from the full backlog), then with the held connections closed (it is accepted and dropped
    # at full speed); the established connections are served throughout.
    starved = flood_while_serving(proc, addr, established, FLOOD_SECONDS / 2)
    for s in held:
        s.close()
    churn = flood_while_serving(proc, addr, established, FLOOD_SECONDS / 2)

    fresh_ok = 0
    for i in range(FRESH):
        s = connect(addr)
        roundtrip(s, i)
        s.close()
        fresh_ok += 1
    for i, s in enumerate(established):  # and the old ones still work
        roundtrip(s, i)
        s.close()

    end_fds = wait_for(lambda: server_fds(proc.pid) == base and base)
    assert proc.poll() is None, proc.stderr.read()
    out, err = proc.communicate(timeout=DEADLINE)  # closes its stdin: the server's signal to stop
    assert proc.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    print(f"{loop_kind}: base {base} fds, peak {peak} (limit {NOFILE}), flood "
          f"at the limit {starved}, then {churn} ({FLOOD_SECONDS / 2} s each; round trips on the "
          f"{ESTABLISHED} established connections), {fresh_ok} fresh served; "
          f"server: {report}")
    assert end_fds, f"server fds did not return to {base}: {server_fds(proc.pid)}"
    assert report["unexpected"] == [], report
    assert report["emfile_reports"] >= 1, report
    assert report["open_at_end"] == 0, report
