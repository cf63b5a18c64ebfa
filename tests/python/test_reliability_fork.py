"""fork(): a process that used a loop (callbacks, timers, an executor job, sockets, a listening
server) forks with os.fork() (between runs and inside a running callback) and with
multiprocessing's fork context; the child creates a new loop and runs it, the parent keeps
running its own. The work happens in a child process (reliability_fork_child.py, which
documents each step) so a deadlocked fork child can never hang pytest itself.

What asyncio 3.11 does in the forked child, and tideloop matches (test_child_sees_asyncio_state):
- asyncio._get_running_loop() is None even when the fork happened inside the parent's
  run_forever (the running loop is recorded with the pid that set it), so
  get_running_loop() raises RuntimeError and the child may run a new loop;
- get_event_loop() still returns the parent's loop object (the policy's loop, copied by fork):
  Python 3.11 has no at-fork reset; that loop reports is_running() True if the fork happened
  while it ran. The child must not use it (it shares the parent's epoll instance): it creates
  a new loop, as here.

Fixed bug this covers: in the child, run_in_executor(None, ...) never ran its job, or deadlocked,
once the parent had used the native executor (bridge/native/executor.cpp kept the parent's
executor, its count of parked drainers and its mutex, across fork; the child now starts a new
one).
"""

import json
import pathlib
import subprocess
import sys

import pytest

from conftest import subprocess_env
from reliability_support import shared_report

HERE = pathlib.Path(__file__).resolve().parent
MODES = ("outside", "callback", "mp")

def fork_results(tmp_path_factory, kind):
    """The child script's report for one loop kind (every mode), run once per session."""
    def compute():
        proc = subprocess.run([sys.executable, str(HERE / "reliability_fork_child.py"), kind],
                              capture_output=True, text=True, env=subprocess_env(), timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    report = shared_report(tmp_path_factory, f"fork-{kind}", compute)
    print(kind, json.dumps(report))
    return report


@pytest.mark.parametrize("mode", MODES)
def test_child_runs_a_new_loop(tmp_path_factory, loop_kind, mode):
    r = fork_results(tmp_path_factory, loop_kind)[mode]
    child = r["child"]
    assert child is not None and "error" not in child, r
    assert r["status"] == "exit 0", r  # "signal 14": the child hung, SIGALRM killed it
    for step in ("callbacks", "timers", "socketpair", "tcp_echo", "closed", "pid_differs"):
        assert child[step] is True, (step, r)


@pytest.mark.parametrize("mode", MODES)
def test_parent_keeps_running(tmp_path_factory, loop_kind, mode):
    r = fork_results(tmp_path_factory, loop_kind)[mode]
    assert r["parent_before"] is True, r
    # callbacks, timers, executor, socketpair, TCP echo after the fork, and the timer left
    # pending across the fork fired
    assert r["parent_after"] is True, r


@pytest.mark.parametrize("mode", MODES)
def test_child_runs_an_executor_job(tmp_path_factory, loop_kind, mode):
    r = fork_results(tmp_path_factory, loop_kind)[mode]
    # "timeout": the job never ran; "started" with a signal status: run_in_executor deadlocked
    assert r["child"]["executor"] is True, r
    assert r["status"] == "exit 0", r


# What asyncio's own loop shows in the child (measured: reliability_fork_child.py asyncio).
ASYNCIO_IN_CHILD = {"running_loop_is_none": True, "get_running_loop": "RuntimeError",
                    "get_event_loop_is_parent": True, "parent_is_closed": False}


@pytest.mark.parametrize("mode", MODES)
def test_child_sees_asyncio_state(tmp_path_factory, loop_kind, mode):
    child = fork_results(tmp_path_factory, loop_kind)[mode]["child"]
    expected = dict(ASYNCIO_IN_CHILD, parent_is_running=mode != "outside")
    assert {k: child[k] for k in expected} == expected
