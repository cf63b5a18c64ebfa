"""create_datagram_endpoint: local_addr, remote_addr, reuse_port, allow_broadcast, sock=,
AF_UNIX datagram sockets on a path; sendto, datagram_received, error_received, extra info,
close."""

import asyncio
import errno
import os
import socket
import sys

import pytest

from net_support import HAS_IPV6, raw_recvfrom, run, udp_socket, until, unused_udp_addr


class Datagrams(asyncio.DatagramProtocol):
    def __init__(self):
        loop = asyncio.get_running_loop()
        self.events = []
        self.datagrams = []
        self.errors = []
        self.transport = None
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport

    def datagram_received(self, data, addr):
        self.events.append("datagram")
        assert isinstance(data, bytes)
        self.datagrams.append((data, addr))

    def error_received(self, exc):
        self.events.append("error")
        self.errors.append(exc)

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)


async def _closed(transport, protocol):
    transport.close()
    return await protocol.lost


def test_local_addr_receive_and_reply(loop):
    peer = udp_socket()

    async def body():
        t, p = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
        assert p.events == ["made"] and p.transport is t
        addr = t.get_extra_info("sockname")
        assert addr[0] == "127.0.0.1" and addr[1] != 0
        assert t.get_extra_info("peername") is None  # not connected
        peer.sendto(b"ping", addr)
        await until(lambda: p.datagrams)
        assert p.datagrams == [(b"ping", peer.getsockname())]
        t.sendto(b"pong", peer.getsockname())
        assert await raw_recvfrom(peer) == (b"pong", addr)
        assert t.get_write_buffer_size() == 0
        assert await _closed(t, p) is None

    try:
        run(loop, body())
    finally:
        peer.close()


def test_datagram_boundaries_and_count_are_kept(loop):
    peer = udp_socket()

    async def body():
        t, p = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
        addr = t.get_extra_info("sockname")
        sent = [bytes([i]) * (i + 1) for i in range(40)]
        for d in sent:
            peer.sendto(d, addr)
        await until(lambda: len(p.datagrams) == len(sent))
        assert sorted(d for d, _ in p.datagrams) == sorted(sent)
        big = b"B" * 60000
        peer.sendto(big, addr)
        await until(lambda: len(p.datagrams) == len(sent) + 1)
        assert p.datagrams[-1][0] == big  # one datagram, whole
        await _closed(t, p)

    try:
        run(loop, body())
    finally:
        peer.close()


def test_remote_addr_connects_the_socket(loop):
    peer = udp_socket()

    async def body():
        t, p = await loop.create_datagram_endpoint(Datagrams, remote_addr=peer.getsockname())
        assert t.get_extra_info("peername") == peer.getsockname()
        t.sendto(b"no address needed")
        data, addr = await raw_recvfrom(peer)
        assert data == b"no address needed" and addr == t.get_extra_info("sockname")
        t.sendto(b"same address is fine", peer.getsockname())
        assert (await raw_recvfrom(peer))[0] == b"same address is fine"
        with pytest.raises(ValueError):  # another address on a connected endpoint
            t.sendto(b"x", ("127.0.0.1", 9))
        peer.sendto(b"reply", addr)
        await until(lambda: p.datagrams)
        assert p.datagrams[0][0] == b"reply"
        await _closed(t, p)

    try:
        run(loop, body())
    finally:
        peer.close()


def test_reuse_port(loop):
    async def body():
        t1, p1 = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0),
                                                     reuse_port=True)
        addr = t1.get_extra_info("sockname")
        t2, p2 = await loop.create_datagram_endpoint(Datagrams, local_addr=addr,
                                                     reuse_port=True)
        for t in (t1, t2):
            assert t.get_extra_info("socket").getsockopt(socket.SOL_SOCKET,
                                                         socket.SO_REUSEPORT) != 0
        with pytest.raises(OSError):
            await loop.create_datagram_endpoint(Datagrams, local_addr=addr)
        await _closed(t1, p1)
        await _closed(t2, p2)

    run(loop, body())


def test_allow_broadcast(loop):
    async def body():
        t1, p1 = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0),
                                                     allow_broadcast=True)
        t2, p2 = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
        opt = (socket.SOL_SOCKET, socket.SO_BROADCAST)
        assert t1.get_extra_info("socket").getsockopt(*opt) != 0
        assert t2.get_extra_info("socket").getsockopt(*opt) == 0
        await _closed(t1, p1)
        await _closed(t2, p2)

    run(loop, body())


def test_sock_argument(loop):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    peer = udp_socket()

    async def body():
        t, p = await loop.create_datagram_endpoint(Datagrams, sock=sock)
        assert sock.gettimeout() == 0  # made non-blocking
        s = t.get_extra_info("socket")
        assert s.fileno() == sock.fileno()
        assert s.family == socket.AF_INET and s.type == socket.SOCK_DGRAM
        assert t.get_extra_info("sockname") == sock.getsockname()
        peer.sendto(b"to the given sock", sock.getsockname())
        await until(lambda: p.datagrams)
        assert p.datagrams == [(b"to the given sock", peer.getsockname())]
        await _closed(t, p)

    try:
        run(loop, body())
    finally:
        peer.close()


@pytest.mark.skipif(not HAS_IPV6, reason="no ::1")
def test_ipv6_endpoint(loop):
    peer = udp_socket("::1", socket.AF_INET6)

    async def body():
        t, p = await loop.create_datagram_endpoint(Datagrams, local_addr=("::1", 0))
        assert t.get_extra_info("socket").family == socket.AF_INET6
        peer.sendto(b"six", t.get_extra_info("sockname"))
        await until(lambda: p.datagrams)
        assert p.datagrams[0][0] == b"six"
        assert p.datagrams[0][1][:2] == peer.getsockname()[:2]
        await _closed(t, p)

    try:
        run(loop, body())
    finally:
        peer.close()


def test_unix_datagram_endpoint_on_a_path(loop, tmp_path):
    path = str(tmp_path / "dgram")
    named = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    named.bind(str(tmp_path / "peer"))
    named.setblocking(False)
    anonymous = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    async def body():
        t, p = await loop.create_datagram_endpoint(Datagrams, local_addr=path,
                                                   family=socket.AF_UNIX)
        assert t.get_extra_info("sockname") == path
        assert t.get_extra_info("socket").family == socket.AF_UNIX
        named.sendto(b"from a bound peer", path)
        anonymous.sendto(b"from an unbound peer", path)
        await until(lambda: len(p.datagrams) == 2)
        assert sorted(p.datagrams, key=lambda d: d[0]) == [
            (b"from a bound peer", str(tmp_path / "peer")),
            (b"from an unbound peer", None),  # an unbound sender has no address
        ]
        t.sendto(b"reply", str(tmp_path / "peer"))
        assert (await raw_recvfrom(named))[0] == b"reply"
        await _closed(t, p)
        # the socket file is left behind; a new endpoint on the path replaces it
        assert os.path.exists(path)
        t, p = await loop.create_datagram_endpoint(Datagrams, local_addr=path,
                                                   family=socket.AF_UNIX)
        await _closed(t, p)

    try:
        run(loop, body())
    finally:
        named.close()
        anonymous.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ICMP errors are Linux")
def test_error_received_on_a_connected_endpoint_to_a_closed_port(loop):
    async def body():
        t, p = await loop.create_datagram_endpoint(Datagrams, remote_addr=unused_udp_addr())
        t.sendto(b"anyone?")
        await until(lambda: p.errors)
        exc = p.errors[0]
        assert isinstance(exc, ConnectionRefusedError) and exc.errno == errno.ECONNREFUSED
        assert not t.is_closing()  # an error does not close the endpoint
        assert "lost" not in p.events
        await _closed(t, p)

    run(loop, body())


def test_close_and_sendto_after_close(loop):
    """sendto after close on a connected endpoint is silently dropped. (On an unconnected one
    asyncio 3.11 fails with AttributeError from inside sendto, a CPython bug: not tested.)"""
    peer = udp_socket()

    async def body():
        t, p = await loop.create_datagram_endpoint(Datagrams, remote_addr=peer.getsockname())
        assert not t.is_closing()
        t.close()
        assert t.is_closing()
        assert not p.lost.done()  # connection_lost is scheduled, not called from close()
        t.close()  # twice: a no-op
        assert await p.lost is None
        assert p.events == ["made", "lost"]
        t.sendto(b"ignored")  # no exception after close
        await asyncio.sleep(0.02)
        with pytest.raises(BlockingIOError):
            peer.recv(100)  # and nothing was sent

    try:
        run(loop, body())
    finally:
        peer.close()


def test_abort(loop):
    async def body():
        t, p = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
        t.abort()
        assert t.is_closing()
        assert await p.lost is None

    run(loop, body())


def test_sendto_type_checks(loop):
    async def body():
        t, p = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
        with pytest.raises(TypeError):
            t.sendto("text", ("127.0.0.1", 9))
        t.sendto(bytearray(b"ok"), t.get_extra_info("sockname"))
        t.sendto(memoryview(b"ok"), t.get_extra_info("sockname"))
        await until(lambda: len(p.datagrams) == 2)
        await _closed(t, p)

    run(loop, body())
