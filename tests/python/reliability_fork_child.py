"""Child process of test_reliability_fork: a process that used a loop forks, three ways.

usage: reliability_fork_child.py asyncio|tideloop [mode ...]

modes: outside    os.fork() between two run_until_complete calls of the parent's loop
       callback   os.fork() inside a callback the parent's loop is running
       mp         multiprocessing's fork context, Process.start() from a running coroutine

Before each fork the parent's loop has run callbacks, timers (one cancelled, one pending at
the fork), an executor job and a socketpair round trip, and it has a listening server open.
The forked child creates a new loop of the same kind and runs callbacks, timers, a
run_in_executor job, a socketpair round trip (sock_*) and a TCP echo (create_server and
streams) on it, closes it and exits. A child that hangs is killed by SIGALRM (HARD_TIMEOUT,
traceback on stderr first), so a deadlock on a lock held by a thread that did not survive the
fork shows up as a signal exit, never as a hung test. The executor job comes last in the
child, reported apart from the rest, with its own bounds: EXECUTOR_TIMEOUT for a job that never
comes back ("executor": "timeout"), and an alarm shortly after for a deadlock in
run_in_executor itself (the report stops at "executor": "started" and the child dies of
SIGALRM).

The parent waits for each child while its own loop keeps running, then uses its loop again.
Prints one JSON line: {mode: {"child": what the child saw, "status": how it exited,
"parent_after": the parent's loop worked after the fork}}.
"""

import asyncio
import faulthandler
import json
import multiprocessing
import os
import signal
import socket
import sys
import time

KIND = sys.argv[1]
MODES = sys.argv[2:] or ["outside", "callback", "mp"]

SCALE = float(os.environ.get("TIDELOOP_RELIABILITY_SCALE", "1.0"))
# A correct child finishes in well under a second (ASan: a few); these only bound a hang.
HARD_TIMEOUT = 20
# Not scaled: the job is pow(2, 10), milliseconds even under ASan; a lost job waits it out.
EXECUTOR_TIMEOUT = 1.0
WAIT_CHILD = HARD_TIMEOUT + 15  # the child's own alarm ends it first


def make_loop():
    if KIND == "asyncio":
        return asyncio.SelectorEventLoop()
    import tideloop
    return tideloop.new_event_loop()


async def echo_handler(reader, writer):
    data = await reader.read(100)
    writer.write(data)
    await writer.drain()
    writer.close()


async def executor_step(loop):
    try:
        ex = await asyncio.wait_for(loop.run_in_executor(None, pow, 2, 10), EXECUTOR_TIMEOUT)
    except asyncio.TimeoutError:
        return "timeout"  # the job was lost (the bug test_reliability_fork names)
    return True if ex == 1024 else ex


async def use_loop(loop, with_executor=True):
    """Callbacks, timers (one cancelled), an executor job, a socketpair and a TCP echo."""
    seen = []
    done = loop.create_future()

    def chain(i):
        seen.append(i)
        if i < 99:
            loop.call_soon(chain, i + 1)
        else:
            done.set_result(None)

    loop.call_soon(chain, 0)
    await done
    fired = []
    cancelled = loop.call_later(0.001, fired.append, "cancelled")
    loop.call_later(0.002, fired.append, "b")
    loop.call_later(0.001, fired.append, "a")
    cancelled.cancel()
    await asyncio.sleep(0.01)
    ex = await executor_step(loop) if with_executor else None
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        await loop.sock_sendall(a, b"ping")
        got = await asyncio.wait_for(loop.sock_recv(b, 4), 5)
    finally:
        a.close()
        b.close()
    server = await asyncio.start_server(echo_handler, "127.0.0.1", 0)
    try:
        r, w = await asyncio.open_connection(*server.sockets[0].getsockname())
        w.write(b"echo")
        echoed = await asyncio.wait_for(r.read(100), 5)
        w.close()
        await w.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    done = {"callbacks": seen == list(range(100)), "timers": fired == ["a", "b"],
            "socketpair": got == b"ping", "tcp_echo": echoed == b"echo"}
    if with_executor:
        done["executor"] = ex
    return done


def observe_inherited(parent_loop):
    """What asyncio's module functions say about the parent's loop in the child."""
    seen = {"running_loop_is_none": asyncio._get_running_loop() is None}
    try:
        asyncio.get_running_loop()
        seen["get_running_loop"] = "returned"
    except RuntimeError:
        seen["get_running_loop"] = "RuntimeError"
    try:
        seen["get_event_loop_is_parent"] = asyncio.get_event_loop() is parent_loop
    except RuntimeError:
        seen["get_event_loop_is_parent"] = "RuntimeError"
    seen["parent_is_running"] = parent_loop.is_running()
    seen["parent_is_closed"] = parent_loop.is_closed()
    return seen


def child_main(parent_loop, wfd):
    """The whole child: never returns (os._exit), whatever happens. Writes its report as JSON
    lines, the executor step last and alone, so a child that deadlocks there (a lock held by
    a parent thread that does not exist here) has reported everything else already."""
    code = 1

    def report(**items):
        os.write(wfd, (json.dumps(items) + "\n").encode())

    try:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        faulthandler.dump_traceback_later(HARD_TIMEOUT - 1, exit=False)
        signal.alarm(HARD_TIMEOUT)
        report(pid_differs=os.getpid() != PARENT_PID, **observe_inherited(parent_loop))
        loop = make_loop()
        asyncio.set_event_loop(loop)
        try:
            report(**loop.run_until_complete(use_loop(loop, with_executor=False)))
            # A deadlock in the executor step is cut short: it would wait for HARD_TIMEOUT.
            faulthandler.dump_traceback_later(EXECUTOR_TIMEOUT + 1, exit=False)
            signal.alarm(int(EXECUTOR_TIMEOUT) + 2)
            report(executor="started")
            ex = loop.run_until_complete(executor_step(loop))
            report(executor=ex)
            faulthandler.dump_traceback_later(HARD_TIMEOUT - 1, exit=False)
            signal.alarm(HARD_TIMEOUT)
            if ex is True:  # with a lost job this would wait forever
                loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
        report(closed=loop.is_closed())
        code = 0
    except BaseException as e:  # noqa: B036  (report anything, then leave)
        try:
            report(error=repr(e))
        except OSError:
            pass
    finally:
        os._exit(code)


async def wait_child(pid):
    """waitpid without blocking the parent's loop; kills a child that outlives WAIT_CHILD."""
    deadline = time.monotonic() + WAIT_CHILD
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            # The child's own alarm did not end it: it hung before it could set one (inside
            # fork's after-fork handlers, or on its first allocation).
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return f"hung: killed by the parent after {WAIT_CHILD} s"
        await asyncio.sleep(0.005)
    if os.WIFSIGNALED(status):
        return "signal %d" % os.WTERMSIG(status)
    return "exit %d" % os.WEXITSTATUS(status)


def read_all(rfd):
    """The child's JSON lines merged into one dict (None if it wrote nothing)."""
    chunks = []
    while True:
        c = os.read(rfd, 65536)
        if not c:
            break
        chunks.append(c)
    os.close(rfd)
    merged = None
    for line in b"".join(chunks).decode().splitlines():
        merged = merged or {}
        merged.update(json.loads(line))
    return merged


def fork_outside(loop):
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        child_main(loop, wfd)
    os.close(wfd)
    status = loop.run_until_complete(wait_child(pid))
    return read_all(rfd), status


def fork_in_callback(loop):
    rfd, wfd = os.pipe()
    box = {}

    def cb():
        pid = os.fork()
        if pid == 0:  # still inside the parent's run_forever, in the child
            os.close(rfd)
            child_main(loop, wfd)
        box["pid"] = pid

    async def main():
        loop.call_soon(cb)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return await wait_child(box["pid"])

    status = loop.run_until_complete(main())
    os.close(wfd)
    return read_all(rfd), status


def fork_mp(loop):
    ctx = multiprocessing.get_context("fork")
    rfd, wfd = os.pipe()

    async def main():
        proc = ctx.Process(target=child_main, args=(loop, wfd))
        proc.start()  # from inside the running loop
        os.close(wfd)
        status = await wait_child(proc.pid)
        proc._popen.returncode = 0  # reaped by wait_child already; keep multiprocessing quiet
        return status

    status = loop.run_until_complete(main())
    return read_all(rfd), status


def main():
    global PARENT_PID
    PARENT_PID = os.getpid()
    loop = make_loop()
    asyncio.set_event_loop(loop)
    results = {}
    try:
        for mode in MODES:
            before = loop.run_until_complete(use_loop(loop))
            # Left pending across the fork: a timer and a listening server in the parent.
            pending = []
            timer = loop.call_later(0.05, pending.append, "timer")
            server = loop.run_until_complete(asyncio.start_server(echo_handler, "127.0.0.1", 0))
            fork = {"outside": fork_outside, "callback": fork_in_callback, "mp": fork_mp}[mode]
            child, status = fork(loop)
            after = loop.run_until_complete(use_loop(loop))
            loop.run_until_complete(asyncio.sleep(0.06))
            timer.cancel()
            server.close()
            loop.run_until_complete(server.wait_closed())
            results[mode] = {"child": child, "status": status,
                             "parent_before": all(before.values()),
                             "parent_after": all(after.values()) and pending == ["timer"]}
    finally:
        asyncio.set_event_loop(None)
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
    print(json.dumps(results))


PARENT_PID = None

if __name__ == "__main__":
    main()
