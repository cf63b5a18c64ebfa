"""loop.sock_*: coroutines on non-blocking sockets the caller owns (recv, recv_into, recvfrom,
recvfrom_into, sendall, sendto, connect, accept, sendfile), their cancellation and the
blocking-socket check."""

import asyncio
import errno
import io
import socket

import pytest

from net_support import (HAS_IPV6, assert_same_bytes, payload, run, udp_socket,
                         unused_tcp_port)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def tcp_listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    s.setblocking(False)
    yield s
    s.close()


def test_sock_recv_waits_then_returns_data_and_eof(loop, pair):
    a, b = pair

    async def body():
        pending = loop.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0.02)
        assert not pending.done()  # nothing sent yet: it waits
        b.send(b"hello")
        assert await pending == b"hello"
        b.send(b"abc")
        assert await loop.sock_recv(a, 2) == b"ab"  # at most n bytes
        assert await loop.sock_recv(a, 100) == b"c"
        b.shutdown(socket.SHUT_WR)
        assert await loop.sock_recv(a, 100) == b""

    run(loop, body())


def test_sock_recv_into_fills_the_buffer(loop, pair):
    a, b = pair

    async def body():
        buf = bytearray(8)
        pending = loop.create_task(loop.sock_recv_into(a, buf))
        await asyncio.sleep(0.02)
        assert not pending.done()
        b.send(b"0123456789")
        assert await pending == 8
        assert buf == b"01234567"
        view = memoryview(buf)[2:5]
        assert await loop.sock_recv_into(a, view) == 2
        assert buf == b"0189" + b"4567"

    run(loop, body())


def test_sock_recvfrom_and_recvfrom_into(loop):
    r = udp_socket()
    s = udp_socket()
    try:
        async def body():
            pending = loop.create_task(loop.sock_recvfrom(r, 100))
            await asyncio.sleep(0.02)
            assert not pending.done()
            s.sendto(b"datagram-1", r.getsockname())
            data, addr = await pending
            assert (data, addr) == (b"datagram-1", s.getsockname())

            buf = bytearray(16)
            s.sendto(b"datagram-2", r.getsockname())
            n, addr = await loop.sock_recvfrom_into(r, buf)
            assert (n, addr) == (10, s.getsockname())
            assert buf[:10] == b"datagram-2"

            s.sendto(b"truncated!", r.getsockname())
            n, addr = await loop.sock_recvfrom_into(r, buf, 3)  # nbytes: at most 3 bytes
            assert n == 3 and buf[:3] == b"tru"

        run(loop, body())
    finally:
        r.close()
        s.close()


def test_sock_sendto_returns_bytes_sent(loop):
    r = udp_socket()
    s = udp_socket()
    try:
        async def body():
            assert await loop.sock_sendto(s, b"abc", r.getsockname()) == 3
            data, addr = await loop.sock_recvfrom(r, 100)
            assert (data, addr) == (b"abc", s.getsockname())

        run(loop, body())
    finally:
        r.close()
        s.close()


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_sock_sendall_large_payload_needs_several_sends(loop, pair, kind):
    a, b = pair
    data = payload(8 << 20)
    assert len(data) > 4 * a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)

    async def body():
        sending = loop.create_task(loop.sock_sendall(a, kind(data)))
        await asyncio.sleep(0.02)
        assert not sending.done()  # the kernel buffer is full and nobody reads: it waits
        got = bytearray()
        while len(got) < len(data):
            chunk = await loop.sock_recv(b, 1 << 20)
            assert chunk
            got += chunk
        assert await sending is None
        assert_same_bytes(got, data)

    run(loop, body())


def test_sock_connect_and_accept_tcp(loop, tcp_listener):
    async def body():
        accepting = loop.create_task(loop.sock_accept(tcp_listener))
        await asyncio.sleep(0.02)
        assert not accepting.done()  # no client yet: it waits
        client = socket.socket()
        client.setblocking(False)
        try:
            assert await loop.sock_connect(client, tcp_listener.getsockname()) is None
            conn, addr = await accepting
            with conn:
                assert addr == client.getsockname()
                assert conn.gettimeout() == 0  # the accepted socket is non-blocking
                await loop.sock_sendall(client, b"ping")
                assert await loop.sock_recv(conn, 10) == b"ping"
                await loop.sock_sendall(conn, b"pong")
                assert await loop.sock_recv(client, 10) == b"pong"
        finally:
            client.close()

    run(loop, body())


def test_sock_connect_resolves_a_host_name(loop, tcp_listener):
    """asyncio resolves ("localhost", port) with the socket's family, type and proto."""
    port = tcp_listener.getsockname()[1]

    async def body():
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setblocking(False)
        try:
            await loop.sock_connect(client, ("localhost", port))
            assert client.getpeername() == ("127.0.0.1", port)
        finally:
            client.close()

    run(loop, body())


@pytest.mark.skipif(not HAS_IPV6, reason="no ::1")
def test_sock_connect_ipv6(loop):
    lsock = socket.socket(socket.AF_INET6)
    lsock.bind(("::1", 0))
    lsock.listen(1)
    lsock.setblocking(False)

    async def body():
        client = socket.socket(socket.AF_INET6)
        client.setblocking(False)
        try:
            await loop.sock_connect(client, lsock.getsockname()[:2])
            conn, _ = await loop.sock_accept(lsock)
            conn.close()
            assert client.getpeername()[:2] == lsock.getsockname()[:2]
        finally:
            client.close()

    try:
        run(loop, body())
    finally:
        lsock.close()


def test_sock_connect_refused(loop):
    port = unused_tcp_port()

    async def body():
        client = socket.socket()
        client.setblocking(False)
        try:
            with pytest.raises(ConnectionRefusedError) as info:
                await loop.sock_connect(client, ("127.0.0.1", port))
            assert info.value.errno == errno.ECONNREFUSED
            assert loop.remove_writer(client) is False  # nothing left registered
        finally:
            client.close()

    run(loop, body())


def test_sock_connect_and_accept_unix(loop, tmp_path):
    path = str(tmp_path / "s")
    lsock = socket.socket(socket.AF_UNIX)
    lsock.bind(path)
    lsock.listen(1)
    lsock.setblocking(False)

    async def body():
        client = socket.socket(socket.AF_UNIX)
        client.setblocking(False)
        try:
            await loop.sock_connect(client, path)
            conn, _ = await loop.sock_accept(lsock)
            with conn:
                await loop.sock_sendall(conn, b"over unix")
                assert await loop.sock_recv(client, 100) == b"over unix"
        finally:
            client.close()
        missing = socket.socket(socket.AF_UNIX)
        missing.setblocking(False)
        try:
            with pytest.raises(FileNotFoundError):
                await loop.sock_connect(missing, str(tmp_path / "nobody-here"))
        finally:
            missing.close()

    try:
        run(loop, body())
    finally:
        lsock.close()


# --- sock_sendfile --------------------------------------------------------------------------

def _collect(loop, sock, n):
    async def reader():
        got = bytearray()
        while len(got) < n:
            chunk = await loop.sock_recv(sock, 1 << 20)
            if not chunk:
                break
            got += chunk
        return bytes(got)
    return loop.create_task(reader())


def test_sock_sendfile_regular_file_with_offset_and_count(loop, pair, tmp_path):
    a, b = pair
    data = payload(2 << 20, seed=3)
    path = tmp_path / "data.bin"
    path.write_bytes(data)

    async def body():
        with open(path, "rb") as f:
            reading = _collect(loop, b, 1_000_000)
            assert await loop.sock_sendfile(a, f, 1000, 1_000_000) == 1_000_000
            assert_same_bytes(await reading, data[1000:1_001_000])
            assert f.tell() == 1_001_000  # the file position ends after what was sent

            rest = len(data) - 1_500_000
            reading = _collect(loop, b, rest)
            assert await loop.sock_sendfile(a, f, 1_500_000) == rest  # count=None: to EOF
            assert_same_bytes(await reading, data[1_500_000:])
            assert f.tell() == len(data)

    run(loop, body())


def test_sock_sendfile_empty_file_sends_nothing(loop, pair, tmp_path):
    a, _ = pair
    path = tmp_path / "empty"
    path.write_bytes(b"")

    async def body():
        with open(path, "rb") as f:
            assert await loop.sock_sendfile(a, f) == 0

    run(loop, body())


def test_sock_sendfile_falls_back_when_the_file_has_no_fd(loop, pair):
    """A file object without fileno() cannot go through sendfile(2): asyncio reads and sends it
    (fallback=True, the default) or raises SendfileNotAvailableError (fallback=False)."""
    a, b = pair

    async def body():
        src = io.BytesIO(b"0123456789")
        reading = _collect(loop, b, 4)
        assert await loop.sock_sendfile(a, src, 2, 4) == 4
        assert await reading == b"2345"
        assert src.tell() == 6

        with pytest.raises(asyncio.SendfileNotAvailableError):
            await loop.sock_sendfile(a, io.BytesIO(b"x"), fallback=False)
        assert issubclass(asyncio.SendfileNotAvailableError, RuntimeError)

    run(loop, body())


def test_sock_sendfile_over_a_unix_socket(loop, pair, tmp_path):
    a, b = pair
    path = tmp_path / "f"
    path.write_bytes(b"unix-stream-sendfile")

    async def body():
        with open(path, "rb") as f:
            reading = _collect(loop, b, 20)
            assert await loop.sock_sendfile(a, f) == 20
            assert await reading == b"unix-stream-sendfile"

    run(loop, body())


@pytest.mark.parametrize("case,exc", [
    ("text-mode file", ValueError),
    ("datagram socket", ValueError),
    ("negative offset", ValueError),
    ("zero count", ValueError),
    ("str offset", TypeError),
    ("float count", TypeError),
])
def test_sock_sendfile_bad_arguments(loop, pair, tmp_path, case, exc):
    a, _ = pair
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    udp = udp_socket()

    async def body():
        with open(path, "rb") as f, open(path, "r") as text:
            call = {
                "text-mode file": lambda: loop.sock_sendfile(a, text),
                "datagram socket": lambda: loop.sock_sendfile(udp, f),
                "negative offset": lambda: loop.sock_sendfile(a, f, -1),
                "zero count": lambda: loop.sock_sendfile(a, f, 0, 0),
                "str offset": lambda: loop.sock_sendfile(a, f, "1"),
                "float count": lambda: loop.sock_sendfile(a, f, 0, 1.5),
            }[case]
            with pytest.raises(exc):
                await call()

    try:
        run(loop, body())
    finally:
        udp.close()


# --- blocking sockets -----------------------------------------------------------------------

BLOCKING_CALLS = {
    "sock_recv": lambda loop, s, f: loop.sock_recv(s, 1),
    "sock_recv_into": lambda loop, s, f: loop.sock_recv_into(s, bytearray(1)),
    "sock_recvfrom": lambda loop, s, f: loop.sock_recvfrom(s, 1),
    "sock_recvfrom_into": lambda loop, s, f: loop.sock_recvfrom_into(s, bytearray(1)),
    "sock_sendall": lambda loop, s, f: loop.sock_sendall(s, b"x"),
    "sock_sendto": lambda loop, s, f: loop.sock_sendto(s, b"x", ("127.0.0.1", 9)),
    "sock_connect": lambda loop, s, f: loop.sock_connect(s, ("127.0.0.1", 9)),
    "sock_accept": lambda loop, s, f: loop.sock_accept(s),
    "sock_sendfile": lambda loop, s, f: loop.sock_sendfile(s, f),
}


@pytest.mark.parametrize("name", list(BLOCKING_CALLS))
def test_blocking_socket_rejected_in_debug_mode(loop, tmp_path, name):
    """asyncio 3.11 checks `sock.gettimeout() != 0` only when the loop is in debug mode:
    ValueError("the socket must be non-blocking"), raised before any I/O."""
    path = tmp_path / "f"
    path.write_bytes(b"x")
    kind = socket.SOCK_DGRAM if name in ("sock_recvfrom", "sock_recvfrom_into",
                                         "sock_sendto") else socket.SOCK_STREAM
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    if name == "sock_accept":
        s.listen(1)
    assert s.gettimeout() is None  # blocking
    loop.set_debug(True)

    async def body():
        with open(path, "rb") as f, pytest.raises(ValueError, match="non-blocking"):
            await BLOCKING_CALLS[name](loop, s, f)

    try:
        run(loop, body())
    finally:
        s.close()


def test_blocking_socket_not_checked_without_debug(loop, pair):
    """Without debug mode asyncio does not check: a blocking socket whose data is already there
    is simply read (code in the wild relies on this)."""
    a, b = pair
    a.setblocking(True)
    b.send(b"ready")

    async def body():
        assert await loop.sock_recv(a, 10) == b"ready"
        await loop.sock_sendall(a, b"back")
        assert await loop.sock_recv(b, 10) == b"back"

    run(loop, body())


# --- cancellation ---------------------------------------------------------------------------

def test_cancelled_sock_recv_leaves_the_fd_usable(loop, pair):
    a, b = pair

    async def body():
        pending = loop.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0.02)
        pending.cancel()
        b.send(b"kept")  # arrives while the cancellation is being processed
        with pytest.raises(asyncio.CancelledError):
            await pending
        await asyncio.sleep(0.02)
        assert loop.remove_reader(a) is False  # no reader left behind
        # the cancelled call consumed nothing: the bytes are there for the next one
        assert await asyncio.wait_for(loop.sock_recv(a, 100), 1) == b"kept"
        b.send(b"again")
        assert await asyncio.wait_for(loop.sock_recv(a, 100), 1) == b"again"

    run(loop, body())


def test_cancelled_sock_recv_into_and_recvfrom(loop, pair):
    a, b = pair
    r = udp_socket()
    s = udp_socket()

    async def body():
        for make in (lambda: loop.sock_recv_into(a, bytearray(10)),
                     lambda: loop.sock_recvfrom(r, 10)):
            t = loop.create_task(make())
            await asyncio.sleep(0.01)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
        await asyncio.sleep(0.01)
        assert loop.remove_reader(a) is False
        assert loop.remove_reader(r) is False
        b.send(b"x")
        s.sendto(b"y", r.getsockname())
        buf = bytearray(10)
        assert await loop.sock_recv_into(a, buf) == 1 and buf[:1] == b"x"
        assert (await loop.sock_recvfrom(r, 10))[0] == b"y"

    try:
        run(loop, body())
    finally:
        r.close()
        s.close()


def test_cancelled_sock_sendall_removes_its_writer(loop, pair):
    a, b = pair

    async def body():
        sending = loop.create_task(loop.sock_sendall(a, payload(8 << 20)))
        await asyncio.sleep(0.02)
        assert not sending.done()
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        await asyncio.sleep(0.01)
        assert loop.remove_writer(a) is False

    run(loop, body())


def test_cancelled_sock_accept_then_accept_again(loop, tcp_listener):
    async def body():
        t = loop.create_task(loop.sock_accept(tcp_listener))
        await asyncio.sleep(0.01)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await asyncio.sleep(0.01)
        assert loop.remove_reader(tcp_listener) is False
        client = socket.create_connection(tcp_listener.getsockname(), timeout=2)
        try:
            conn, addr = await asyncio.wait_for(loop.sock_accept(tcp_listener), 1)
            conn.close()
            assert addr == client.getsockname()
        finally:
            client.close()

    run(loop, body())


def test_sock_call_on_a_transports_fd_raises_runtime_error(loop, pair):
    """An fd owned by a transport may not be used by sock_* (asyncio: RuntimeError
    "File descriptor ... is used by transport ...") when the call would have to wait."""
    a, b = pair

    async def body():
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        try:
            with pytest.raises(RuntimeError, match="used by transport"):
                await loop.sock_recv(a, 10)
        finally:
            transport.close()
            await asyncio.sleep(0)

    run(loop, body())
