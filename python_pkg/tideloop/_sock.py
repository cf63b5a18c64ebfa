"""The sock_* coroutines of tideloop.Loop, over the C fast paths of bridge/handles/sock.cpp.

Each coroutine is one frame over one C method (``_sock_recv_now``...), which checks its
arguments, makes the syscall at once and returns its result when it completes; only when the
socket is not ready does it return a future, resolved by the loop when the fd becomes ready. A
coroutine that leaves before its future is resolved (cancelled, or closed) tells the loop with
``_sock_abandon``, so no registration outlives it.

Behaviour is asyncio's (``selector_events.BaseSelectorEventLoop``), with these differences:
  * the recv and send calls never block the loop, even on a blocking socket (which is accepted
    outside debug mode, as asyncio accepts it; in debug mode ValueError, as asyncio); accept and
    connect on a blocking socket block, as asyncio's do;
  * while a sock_* call waits on an fd, add_reader/add_writer or a transport on that fd raise
    RuntimeError (asyncio silently replaces the waiting call's callback, which then never ends).
sock_sendfile is asyncio's own code (tideloop/_net.py).
"""

import functools
import socket
from asyncio import base_events

__all__ = ("SockMethods",)

_bytes = bytes
_int = int
_tuple = tuple


class SockMethods:
    """Mixed into tideloop.Loop ahead of NetworkMethods."""

    async def sock_recv(self, sock, n):
        """Receive up to n bytes from the socket; b"" at end of stream."""
        r = self._sock_recv_now(sock, n)
        if type(r) is _bytes:
            return r
        try:
            return await r
        except BaseException:
            self._sock_abandon(sock, r)
            raise

    async def sock_recv_into(self, sock, buf):
        """Receive data into buf (a writable buffer); returns the number of bytes written."""
        r = self._sock_recv_into_now(sock, buf)
        if type(r) is _int:
            return r
        try:
            return await r
        except BaseException:
            self._sock_abandon(sock, r)
            raise

    async def sock_recvfrom(self, sock, bufsize):
        """Receive a datagram of up to bufsize bytes: (data, address)."""
        r = self._sock_recvfrom_now(sock, bufsize)
        if type(r) is _tuple:
            return r
        try:
            return await r
        except BaseException:
            self._sock_abandon(sock, r)
            raise

    async def sock_recvfrom_into(self, sock, buf, nbytes=0):
        """Receive a datagram into buf (at most nbytes, or len(buf)): (nbytes, address)."""
        r = self._sock_recvfrom_into_now(sock, buf, nbytes)
        if type(r) is _tuple:
            return r
        try:
            return await r
        except BaseException:
            self._sock_abandon(sock, r)
            raise

    async def sock_sendall(self, sock, data):
        """Send all of data; None once the kernel took the last byte."""
        r = self._sock_sendall_now(sock, data)
        if r is None:
            return None
        try:
            return await r
        except BaseException:
            self._sock_abandon(sock, r)
            raise

    async def sock_sendto(self, sock, data, address):
        """Send a datagram to address; returns the number of bytes sent."""
        r = self._sock_sendto_now(sock, data, address)
        if type(r) is _int:
            return r
        try:
            return await r
        except BaseException:
            self._sock_abandon(sock, r)
            raise

    async def sock_connect(self, sock, address):
        """Connect the socket to address (a host name is resolved first, for INET sockets)."""
        # asyncio's order: the socket checks, then the resolution, then the connection.
        base_events._check_ssl_socket(sock)
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        family = sock.family
        if family == socket.AF_INET or (base_events._HAS_IPv6 and family == socket.AF_INET6):
            resolved = await self._ensure_resolved(
                address, family=family, type=sock.type, proto=sock.proto, loop=self)
            address = resolved[0][4]
        r = self._sock_connect_now(sock, address)
        if r is None:
            return None
        try:
            return await r
        except BaseException:
            self._sock_abandon(sock, r)
            raise
        finally:
            r = None  # the exception's traceback would keep the future alive (asyncio does this)

    async def sock_accept(self, sock):
        """Accept a connection: (conn, address), conn non-blocking."""
        r = self._sock_accept_now(sock)
        if type(r) is _tuple:
            return r
        try:
            return await r
        except BaseException:
            self._sock_abandon(sock, r)
            raise

    def _sock_via_selector(self, fd, writer, callback, *args):
        """Waits the way asyncio does, with an _add_reader/_add_writer handle running asyncio's
        callback (``self._sock_recv``...): for an fd that already has an add_reader/add_writer
        handle, which asyncio replaces (its reader or writer only), and so does this."""
        fut = self.create_future()
        if writer:
            handle = self._add_writer(fd, callback, fut, *args)
            done = self._sock_write_done
        else:
            handle = self._add_reader(fd, callback, fut, *args)
            done = self._sock_read_done
        fut.add_done_callback(functools.partial(done, fd, handle=handle))
        return fut
