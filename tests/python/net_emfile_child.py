"""Child process of test_net_faults.test_server_survives_emfile_on_accept.

usage: net_emfile_child.py asyncio|tideloop

Lowers RLIMIT_NOFILE, starts an echo server, opens client connections until socket() fails
with EMFILE (the server then cannot accept: its accept fails with EMFILE too), waits while
measuring CPU time (a loop that retries accept in a busy loop burns a core) and counting the
EMFILE reports, frees half the clients and checks every remaining client is served. A second
server, also out of fds with connections waiting, is closed while its accepting is paused: the
pending retry must find it closed and do nothing. Prints one JSON line with what it saw; exits
0 unless something went wrong before the measurements.
"""

import asyncio
import errno
import json
import os
import resource
import socket
import sys
import time

KIND = sys.argv[1]

# asyncio stops accepting for ACCEPT_RETRY_DELAY (1 s) after EMFILE; shortened here so the
# asyncio run is fast. tideloop may ignore it: the parent allows for a 1 s delay.
RETRY_DELAY = 0.1
asyncio.constants.ACCEPT_RETRY_DELAY = RETRY_DELAY

SPARE_FDS = 40  # fds allowed above what the process has open when the server is up
STARVED_FOR = 0.3  # seconds the server spends unable to accept


def make_loop():
    if KIND == "asyncio":
        return asyncio.SelectorEventLoop()
    import tideloop
    return tideloop.new_event_loop()


class Echo(asyncio.Protocol):
    """Echoes the first data it gets, then closes (so a served client frees its fd)."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)
        self.transport.close()


async def wait_reply(sock, deadline):
    while True:
        try:
            return sock.recv(100)
        except (BlockingIOError, InterruptedError):
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.002)
        except ConnectionError:
            return b""


def is_emfile(ctx):
    exc = ctx.get("exception")
    return isinstance(exc, OSError) and exc.errno == errno.EMFILE


async def main(loop):
    contexts = []
    emfile_by_addr = {}  # listening address -> EMFILE reports, counted as they come

    def handler(lp, ctx):
        contexts.append(ctx)
        if is_emfile(ctx):
            where = ctx["socket"].getsockname()
            emfile_by_addr[where] = emfile_by_addr.get(where, 0) + 1

    loop.set_exception_handler(handler)
    server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=200)
    addr = server.sockets[0].getsockname()
    closing = await loop.create_server(Echo, "127.0.0.1", 0, backlog=8)
    closing_addr = closing.sockets[0].getsockname()
    # Waiting in the second server's backlog: it too fails to accept them.
    closing_clients = [socket.create_connection(closing_addr, timeout=2) for _ in range(2)]

    in_use = len(os.listdir("/proc/self/fd"))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + SPARE_FDS, hard))

    # The loop does not run while the clients connect: the kernel completes the handshakes
    # into the listen backlog and nothing is accepted until the fds are all used.
    clients = []
    while True:
        try:
            c = socket.socket()
        except OSError as e:
            if e.errno != errno.EMFILE:
                raise
            break
        c.settimeout(2)
        c.connect(addr)
        c.setblocking(False)
        clients.append(c)

    # The second server's first EMFILE pauses its accepting; close it in the pause.
    deadline = time.monotonic() + 2.0
    while not emfile_by_addr.get(closing_addr) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    closing_reported = emfile_by_addr.get(closing_addr, 0)
    closing.close()
    await closing.wait_closed()

    reports0 = emfile_by_addr.get(addr, 0)
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(STARVED_FOR)
    cpu = time.process_time() - cpu0
    wall = time.monotonic() - wall0
    reports_while_starved = emfile_by_addr.get(addr, 0) - reports0
    emfile_reported = emfile_by_addr.get(addr, 0) > 0
    for c in closing_clients:
        c.close()

    half = len(clients) // 2
    for c in clients[:half]:
        c.close()
    live = clients[half:]
    deadline = time.monotonic() + 4.0
    served = 0
    for i, c in enumerate(live):
        c.send(b"ping%d" % i)
        if await wait_reply(c, deadline) == b"ping%d" % i:
            served += 1
        c.close()

    # and a connection made after the recovery
    fresh = socket.create_connection(addr, timeout=2)
    fresh.setblocking(False)
    fresh.send(b"fresh")
    fresh_ok = await wait_reply(fresh, time.monotonic() + 2.0) == b"fresh"
    fresh.close()
    server.close()
    await server.wait_closed()
    return {"clients": len(clients), "live": len(live), "served": served,
            "fresh_ok": fresh_ok, "emfile_reported": emfile_reported,
            "reports_while_starved": reports_while_starved, "retry_delay": RETRY_DELAY,
            "closing_reported": closing_reported, "cpu": cpu, "wall": wall,
            "unexpected": [f"{ctx.get('message')}: {ctx.get('exception')!r}"
                           for ctx in contexts if not is_emfile(ctx)]}


if __name__ == "__main__":
    lp = make_loop()
    try:
        result = lp.run_until_complete(asyncio.wait_for(main(lp), 10))
    finally:
        lp.close()
    print(json.dumps(result))
