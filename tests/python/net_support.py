"""Shared pieces of the network parity tests (tests/python/test_net_*.py).

Every test body is a coroutine run with `run(loop, body())`: the whole body is bounded by
asyncio.wait_for, so a loop that never delivers an event fails the test instead of hanging it.
The "raw" helpers drive plain non-blocking sockets by polling with asyncio.sleep, so a test of
one feature (say, transports) does not also depend on another (the sock_* coroutines).
"""

import asyncio
import os
import socket
import struct

# The budget of one test body. Correct loops finish every body in well under a second; this is
# the time a broken loop gets before the test fails.
BODY_TIMEOUT = 5.0

# How often the raw helpers poll a non-blocking socket.
POLL_INTERVAL = 0.001


def run(loop, coro, timeout=BODY_TIMEOUT):
    """Run coro on loop, failing with TimeoutError after timeout seconds."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def open_fd_count():
    """Number of fds this process has open (Linux: /proc/self/fd)."""
    return len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir opened


def _can_bind(family, addr):
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind(addr)
        return True
    except OSError:
        return False


HAS_IPV6 = socket.has_ipv6 and _can_bind(socket.AF_INET6, ("::1", 0))


def listener(family=socket.AF_INET, host=None):
    """A listening blocking TCP socket on a loopback port the kernel picked."""
    host = host or ("::1" if family == socket.AF_INET6 else "127.0.0.1")
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    s.listen(16)
    s.settimeout(BODY_TIMEOUT)  # a blocking accept never waits forever
    return s


def unused_tcp_port(host="127.0.0.1"):
    """A port nothing listens on (bound, then released): connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def unused_udp_addr(host="127.0.0.1"):
    """A UDP address nothing is bound to: datagrams to it draw ICMP port unreachable."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()


def udp_socket(host="127.0.0.1", family=socket.AF_INET):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.setblocking(False)
    return s


def reset_close(sock):
    """Close sock with SO_LINGER 0: the peer gets a RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# A prime-sized block, so a payload built from it is not periodic at any power-of-two stride:
# a lost, repeated or reordered chunk changes the bytes.
_BLOCK = bytes((i * 7 + (i >> 8) * 13) & 0xFF for i in range(65521))


def payload(n, seed=0):
    """n deterministic bytes (seed shifts the start, so two payloads differ)."""
    start = seed % len(_BLOCK)
    reps = (n + start) // len(_BLOCK) + 1
    return (_BLOCK * reps)[start:start + n]


async def raw_recv(sock, n, timeout=BODY_TIMEOUT):
    """Read up to n bytes from a non-blocking socket, waiting until at least one arrives
    (b"" at EOF)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return sock.recv(n)
        except (BlockingIOError, InterruptedError):
            pass
        if loop.time() > deadline:
            raise TimeoutError("raw_recv: nothing arrived")
        await asyncio.sleep(POLL_INTERVAL)


async def raw_recv_exactly(sock, n, timeout=BODY_TIMEOUT, chunk=1 << 18):
    """Read exactly n bytes (fewer only if EOF comes first) from a non-blocking socket."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    parts = []
    got = 0
    while got < n:
        try:
            data = sock.recv(min(chunk, n - got))
        except (BlockingIOError, InterruptedError):
            if loop.time() > deadline:
                raise TimeoutError(f"raw_recv_exactly: {got} of {n} bytes") from None
            await asyncio.sleep(POLL_INTERVAL)
            continue
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


async def raw_recv_until_eof(sock, timeout=BODY_TIMEOUT, chunk=1 << 18):
    """Everything a non-blocking socket receives until EOF (a reset counts as EOF)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    parts = []
    while True:
        try:
            data = sock.recv(chunk)
        except (BlockingIOError, InterruptedError):
            if loop.time() > deadline:
                raise TimeoutError("raw_recv_until_eof: no EOF") from None
            await asyncio.sleep(POLL_INTERVAL)
            continue
        except ConnectionResetError:
            break
        if not data:
            break
        parts.append(data)
    return b"".join(parts)


async def raw_accept(lsock, timeout=BODY_TIMEOUT):
    """Accept one connection on a listening socket without blocking the loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    lsock.setblocking(False)
    while True:
        try:
            conn, addr = lsock.accept()
            conn.setblocking(False)
            return conn, addr
        except (BlockingIOError, InterruptedError):
            if loop.time() > deadline:
                raise TimeoutError("raw_accept: no connection") from None
            await asyncio.sleep(POLL_INTERVAL)


async def raw_recvfrom(sock, n=65536, timeout=BODY_TIMEOUT):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return sock.recvfrom(n)
        except (BlockingIOError, InterruptedError):
            if loop.time() > deadline:
                raise TimeoutError("raw_recvfrom: no datagram") from None
            await asyncio.sleep(POLL_INTERVAL)


async def until(predicate, timeout=BODY_TIMEOUT):
    """Yield to the loop until predicate() is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("condition never became true")
        await asyncio.sleep(POLL_INTERVAL)


async def connect_to_raw_peer(loop, protocol_factory, family=socket.AF_INET, **kwargs):
    """create_connection to a raw listening socket; returns (transport, protocol, peer) where
    peer is the accepted non-blocking socket the test drives by hand."""
    lsock = listener(family)
    try:
        host, port = lsock.getsockname()[:2]
        transport, protocol = await loop.create_connection(protocol_factory, host, port, **kwargs)
        peer, _ = await raw_accept(lsock)
    finally:
        lsock.close()
    return transport, protocol, peer


class ExceptionLog:
    """Installed as the loop's exception handler: keeps every context it is given."""

    def __init__(self, loop):
        self.contexts = []
        loop.set_exception_handler(self._handle)

    def _handle(self, loop, context):
        self.contexts.append(context)

    def exceptions(self):
        return [c.get("exception") for c in self.contexts]


class Recorder(asyncio.Protocol):
    """A stream protocol that records each callback and its arguments, in order.

    eof_result is what eof_received returns; futures made/eof/lost complete when the
    callback runs; received holds every byte from data_received.
    """

    def __init__(self, eof_result=None):
        loop = asyncio.get_running_loop()
        self.events = []
        self.received = bytearray()
        self.transport = None
        self.eof_result = eof_result
        self.made = loop.create_future()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self.pauses = 0
        self.resumes = 0

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport
        if not self.made.done():
            self.made.set_result(transport)

    def data_received(self, data):
        self.events.append("data")
        assert isinstance(data, bytes), type(data)
        self.received += data

    def eof_received(self):
        self.events.append("eof")
        if not self.eof.done():
            self.eof.set_result(None)
        return self.eof_result

    def connection_lost(self, exc):
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)

    def pause_writing(self):
        self.events.append("pause")
        self.pauses += 1

    def resume_writing(self):
        self.events.append("resume")
        self.resumes += 1

    def compact_events(self):
        """events with runs of "data" merged into one."""
        out = []
        for e in self.events:
            if e == "data" and out and out[-1] == "data":
                continue
            out.append(e)
        return out

    async def wait_received(self, n, timeout=BODY_TIMEOUT):
        await until(lambda: len(self.received) >= n, timeout)
        return bytes(self.received)


def assert_same_bytes(got, expected):
    """got == expected for MiB-sized payloads, failing with a one-line message (pytest's own
    diff of two large bytes objects can take minutes)."""
    got, expected = bytes(got), bytes(expected)
    if got == expected:
        return
    n = min(len(got), len(expected))
    step = 4096
    first = n
    for i in range(0, n, step):
        end = min(i + step, n)
        if got[i:end] != expected[i:end]:
            first = next(j for j in range(i, end) if got[j] != expected[j])
            break
    raise AssertionError(f"{len(got)} bytes received, {len(expected)} expected; "
                         f"first difference at offset {first}")
