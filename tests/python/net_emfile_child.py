"""Child process of test_net_faults.test_server_survives_emfile_on_accept.

usage: net_emfile_child.py asyncio|tideloop

Lowers RLIMIT_NOFILE, starts an echo server, opens client connections until socket() fails
with EMFILE (the server then cannot accept: its accept fails with EMFILE too), waits while
measuring CPU time (a loop that retries accept in a busy loop burns a core), frees half the
clients and checks every remaining client is served. Prints one JSON line with what it saw;
exits 0 unless something went wrong before the measurements.
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
asyncio.constants.ACCEPT_RETRY_DELAY = 0.1

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


async def main(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=200)
    addr = server.sockets[0].getsockname()

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

    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(STARVED_FOR)
    cpu = time.process_time() - cpu0
    wall = time.monotonic() - wall0
    emfile_reported = any(isinstance(ctx.get("exception"), OSError)
                          and ctx["exception"].errno == errno.EMFILE for ctx in contexts)

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
            "cpu": cpu, "wall": wall,
            "unexpected": [repr(ctx.get("exception")) for ctx in contexts
                           if not (isinstance(ctx.get("exception"), OSError)
                                   and ctx["exception"].errno == errno.EMFILE)]}


if __name__ == "__main__":
    lp = make_loop()
    try:
        result = lp.run_until_complete(asyncio.wait_for(main(lp), 10))
    finally:
        lp.close()
    print(json.dumps(result))
