"""Child process of test_reliability_overload: an echo server with a low RLIMIT_NOFILE.

usage: reliability_overload_server.py asyncio|tideloop NOFILE

Lowers its soft RLIMIT_NOFILE to NOFILE, serves an echo protocol (loop.create_server) on a
loopback port and prints "PORT <n>" once it listens. It runs until its stdin closes (the test
holds the other end), then closes the server and prints one JSON line: how many connections it
accepted, how many EMFILE reports reached the exception handler, and every other exception
handler call (there must be none). A SIGALRM after HARD_TIMEOUT ends a hung server.
"""

import asyncio
import errno
import json
import os
import resource
import signal
import sys

# asyncio stops accepting for ACCEPT_RETRY_DELAY (1 s) after EMFILE; shortened so the asyncio
# run recovers as quickly as tideloop's (which may ignore it).
asyncio.constants.ACCEPT_RETRY_DELAY = 0.1

HARD_TIMEOUT = 120


class Echo(asyncio.Protocol):
    accepted = 0
    open_now = 0

    def connection_made(self, transport):
        Echo.accepted += 1
        Echo.open_now += 1
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        return False  # close our side too

    def connection_lost(self, exc):
        Echo.open_now -= 1


def is_emfile(ctx):
    exc = ctx.get("exception")
    return isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)


async def main(loop, kind):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=128)
    print("PORT", server.sockets[0].getsockname()[1], flush=True)
    stdin_closed = loop.create_future()

    def on_stdin():
        if not os.read(0, 4096) and not stdin_closed.done():
            stdin_closed.set_result(None)

    loop.add_reader(0, on_stdin)
    await stdin_closed
    loop.remove_reader(0)
    server.close()
    await server.wait_closed()
    return {"accepted": Echo.accepted, "open_at_end": Echo.open_now,
            "emfile_reports": sum(map(is_emfile, contexts)),
            "unexpected": [f"{ctx.get('message')}: {ctx.get('exception')!r}"
                           for ctx in contexts if not is_emfile(ctx)]}


if __name__ == "__main__":
    kind, nofile = sys.argv[1], int(sys.argv[2])
    signal.alarm(HARD_TIMEOUT)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
    if kind == "asyncio":
        lp = asyncio.SelectorEventLoop()
    else:
        import tideloop
        lp = tideloop.new_event_loop()
    try:
        result = lp.run_until_complete(main(lp, kind))
    finally:
        lp.close()
    print(json.dumps(result), flush=True)
