"""The network half of tideloop.Loop: sockets, transports, servers, datagrams.

The primitives are C++ (bridge/handles/): ``StreamTransport`` for TCP and Unix stream sockets,
``DatagramTransport`` for UDP and Unix datagram sockets, and the ``sock_*`` fast paths, all
driven from the loop's tick with no thread hop. What composes them (resolving addresses, happy
eyeballs, ``create_server``'s socket set-up, the ``Server`` object, accepting connections,
Unix paths, sendfile's fallback, TLS through ``asyncio.sslproto``) is asyncio's own code, taken
from its classes as plain functions: it only calls the loop's public surface and the private
hooks defined here (``_make_socket_transport``, ``_add_reader``...), so its behaviour, its
argument checks and its exception classes are asyncio's by construction.
"""

import errno
import socket
from asyncio import base_events, constants, selector_events, sslproto, trsock, unix_events
from asyncio.log import logger

from . import _tideloop

__all__ = ("NetworkMethods",)

_Base = base_events.BaseEventLoop
_Selector = selector_events.BaseSelectorEventLoop
_Unix = unix_events._UnixSelectorEventLoop

# accept() failures that mean "out of a resource", not "this connection failed".
_ACCEPT_RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class NetworkMethods:
    """Mixed into tideloop.Loop ahead of asyncio.AbstractEventLoop."""

    # --- composed from asyncio (only the loop's public surface and the hooks below) --------
    create_connection = _Base.create_connection
    _create_connection_transport = _Base._create_connection_transport
    _ensure_resolved = _Base._ensure_resolved
    _connect_sock = _Base._connect_sock
    create_server = _Base.create_server
    _create_server_getaddrinfo = _Base._create_server_getaddrinfo
    connect_accepted_socket = _Base.connect_accepted_socket
    create_datagram_endpoint = _Base.create_datagram_endpoint
    sendfile = _Base.sendfile
    _sendfile_fallback = _Base._sendfile_fallback
    sock_sendfile = _Base.sock_sendfile
    _sock_sendfile_fallback = _Base._sock_sendfile_fallback
    _check_sendfile_params = _Base._check_sendfile_params
    start_tls = _Base.start_tls
    create_unix_connection = _Unix.create_unix_connection
    create_unix_server = _Unix.create_unix_server
    _sock_sendfile_native = _Unix._sock_sendfile_native
    _sock_sendfile_native_impl = _Unix._sock_sendfile_native_impl
    _sock_add_cancellation_callback = _Unix._sock_add_cancellation_callback
    _sock_sendfile_update_filepos = _Unix._sock_sendfile_update_filepos
    # Accepting connections: add_reader on the listening socket, accept up to `backlog` per
    # readiness, EMFILE pauses accepting for ACCEPT_RETRY_DELAY (asyncio's rules). The accept
    # loop itself is ours (below).
    _accept_connection2 = _Selector._accept_connection2
    _stop_serving = _Selector._stop_serving

    def _start_serving(self, protocol_factory, sock, sslcontext=None, server=None, backlog=100,
                       ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
                       ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT):
        fd = sock.fileno()
        if fd == -1:
            # The server was closed while accepting was paused after EMFILE: the retry has
            # nothing to resume (3.11 reported add_reader(-1)'s ValueError here).
            return
        self._add_reader(fd, self._accept_connection, protocol_factory, sock, sslcontext,
                         server, backlog, ssl_handshake_timeout, ssl_shutdown_timeout)

    def _accept_connection(self, protocol_factory, sock, sslcontext=None, server=None,
                           backlog=100, ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
                           ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT):
        # Called once per readiness of the listening socket; accepts what is queued, at most
        # `backlog` connections. Python 3.11's version of this loop has two bugs that later
        # CPython releases fix (gh-127529, gh-151615), and this one has the fixed behaviour:
        # - an aborted connection (ECONNABORTED) skips to the next one instead of ending
        #   the batch;
        # - out of descriptors or memory, it reports once, stops accepting for
        #   ACCEPT_RETRY_DELAY and returns. 3.11 kept looping: each of the up to `backlog`
        #   further accept() calls failed again, reached the exception handler and scheduled
        #   another retry, so a server at its fd limit called the handler thousands of times
        #   a second (docs/reliability.md, "Overload").
        for _ in range(backlog):
            try:
                conn, addr = sock.accept()
                conn.setblocking(False)
            except ConnectionAbortedError:
                continue
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in _ACCEPT_RESOURCE_ERRNOS:
                    raise  # the loop reports it to the exception handler and goes on
                self.call_exception_handler({
                    "message": "socket.accept() out of system resource",
                    "exception": exc,
                    "socket": trsock.TransportSocket(sock),
                })
                fd = sock.fileno()
                if fd != -1:  # the handler may have closed the server
                    self._remove_reader(fd)
                self.call_later(constants.ACCEPT_RETRY_DELAY, self._start_serving,
                                protocol_factory, sock, sslcontext, server, backlog,
                                ssl_handshake_timeout, ssl_shutdown_timeout)
                return
            else:
                if self._debug:
                    logger.debug("%r got a new connection from %r: %r", server, addr, conn)
                self.create_task(self._accept_connection2(
                    protocol_factory, conn, {"peername": addr}, sslcontext, server,
                    ssl_handshake_timeout, ssl_shutdown_timeout))

    # --- hooks asyncio's code calls ---------------------------------------------------------

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        return _tideloop.StreamTransport(self, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(self, rawsock, protocol, sslcontext, waiter=None, *,
                            server_side=False, server_hostname=None, extra=None, server=None,
                            ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
                            ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT):
        # asyncio's TLS state machine over our stream transport (a C++ TLS transport is the
        # next issue's work).
        ssl_protocol = sslproto.SSLProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)
        _tideloop.StreamTransport(self, rawsock, ssl_protocol, None, extra, server)
        return ssl_protocol._app_transport

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        return _tideloop.DatagramTransport(self, sock, protocol, address, waiter, extra)

    async def _sendfile_native(self, transp, file, offset, count):
        # The transport lends its socket to sock_sendfile (which watches the fd itself) once
        # its write buffer is empty, and takes it back afterwards.
        resume_reading = transp.is_reading()
        transp.pause_reading()
        await transp._make_empty_waiter()
        transp._lend_fd()
        try:
            return await self.sock_sendfile(transp._sock, file, offset, count, fallback=False)
        finally:
            transp._reclaim_fd()
            transp._reset_empty_waiter()
            if resume_reading:
                transp.resume_reading()

    def _ensure_fd_no_transport(self, fd):
        fileno = fd
        if not isinstance(fileno, int):
            try:
                fileno = int(fileno.fileno())
            except (AttributeError, TypeError, ValueError):
                raise ValueError(f"Invalid file object: {fd!r}") from None
        transport = self._fd_owner(fileno)
        if transport is not None and not transport.is_closing():
            raise RuntimeError(f"File descriptor {fd!r} is used by transport {transport!r}")


def _sock_method_names():
    return [n for n in dir(_Selector) if n.startswith(("sock_", "_sock_"))]


# sock_* not (yet) given a C fast path by bridge/handles/sock.cpp run asyncio's selector code,
# which uses only _add_reader/_remove_reader & co. (C methods of LoopCore) and the checks above.
for _name in _sock_method_names():
    if not hasattr(NetworkMethods, _name):
        setattr(NetworkMethods, _name, getattr(_Selector, _name))
del _name
