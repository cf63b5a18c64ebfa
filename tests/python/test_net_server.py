"""create_connection's options, create_server's options, the Server object,
connect_accepted_socket and loop.sendfile on a TCP transport."""

import asyncio
import io
import select
import socket
import time

import pytest

from net_support import (HAS_IPV6, Recorder, assert_same_bytes, connect_to_raw_peer, listener,
                         payload, raw_accept, raw_recv_exactly, raw_recv_until_eof, run, until,
                         unused_tcp_port)


def _factory(into):
    def make():
        into.append(Recorder())
        return into[-1]
    return make


# --- create_connection ----------------------------------------------------------------------

def test_create_connection_with_a_connected_sock(loop):
    lsock = listener()
    client = socket.create_connection(lsock.getsockname(), timeout=2)
    peer, _ = lsock.accept()
    lsock.close()

    async def body():
        with peer:
            t, p = await loop.create_connection(Recorder, sock=client)
            assert client.gettimeout() == 0  # made non-blocking
            assert t.get_extra_info("socket").fileno() == client.fileno()
            assert t.get_extra_info("peername") == peer.getsockname()
            t.write(b"via sock=")
            # tideloop sends what a callback wrote when the callback returns to the loop
            # (coalesced, docs/python-api.md), asyncio inside write(): after one iteration
            # the bytes are on the wire on both.
            await asyncio.sleep(0)
            peer.settimeout(2)
            assert peer.recv(100) == b"via sock="
            t.close()
            await p.lost

    run(loop, body())


def test_create_connection_local_addr(loop):
    lsock = listener()
    port = unused_tcp_port()

    async def body():
        with lsock:
            t, p = await loop.create_connection(Recorder, *lsock.getsockname(),
                                                local_addr=("127.0.0.1", port))
            assert t.get_extra_info("sockname") == ("127.0.0.1", port)
            peer, addr = await raw_accept(lsock)
            peer.close()
            assert addr == ("127.0.0.1", port)
            t.close()
            await p.lost

    run(loop, body())


def test_create_connection_family(loop):
    lsock = listener()

    async def body():
        with lsock:
            port = lsock.getsockname()[1]
            t, p = await loop.create_connection(Recorder, "localhost", port,
                                                family=socket.AF_INET)
            assert t.get_extra_info("socket").family == socket.AF_INET
            assert t.get_extra_info("peername") == ("127.0.0.1", port)
            t.close()
            await p.lost

    run(loop, body())


@pytest.mark.skipif(not HAS_IPV6, reason="no ::1")
def test_create_connection_ipv6(loop):
    lsock = listener(socket.AF_INET6)

    async def body():
        with lsock:
            port = lsock.getsockname()[1]
            t, p = await loop.create_connection(Recorder, "::1", port, family=socket.AF_INET6)
            sock = t.get_extra_info("socket")
            assert sock.family == socket.AF_INET6
            assert t.get_extra_info("peername")[:2] == ("::1", port)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            t.close()
            await p.lost

    run(loop, body())


def test_create_connection_happy_eyeballs_and_interleave(loop):
    """Both are accepted; a name that may resolve to several addresses still connects."""
    lsock = listener()

    async def body():
        with lsock:
            port = lsock.getsockname()[1]
            for kwargs in ({"happy_eyeballs_delay": 0.25},
                           {"interleave": 1},
                           {"happy_eyeballs_delay": 0.1, "interleave": 2}):
                t, p = await loop.create_connection(Recorder, "localhost", port, **kwargs)
                assert t.get_extra_info("peername")[1] == port
                peer, _ = await raw_accept(lsock)
                peer.close()
                t.close()
                await p.lost

    run(loop, body())


def test_create_connection_and_server_accept_ssl_none(loop):
    async def body():
        protocols = []
        server = await loop.create_server(_factory(protocols), "127.0.0.1", 0, ssl=None)
        async with server:
            t, p = await loop.create_connection(Recorder, *server.sockets[0].getsockname(),
                                                ssl=None)
            t.write(b"plain")
            await until(lambda: protocols and len(protocols[0].received) == 5)
            t.close()
            await p.lost

    run(loop, body())


# --- create_server --------------------------------------------------------------------------

def test_create_server_several_hosts(loop):
    """A list of hosts: one listening socket per distinct resolved address (asyncio merges
    duplicates, so "127.0.0.1" and a "localhost" that resolves to it give one socket)."""
    hosts = ["127.0.0.1", "localhost"] + (["::1"] if HAS_IPV6 else [])
    expected = set()
    for h in hosts:
        for family, *_rest, addr in socket.getaddrinfo(h, 0, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE):
            expected.add((family, addr[0]))

    async def body():
        protocols = []
        server = await loop.create_server(_factory(protocols), hosts, 0)
        async with server:
            got = [(s.family, s.getsockname()[0]) for s in server.sockets]
            assert len(got) == len(expected)
            assert set(got) == expected
            for s in server.sockets:  # each one serves
                before = len(protocols)
                t, p = await loop.create_connection(Recorder, *s.getsockname()[:2])
                await until(lambda: len(protocols) == before + 1)
                t.close()
                await p.lost

    run(loop, body())


def test_create_server_reuse_address(loop):
    async def body():
        default = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        off = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, reuse_address=False)
        on = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, reuse_address=True)
        try:
            opt = (socket.SOL_SOCKET, socket.SO_REUSEADDR)
            assert default.sockets[0].getsockopt(*opt) != 0  # on by default on POSIX
            assert off.sockets[0].getsockopt(*opt) == 0
            assert on.sockets[0].getsockopt(*opt) != 0
        finally:
            for s in (default, off, on):
                s.close()

    run(loop, body())


def test_create_server_reuse_port(loop):
    async def body():
        first = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, reuse_port=True)
        port = first.sockets[0].getsockname()[1]
        second = await loop.create_server(asyncio.Protocol, "127.0.0.1", port, reuse_port=True)
        try:
            for s in (first, second):
                assert s.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
            with pytest.raises(OSError):  # without reuse_port the port is taken
                await loop.create_server(asyncio.Protocol, "127.0.0.1", port)
        finally:
            first.close()
            second.close()

    run(loop, body())


def test_create_server_backlog(loop):
    """listen(backlog) is what the server passes: with backlog=1 and nobody accepting, the
    kernel completes only backlog+1 handshakes; with the default (100) all of them."""
    def completed_handshakes(server, n):
        addr = server.sockets[0].getsockname()
        clients = []
        for _ in range(n):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(addr)
            clients.append(c)
        # the loop does not run during this sleep: nothing gets accepted meanwhile
        time.sleep(0.1)
        _, writable, _ = select.select([], clients, [], 0)
        done = sum(1 for c in writable if c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)
        for c in clients:
            c.close()
        return done

    async def body():
        small = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, backlog=1)
        try:
            assert 1 <= completed_handshakes(small, 5) <= 2
        finally:
            small.close()
        default = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        try:
            assert completed_handshakes(default, 5) == 5
        finally:
            default.close()
        await asyncio.sleep(0.01)

    run(loop, body())


def test_start_serving_false_then_start_serving(loop):
    async def body():
        protocols = []
        server = await loop.create_server(_factory(protocols), "127.0.0.1", 0,
                                          start_serving=False)
        async with server:
            s = server.sockets[0]
            assert server.is_serving() is False
            # asyncio binds at once but calls listen() only in start_serving()
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
            await server.start_serving()
            assert server.is_serving() is True
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 0
            await server.start_serving()  # again: a no-op
            t, p = await loop.create_connection(Recorder, *s.getsockname())
            await until(lambda: len(protocols) == 1)
            t.close()
            await p.lost

    run(loop, body())


def test_serve_forever_runs_until_cancelled_and_closes_the_server(loop):
    async def body():
        protocols = []
        server = await loop.create_server(_factory(protocols), "127.0.0.1", 0,
                                          start_serving=False)
        addr = server.sockets[0].getsockname()
        serving = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0.01)
        assert server.is_serving()
        with pytest.raises(RuntimeError):  # a second serve_forever on the same server
            await server.serve_forever()
        t, p = await loop.create_connection(Recorder, *addr)
        await until(lambda: len(protocols) == 1)
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert server.is_serving() is False
        assert server.sockets == ()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(Recorder, *addr)
        t.close()
        await p.lost

    run(loop, body())


def test_create_server_with_sock(loop):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))

    async def body():
        protocols = []
        server = await loop.create_server(_factory(protocols), sock=lsock)
        async with server:
            assert len(server.sockets) == 1
            assert server.sockets[0].fileno() == lsock.fileno()
            t, p = await loop.create_connection(Recorder, *lsock.getsockname())
            await until(lambda: len(protocols) == 1)
            t.close()
            await p.lost

    run(loop, body())


def test_server_object(loop):
    async def body():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        assert server.get_loop() is loop
        assert server.is_serving() is True
        socks = server.sockets
        assert isinstance(socks, tuple) and len(socks) == 1
        assert socks[0].family == socket.AF_INET and socks[0].type == socket.SOCK_STREAM
        assert socks[0].getsockname()[0] == "127.0.0.1"
        server.close()
        assert server.is_serving() is False
        assert server.sockets == ()
        await asyncio.wait_for(server.wait_closed(), 1)
        server.close()  # twice: a no-op

        async with await loop.create_server(asyncio.Protocol, "127.0.0.1", 0) as s2:
            assert s2.is_serving()
            addr = s2.sockets[0].getsockname()
        assert s2.is_serving() is False  # `async with` closed it
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, *addr)

    run(loop, body())


# --- connect_accepted_socket ----------------------------------------------------------------

def test_connect_accepted_socket(loop):
    lsock = listener()
    client = socket.create_connection(lsock.getsockname(), timeout=2)
    conn, _ = lsock.accept()
    lsock.close()

    async def body():
        client.setblocking(False)
        with client:
            t, p = await loop.connect_accepted_socket(Recorder, conn)
            assert await p.made is t
            assert conn.gettimeout() == 0
            assert t.get_extra_info("peername") == client.getsockname()
            client.sendall(b"to the accepted side")
            assert await p.wait_received(20) == b"to the accepted side"
            t.write(b"back")
            assert await raw_recv_exactly(client, 4) == b"back"
            t.close()
            assert await p.lost is None
            assert await raw_recv_until_eof(client) == b""

    run(loop, body())


def test_connect_accepted_socket_rejects_a_datagram_socket(loop):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    async def body():
        with pytest.raises(ValueError):
            await loop.connect_accepted_socket(asyncio.Protocol, udp)

    try:
        run(loop, body())
    finally:
        udp.close()


# --- loop.sendfile ----------------------------------------------------------------------------

def test_loop_sendfile_on_a_tcp_transport(loop, tmp_path):
    data = payload(3 << 20, seed=5)
    path = tmp_path / "f.bin"
    path.write_bytes(data)

    async def body():
        t, p, peer = await connect_to_raw_peer(loop, Recorder)
        with peer, open(path, "rb") as f:
            t.write(b"head:")
            reading = asyncio.ensure_future(raw_recv_exactly(peer, 5 + 2_000_000 + 5))
            assert await loop.sendfile(t, f, 100, 2_000_000) == 2_000_000
            assert f.tell() == 2_000_100
            t.write(b":tail")  # the transport works as before
            got = await reading
            assert_same_bytes(got, b"head:" + data[100:2_000_100] + b":tail")
            assert t.is_reading()  # reading resumed after the sendfile

            src = io.BytesIO(b"0123456789")  # no fileno: the fallback reads and writes it
            assert await loop.sendfile(t, src, 3, 4) == 4
            assert await raw_recv_exactly(peer, 4) == b"3456"
            with pytest.raises(asyncio.SendfileNotAvailableError):
                await loop.sendfile(t, io.BytesIO(b"x"), fallback=False)

            t.close()
            with pytest.raises(RuntimeError):  # "Transport is closing"
                await loop.sendfile(t, f)
            await p.lost

    run(loop, body())


def test_loop_sendfile_on_a_datagram_transport_is_unsupported(loop, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x")

    async def body():
        t, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                   local_addr=("127.0.0.1", 0))
        try:
            with open(path, "rb") as f, pytest.raises(RuntimeError):
                await loop.sendfile(t, f)
        finally:
            t.close()
            await asyncio.sleep(0)

    run(loop, body())
