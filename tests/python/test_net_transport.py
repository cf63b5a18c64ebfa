"""The stream transport API from create_connection/create_server (and the unix variants):
write/writelines/write_eof/close, extra info, set_protocol, reading pause, write-buffer limits
and the protocol's pause_writing/resume_writing, BufferedProtocol, TCP_NODELAY, and the order
and arguments of the protocol callbacks."""

import asyncio
import socket

import pytest

from net_support import (Recorder, assert_same_bytes, connect_to_raw_peer, payload, raw_recv,
                         raw_recv_exactly, raw_recv_until_eof, run, until)


def test_write_and_writelines_reach_the_peer(loop):
    async def body():
        t, p, peer = await connect_to_raw_peer(loop, Recorder)
        with peer:
            t.write(b"a")
            t.write(bytearray(b"b"))
            t.write(memoryview(b"xcx")[1:2])
            t.writelines([b"d", bytearray(b"e"), memoryview(b"f")])
            t.write(b"")  # a no-op
            assert await raw_recv_exactly(peer, 6) == b"abcdef"
            with pytest.raises(TypeError):
                t.write("text")
            t.close()

    run(loop, body())


def test_write_eof_shuts_only_the_write_side(loop):
    async def body():
        t, p, peer = await connect_to_raw_peer(loop, Recorder)
        with peer:
            assert t.can_write_eof() is True
            t.write(b"last words")
            t.write_eof()
            t.write_eof()  # twice: a no-op
            assert not t.is_closing()
            assert await raw_recv_until_eof(peer) == b"last words"
            peer.send(b"still reading")  # the read side is open
            assert await p.wait_received(13) == b"still reading"
            with pytest.raises(RuntimeError):
                t.write(b"after eof")
            t.close()
            assert await p.lost is None

    run(loop, body())


def test_close_calls_connection_lost_later_not_inside_close(loop):
    async def body():
        t, p, peer = await connect_to_raw_peer(loop, Recorder)
        with peer:
            assert not t.is_closing()
            t.close()
            assert t.is_closing()
            assert not p.lost.done()  # connection_lost is scheduled, never called from close()
            t.close()  # twice: a no-op
            assert await p.lost is None
            assert p.events == ["made", "lost"]
            assert await raw_recv_until_eof(peer) == b""
            assert t.is_reading() is False

    run(loop, body())


def test_close_flushes_the_write_buffer_first(loop):
    data = payload(8 << 20)

    async def body():
        t, p, peer = await connect_to_raw_peer(loop, Recorder)
        with peer:
            t.write(data)
            assert t.get_write_buffer_size() > 0  # the peer has not read: data is queued
            t.close()
            assert t.is_closing()
            got = await raw_recv_until_eof(peer)
            assert_same_bytes(got, data)  # nothing dropped: close() is graceful
            assert await p.lost is None

    run(loop, body())


def test_get_extra_info(loop):
    async def body():
        t, p, peer = await connect_to_raw_peer(loop, Recorder)
        with peer:
            assert t.get_extra_info("peername") == peer.getsockname()
            assert t.get_extra_info("sockname") == peer.getpeername()
            sock = t.get_extra_info("socket")
            assert sock is not None
            assert sock.family == socket.AF_INET
            assert sock.type == socket.SOCK_STREAM
            assert sock.getsockname() == peer.getpeername()
            assert isinstance(sock.fileno(), int) and sock.fileno() >= 0
            assert t.get_extra_info("no such key") is None
            assert t.get_extra_info("no such key", "dflt") == "dflt"
            t.close()
            await p.lost

    run(loop, body())


def test_extra_info_socket_is_the_connected_socket(loop):
    """The 'socket' extra is a socket-like view of the very fd the transport uses."""
    async def body():
        a, b = socket.socketpair()
        with b:
            t, p = await loop.create_connection(Recorder, sock=a)
            sock = t.get_extra_info("socket")
            assert sock.fileno() == a.fileno()
            assert sock.family == socket.AF_UNIX
            t.close()
            await p.lost

    run(loop, body())


def test_tcp_nodelay_is_set_on_client_and_server_transports(loop):
    async def body():
        server_protocols = []

        def factory():
            server_protocols.append(Recorder())
            return server_protocols[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        async with server:
            t, p = await loop.create_connection(Recorder, *server.sockets[0].getsockname())
            await until(lambda: server_protocols and server_protocols[0].made.done())
            st = server_protocols[0].transport
            for transport in (t, st):
                s = transport.get_extra_info("socket")
                assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            t.close()
            await server_protocols[0].lost

    run(loop, body())


def test_set_protocol_redirects_callbacks(loop):
    async def body():
        t, first, peer = await connect_to_raw_peer(loop, Recorder)
        with peer:
            assert t.get_protocol() is first
            second = Recorder()
            t.set_protocol(second)
            assert t.get_protocol() is second
            peer.send(b"for the second")
            assert await second.wait_received(14) == b"for the second"
            assert first.received == b""
            peer.close()
            await second.lost
            assert first.events == ["made"]
            assert second.events[0] == "data"  # connection_made is not re-sent
            assert second.events[-2:] == ["eof", "lost"]

    run(loop, body())


def test_pause_reading_stops_data_received(loop):
    async def body():
        t, p, peer = await connect_to_raw_peer(loop, Recorder)
        with peer:
            assert t.is_reading() is True
            t.pause_reading()
            assert t.is_reading() is False
            t.pause_reading()  # twice: a no-op
            peer.send(b"held back")
            await asyncio.sleep(0.05)
            assert p.received == b""  # nothing while paused
            t.resume_reading()
            assert t.is_reading() is True
            t.resume_reading()  # twice: a no-op
            assert await p.wait_received(9) == b"held back"
            t.close()
            await p.lost

    run(loop, body())


def test_write_buffer_limits(loop):
    async def body():
        t, p, peer = await connect_to_raw_peer(loop, Recorder)
        with peer:
            assert t.get_write_buffer_limits() == (16 * 1024, 64 * 1024)  # (low, high)
            t.set_write_buffer_limits(high=10, low=2)
            assert t.get_write_buffer_limits() == (2, 10)
            t.set_write_buffer_limits(low=100)  # high defaults to 4 * low
            assert t.get_write_buffer_limits() == (100, 400)
            t.set_write_buffer_limits(high=100)  # low defaults to high // 4
            assert t.get_write_buffer_limits() == (25, 100)
            t.set_write_buffer_limits()
            assert t.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            with pytest.raises(ValueError):
                t.set_write_buffer_limits(high=1, low=2)
            with pytest.raises(ValueError):
                t.set_write_buffer_limits(high=-4)
            assert t.get_write_buffer_size() == 0
            t.close()
            await p.lost

    run(loop, body())


def test_pause_and_resume_writing_at_the_water_marks(loop):
    """A writer that stops on pause_writing keeps the transport's buffer near the high-water
    mark however slow the reader; resume_writing comes once the buffer is at or below low."""
    high, low, chunk = 64 * 1024, 16 * 1024, 16 * 1024
    total = 6 << 20

    class Writer(Recorder):
        def __init__(self):
            super().__init__()
            self.sizes_at_pause = []
            self.sizes_at_resume = []
            self.can_write = asyncio.Event()
            self.can_write.set()

        def pause_writing(self):
            super().pause_writing()
            self.sizes_at_pause.append(self.transport.get_write_buffer_size())
            self.can_write.clear()

        def resume_writing(self):
            super().resume_writing()
            self.sizes_at_resume.append(self.transport.get_write_buffer_size())
            self.can_write.set()

    async def body():
        t, p, peer = await connect_to_raw_peer(loop, Writer)
        with peer:
            t.set_write_buffer_limits(high=high, low=low)
            data = payload(total)
            biggest = 0

            async def produce():
                nonlocal biggest
                for i in range(0, total, chunk):
                    await p.can_write.wait()
                    t.write(data[i:i + chunk])
                    biggest = max(biggest, t.get_write_buffer_size())
                t.write_eof()

            async def slow_read():
                got = bytearray()
                while True:
                    part = await raw_recv(peer, 256 * 1024)
                    if not part:
                        return bytes(got)
                    got += part
                    await asyncio.sleep(0.002)  # slower than the writer

            producer = asyncio.ensure_future(produce())
            got = await slow_read()
            await producer
            assert_same_bytes(got, data)
            assert p.pauses >= 1 and p.resumes >= 1
            assert p.pauses - p.resumes in (0, 1)
            assert all(high < s <= high + chunk for s in p.sizes_at_pause), p.sizes_at_pause
            assert all(s <= low for s in p.sizes_at_resume), p.sizes_at_resume
            assert biggest <= high + chunk  # memory stays bounded
            t.close()
            await p.lost

    run(loop, body())


def test_buffered_protocol(loop):
    class Buffered(asyncio.BufferedProtocol):
        def __init__(self):
            self.events = []
            self.buf = bytearray(7)
            self.got = bytearray()
            self.hints = []
            self.lost = loop.create_future()

        def connection_made(self, transport):
            self.events.append("made")

        def get_buffer(self, sizehint):
            self.hints.append(sizehint)
            self.events.append("get_buffer")
            return self.buf

        def buffer_updated(self, nbytes):
            assert self.events[-1] == "get_buffer"  # always preceded by its get_buffer
            self.events.append("updated")
            assert 0 < nbytes <= len(self.buf)
            self.got += self.buf[:nbytes]

        def eof_received(self):
            self.events.append("eof")

        def connection_lost(self, exc):
            self.events.append("lost")
            self.lost.set_result(exc)

    async def body():
        t, p, peer = await connect_to_raw_peer(loop, Buffered)
        data = payload(1000)
        with peer:
            peer.sendall(data)
            peer.shutdown(socket.SHUT_WR)
            assert await p.lost is None  # eof_received returned None: the transport closed
        assert_same_bytes(p.got, data)
        assert all(isinstance(h, int) for h in p.hints)
        assert p.events[0] == "made" and p.events[-2:] == ["eof", "lost"]
        assert p.events.count("updated") >= len(data) // 7  # 7-byte buffer: many pieces

    run(loop, body())


def test_callback_order_and_arguments_client_side(loop):
    async def body():
        t, p, peer = await connect_to_raw_peer(loop, Recorder)
        assert await p.made is t  # connection_made got the transport create_connection returned
        peer.sendall(b"one")
        await p.wait_received(3)
        peer.sendall(b"two")
        await p.wait_received(6)
        peer.close()
        assert await p.lost is None
        assert p.compact_events() == ["made", "data", "eof", "lost"]
        assert p.received == b"onetwo"

    run(loop, body())


def test_callback_order_server_side(loop):
    async def body():
        protocols = []

        def factory():
            protocols.append(Recorder())
            return protocols[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        async with server:
            client = socket.create_connection(server.sockets[0].getsockname(), timeout=2)
            client.setblocking(False)
            with client:
                await until(lambda: protocols and protocols[0].made.done())
                sp = protocols[0]
                assert sp.transport.get_extra_info("peername") == client.getsockname()
                client.sendall(b"hello")
                await sp.wait_received(5)
                sp.transport.write(b"reply")
                assert await raw_recv_exactly(client, 5) == b"reply"
                client.shutdown(socket.SHUT_WR)
                assert await sp.lost is None
                assert sp.compact_events() == ["made", "data", "eof", "lost"]
                assert await raw_recv_until_eof(client) == b""  # eof_received None: closed

    run(loop, body())


def test_unix_transport_api(loop, tmp_path):
    path = str(tmp_path / "u")

    async def body():
        protocols = []

        def factory():
            protocols.append(Recorder(eof_result=True))
            return protocols[-1]

        server = await loop.create_unix_server(factory, path)
        async with server:
            t, p = await loop.create_unix_connection(Recorder, path)
            assert t.get_extra_info("peername") == path
            assert t.get_extra_info("socket").family == socket.AF_UNIX
            assert t.can_write_eof() is True
            t.write(b"over unix")
            t.write_eof()
            await until(lambda: protocols and protocols[0].eof.done())
            sp = protocols[0]
            assert sp.received == b"over unix"
            assert not sp.transport.is_closing()  # eof_received returned True: kept open
            sp.transport.write(b"answer")
            assert await p.wait_received(6) == b"answer"
            sp.transport.close()
            assert await p.lost is None
            assert await sp.lost is None

    run(loop, body())


def test_writes_of_one_callback_leave_before_the_next_iteration(loop):
    """What both loops guarantee about when written bytes leave: asyncio sends inside write();
    tideloop sends what a callback wrote when it returns to the loop, in one sendmsg (coalesced,
    docs/python-api.md). Either way, once the writer yielded for one iteration the bytes are in
    the peer's socket, in order, and get_write_buffer_size() never counts bytes the kernel
    would take."""

    async def body():
        t, p, peer = await connect_to_raw_peer(loop, Recorder)
        with peer:
            t.write(b"head ")
            t.writelines([b"bo", b"dy "])
            t.write(b"tail")
            assert t.get_write_buffer_size() == 0  # the kernel took it (both loops)
            await asyncio.sleep(0)
            peer.setblocking(False)
            assert peer.recv(100) == b"head body tail"
            t.close()
            await p.lost

    run(loop, body())
