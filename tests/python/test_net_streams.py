"""asyncio streams on the loop's transports: open_connection/start_server over TCP,
open_unix_connection/start_unix_server over a path and (Linux) an abstract name, readline,
readexactly, drain's flow control, large transfers both ways, half-close with write_eof."""

import asyncio
import os
import sys
import uuid

import pytest

from net_support import assert_same_bytes, payload, run


async def _close(writer):
    writer.close()
    await writer.wait_closed()


def test_tcp_readline_readexactly_and_eof(loop):
    async def handle(reader, writer):
        line = await reader.readline()
        writer.write(line.upper())
        writer.write(b"fixed!")
        writer.write(b"abc")  # then EOF: readexactly(5) on the client sees only 3 bytes
        await writer.drain()
        await _close(writer)

    async def body():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with server:
            host, port = server.sockets[0].getsockname()
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"hello\n")
            await writer.drain()
            assert await reader.readline() == b"HELLO\n"
            assert await reader.readexactly(6) == b"fixed!"
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await reader.readexactly(5)
            assert info.value.partial == b"abc" and info.value.expected == 5
            assert reader.at_eof()
            assert await reader.read() == b""
            await _close(writer)

    run(loop, body())


def test_writer_extra_info_matches_the_sockets(loop):
    async def body():
        seen = loop.create_future()

        async def handle(reader, writer):
            seen.set_result((writer.get_extra_info("peername"), writer.get_extra_info("sockname")))
            await _close(writer)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
            server_peer, server_name = await seen
            assert writer.get_extra_info("peername") == server_name
            assert writer.get_extra_info("sockname") == server_peer
            assert server_name == server.sockets[0].getsockname()
            await _close(writer)

    run(loop, body())


def test_large_transfer_both_directions_at_once(loop):
    """4 MiB each way at the same time: neither side can finish writing before the other
    reads, so this fails (times out) if reading and writing do not interleave."""
    size = 4 << 20
    up = payload(size, seed=1)
    down = payload(size, seed=2)

    async def handle(reader, writer):
        async def send():
            writer.write(down)
            await writer.drain()
        sender = asyncio.ensure_future(send())
        got = await reader.readexactly(size)
        await sender
        writer.write(b"ok" if got == up else b"bad")
        await writer.drain()
        await _close(writer)

    async def body():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
            for i in range(0, size, 1 << 20):  # several writes, each followed by a drain
                writer.write(up[i:i + (1 << 20)])
                await writer.drain()
            got = await reader.readexactly(size)
            assert_same_bytes(got, down)
            assert await reader.read() == b"ok"
            await _close(writer)

    run(loop, body())


def test_drain_waits_while_the_peer_does_not_read(loop):
    async def body():
        release = asyncio.Event()
        total = loop.create_future()

        async def handle(reader, writer):
            await release.wait()
            n = 0
            while True:
                chunk = await reader.read(1 << 20)
                if not chunk:
                    break
                n += len(chunk)
            total.set_result(n)
            await _close(writer)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
            writer.write(payload(16 << 20))
            draining = asyncio.ensure_future(writer.drain())
            await asyncio.sleep(0.05)
            assert not draining.done()  # above the high-water mark, the peer not reading
            assert writer.transport.get_write_buffer_size() > 0
            release.set()
            await draining
            writer.write_eof()
            assert await total == 16 << 20
            await _close(writer)

    run(loop, body())


def test_half_close_with_write_eof(loop):
    async def handle(reader, writer):
        request = await reader.read()  # until the client's EOF
        writer.write(b"got " + request)
        await writer.drain()
        await _close(writer)

    async def body():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
            assert writer.can_write_eof()
            writer.write(b"request")
            writer.write_eof()
            assert not writer.is_closing()  # only the write side is shut
            assert await reader.read() == b"got request"
            await _close(writer)

    run(loop, body())


def _echo_handler():
    async def handle(reader, writer):
        while True:
            line = await reader.readline()
            if not line:
                break
            writer.write(line)
            await writer.drain()
        await _close(writer)
    return handle


def test_unix_stream_on_a_path(loop, tmp_path):
    path = str(tmp_path / "sock")

    async def body():
        limit = 8 << 20  # readline of one 3 MiB line on both sides
        server = await asyncio.start_unix_server(_echo_handler(), path, limit=limit)
        async with server:
            assert server.sockets[0].getsockname() == path
            assert os.path.exists(path)
            reader, writer = await asyncio.open_unix_connection(path, limit=limit)
            assert writer.get_extra_info("peername") == path
            assert writer.can_write_eof()
            data = payload(3 << 20).replace(b"\n", b"_")  # one line
            writer.write(data + b"\n")
            await writer.drain()
            assert_same_bytes(await reader.readline(), data + b"\n")
            writer.write_eof()
            assert await reader.read() == b""
            await _close(writer)

    run(loop, body())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract names are Linux")
def test_unix_stream_on_an_abstract_name(loop):
    name = f"\0tideloop-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    async def body():
        server = await asyncio.start_unix_server(_echo_handler(), name)
        async with server:
            assert server.sockets[0].getsockname() == name.encode()  # reported as bytes
            reader, writer = await asyncio.open_unix_connection(name)
            assert writer.get_extra_info("peername") == name.encode()
            writer.write(b"abstract\n")
            assert await reader.readline() == b"abstract\n"
            await _close(writer)

    run(loop, body())


def test_open_unix_connection_to_a_missing_path(loop, tmp_path):
    async def body():
        with pytest.raises(FileNotFoundError):
            await asyncio.open_unix_connection(str(tmp_path / "nobody"))

    run(loop, body())


def test_many_concurrent_stream_clients(loop):
    async def body():
        server = await asyncio.start_server(_echo_handler(), "127.0.0.1", 0)
        async with server:
            addr = server.sockets[0].getsockname()

            async def client(i):
                reader, writer = await asyncio.open_connection(*addr)
                lines = [f"{i}-{k}\n".encode() for k in range(20)]
                writer.writelines(lines)
                got = [await reader.readline() for _ in lines]
                await _close(writer)
                return got == lines

            assert all(await asyncio.gather(*(client(i) for i in range(30))))

    run(loop, body())
