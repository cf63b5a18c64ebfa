"""loop.getaddrinfo / loop.getnameinfo: the same answers as the socket module, failures as
socket.gaierror, usable concurrently. Only names that resolve without DNS (localhost, numeric
addresses; AI_NUMERICHOST for the bad ones), so no test waits on a resolver."""

import asyncio
import socket

import pytest

from net_support import HAS_IPV6, run


def test_getaddrinfo_localhost_matches_the_socket_module(loop):
    async def body():
        for kwargs in ({}, {"type": socket.SOCK_STREAM}, {"family": socket.AF_INET},
                       {"type": socket.SOCK_DGRAM, "proto": socket.IPPROTO_UDP},
                       {"flags": socket.AI_PASSIVE}):
            got = await loop.getaddrinfo("localhost", 80, **kwargs)
            assert got == socket.getaddrinfo("localhost", 80, **kwargs), kwargs
            assert all(len(entry) == 5 for entry in got)

    run(loop, body())


def test_getaddrinfo_numeric_hosts_and_ports(loop):
    async def body():
        got = await loop.getaddrinfo("127.0.0.1", 8080, type=socket.SOCK_STREAM)
        assert got == [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                        ("127.0.0.1", 8080))]
        got = await loop.getaddrinfo("127.0.0.1", "8080", type=socket.SOCK_STREAM)
        assert got[0][4] == ("127.0.0.1", 8080)  # a port string is a port
        got = await loop.getaddrinfo("127.0.0.1", None, type=socket.SOCK_DGRAM)
        assert got[0][4] == ("127.0.0.1", 0)
        got = await loop.getaddrinfo(b"127.0.0.1", b"53", type=socket.SOCK_DGRAM)
        assert got[0][4] == ("127.0.0.1", 53)
        got = await loop.getaddrinfo(None, 80, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        assert got == socket.getaddrinfo(None, 80, type=socket.SOCK_STREAM,
                                         flags=socket.AI_PASSIVE)
        if HAS_IPV6:
            got = await loop.getaddrinfo("::1", 443, type=socket.SOCK_STREAM)
            assert got[0][0] == socket.AF_INET6 and got[0][4][:2] == ("::1", 443)

    run(loop, body())


def test_getaddrinfo_failures_are_gaierror(loop):
    async def body():
        with pytest.raises(socket.gaierror) as info:
            await loop.getaddrinfo("localhost", 80, flags=socket.AI_NUMERICHOST)
        assert info.value.errno == socket.EAI_NONAME
        with pytest.raises(socket.gaierror):
            await loop.getaddrinfo("999.1.1.1", 80, flags=socket.AI_NUMERICHOST)
        with pytest.raises(socket.gaierror):  # an unknown service name
            await loop.getaddrinfo("127.0.0.1", "no-such-service-tideloop",
                                   type=socket.SOCK_STREAM)

    run(loop, body())


def test_getaddrinfo_many_at_once(loop):
    async def body():
        calls = [loop.getaddrinfo("127.0.0.1", port, type=socket.SOCK_STREAM)
                 for port in range(1000, 1040)]
        results = await asyncio.gather(*calls)
        assert [r[0][4][1] for r in results] == list(range(1000, 1040))

    run(loop, body())


def test_getnameinfo(loop):
    async def body():
        flags = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
        assert await loop.getnameinfo(("127.0.0.1", 80), flags) == ("127.0.0.1", "80")
        assert await loop.getnameinfo(("127.0.0.1", 80)) == socket.getnameinfo(("127.0.0.1", 80),
                                                                                0)
        if HAS_IPV6:
            assert await loop.getnameinfo(("::1", 22), flags) == ("::1", "22")
        with pytest.raises(TypeError):
            await loop.getnameinfo(("127.0.0.1",))
        with pytest.raises(TypeError):
            await loop.getnameinfo("127.0.0.1")

    run(loop, body())
