#!/usr/bin/env python3
"""One server of the network benchmarks (bench_net.py), on one event loop, in its own process.

    /usr/bin/python3 bench/python/net_server.py --loop asyncio|uvloop|tideloop \
        --mode protocol|streams|sock|unix-protocol|udp|aiohttp [--path SOCK] [--build build]

Binds 127.0.0.1 port 0 (or the unix socket PATH), then prints one JSON line on stdout:
{"ready": true, "port": P, "path": ..., "loop": "<module>.<class> of the running loop"} so the
driver can check the loop is the one asked for. Serves until SIGTERM or SIGINT, or until stdin
reaches EOF (the driver died). A failure before ready is one line on stderr and exit status 1.

The servers are the plain idiom of each API, what an application would write:
  protocol, unix-protocol  asyncio.Protocol; data_received -> transport.write(data)
  streams                  asyncio.start_server; reader.read(64 KiB), writer.write, drain
  sock                     loop.sock_accept / sock_recv / sock_sendall, one task per connection
  udp                      asyncio.DatagramProtocol; datagram_received -> transport.sendto back
  aiohttp                  web.Application, GET / -> web.Response(text="Hello, World!")
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import threading
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import import_tideloop  # noqa: E402

MODES = ("protocol", "streams", "sock", "unix-protocol", "udp", "aiohttp")
READ_SIZE = 64 * 1024  # per read in the streams and sock servers


def new_loop(name: str, build: str):
    if name == "asyncio":
        return asyncio.SelectorEventLoop()
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    if name == "tideloop":
        return import_tideloop(build).new_event_loop()
    raise SystemExit(f"unknown loop {name!r}")


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class EchoDatagram(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


async def streams_echo(reader, writer):
    try:
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def sock_echo(loop, conn):
    try:
        while data := await loop.sock_recv(conn, READ_SIZE):
            await loop.sock_sendall(conn, data)
    except ConnectionError:
        pass
    finally:
        conn.close()


def fail_on_error(failure: asyncio.Future):
    """A done callback that passes a task's exception on to `failure` (the first one wins)."""
    def callback(task):
        if not task.cancelled() and task.exception() is not None and not failure.done():
            failure.set_exception(task.exception())
    return callback


async def sock_serve(loop, listener, conns: set, failure: asyncio.Future):
    while True:
        conn, _ = await loop.sock_accept(listener)
        conn.setblocking(False)
        # The transports of the other modes set TCP_NODELAY; plain sockets need it said.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = loop.create_task(sock_echo(loop, conn))
        conns.add(task)
        task.add_done_callback(conns.discard)
        task.add_done_callback(fail_on_error(failure))


def tcp_listener() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    s.setblocking(False)
    return s


async def start(mode: str, path: str | None, failure: asyncio.Future):
    """Starts the server; returns (port or None, an async cleanup function). An exception of
    the sock_* tasks, which nobody awaits, is set on `failure`."""
    loop = asyncio.get_running_loop()
    if mode in ("protocol", "streams"):
        sock = tcp_listener()
        if mode == "protocol":
            server = await loop.create_server(EchoProtocol, sock=sock)
        else:
            server = await asyncio.start_server(streams_echo, sock=sock)

        async def stop():
            server.close()
        return sock.getsockname()[1], stop
    if mode == "unix-protocol":
        server = await loop.create_unix_server(EchoProtocol, path)

        async def stop():
            server.close()
        return None, stop
    if mode == "sock":
        sock = tcp_listener()
        conns = set()
        acceptor = loop.create_task(sock_serve(loop, sock, conns, failure))
        acceptor.add_done_callback(fail_on_error(failure))

        async def stop():
            acceptor.cancel()
            for t in list(conns):
                t.cancel()
            sock.close()
        return sock.getsockname()[1], stop
    if mode == "udp":
        transport, _ = await loop.create_datagram_endpoint(
            EchoDatagram, local_addr=("127.0.0.1", 0))

        async def stop():
            transport.close()
        return transport.get_extra_info("sockname")[1], stop
    if mode == "aiohttp":
        from aiohttp import web

        async def hello(request):
            return web.Response(text="Hello, World!")

        app = web.Application()
        app.router.add_get("/", hello)
        # AppRunner uses the running loop: the one created here, nothing implicit.
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = tcp_listener()
        await web.SockSite(runner, sock).start()

        async def stop():
            await runner.cleanup()
        return sock.getsockname()[1], stop
    raise SystemExit(f"unknown mode {mode!r}")


def watch_stdin(loop, done: asyncio.Event) -> None:
    """The driver keeps our stdin open; EOF means it is gone and nobody else will stop us."""
    # os.read, not sys.stdin: a daemon thread blocked inside a buffered reader holds its lock,
    # which makes interpreter shutdown abort.
    while os.read(0, 4096):
        pass
    try:
        loop.call_soon_threadsafe(done.set)
    except RuntimeError:  # the loop is already closed: we are exiting anyway
        pass


async def serve(mode: str, path: str | None) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    threading.Thread(target=watch_stdin, args=(loop, done), daemon=True).start()
    failure = loop.create_future()
    port, stop = await start(mode, path, failure)
    cls = type(loop)
    print(json.dumps({"ready": True, "port": port, "path": path,
                      "loop": f"{cls.__module__}.{cls.__qualname__}"}), flush=True)
    waiter = loop.create_task(done.wait())
    await asyncio.wait([waiter, failure], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    await stop()
    if failure.done():
        failure.result()  # a sock_* task failed: exit with its exception


def describe(exc: BaseException) -> str:
    """One line for the driver's table: the exception and the function that raised it."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" in {frames[-1].name}" if frames else ""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}{where}" + (f": {text}" if text else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", required=True, choices=("asyncio", "uvloop", "tideloop"))
    parser.add_argument("--mode", required=True, choices=MODES)
    parser.add_argument("--path", help="unix socket path (unix-protocol mode)")
    parser.add_argument("--build", default="build", help="build dir holding python/tideloop")
    args = parser.parse_args(argv)
    if args.mode == "unix-protocol" and not args.path:
        parser.error("--path is required for unix-protocol")
    try:
        loop = new_loop(args.loop, args.build)
    except Exception as exc:  # noqa: BLE001
        print(describe(exc), file=sys.stderr, flush=True)
        return 1
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve(args.mode, args.path))
    except Exception as exc:  # noqa: BLE001
        print(describe(exc), file=sys.stderr, flush=True)
        return 1
    finally:
        try:
            loop.close()
        except Exception:  # noqa: BLE001
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
