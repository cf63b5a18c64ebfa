"""tideloop only: native executor threads that idle out while the loop thread holds the GIL.

The pool joins exited threads inside submit(), which runs with the GIL held; an exiting thread
that needed the GIL to drop its Python thread state deadlocked against it (seen with a 2 ms
keep-alive in a few hundred rounds). Run in a subprocess: the failure is a hang."""

import subprocess
import sys
import textwrap

from conftest import BUILD_PYTHON

_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, time
    sys.path.insert(0, {path!r})
    import tideloop
    from tideloop import _tideloop

    assert _tideloop._debug_executor_keep_alive(2), "the pool already existed"
    sys.setswitchinterval(0.05)  # the loop thread keeps the GIL for long stretches
    loop = tideloop.new_event_loop()

    async def main():
        for i in range(300):
            await asyncio.gather(*[loop.run_in_executor(None, time.sleep, 0) for _ in range(4)])
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 0.002 + (i % 5) * 0.0005:
                pass  # hold the GIL while the pool threads idle out
        # and the executor still works after all that reaping
        assert await loop.run_in_executor(None, sum, (1, 2)) == 3

    loop.run_until_complete(main())
    loop.close()
    print("ok")
    """
)


def test_idle_executor_threads_exit_while_the_loop_holds_the_gil():
    script = _SCRIPT.format(path=str(BUILD_PYTHON))
    try:
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError("deadlock: the loop thread joined an exiting pool thread that was "
                             "waiting for the GIL") from None
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "ok"
