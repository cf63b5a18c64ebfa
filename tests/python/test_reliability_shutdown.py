"""Shutdown under load: leaving asyncio.run / tideloop.run, and loop.stop() + loop.close(), while
tasks, timers, executor jobs, call_soon_threadsafe producers on two threads and stream
connections to a local echo server are all active. Each shutdown runs in a child process
(reliability_shutdown_child.py, which describes the load), so a crash or a hang fails the test
instead of taking pytest down; the child's wall time is bounded by its timeout.

What happens to each kind of pending work (asyncio 3.11's behaviour; tideloop matches it except
where marked):

Leaving asyncio.run(main()) / tideloop.run(main()) (asyncio.Runner.close):
- tasks still pending are all cancelled and awaited (gather): each gets CancelledError at its
  await, its except/finally blocks run, including ones that await again; none is left pending.
- executor: the tasks' cancellation cancels the futures of their run_in_executor jobs, so a job
  still queued never runs; jobs already running finish; shutdown_default_executor() then waits
  for every job still queued or running, including jobs nobody awaits: when run() returns, no
  job is running.
- timers not yet due never run; their handles are dropped with the loop (cancelled() stays
  False).
- call_soon_threadsafe from other threads: callbacks accepted before close either ran or were
  dropped at close (none runs after); once the loop is closed the call raises
  RuntimeError("Event loop is closed"), so a producer learns it from the exception.
- connections: the stream handlers and clients are tasks, so they are cancelled. asyncio leaves
  the transports and the server's listening socket open until they are collected (with a
  ResourceWarning each); tideloop's loop.close() closes its transports' sockets at once (a
  documented difference, docs/python-api.md), so only the listening socket waits for GC. In both,
  every fd is released once the objects are collected.

loop.stop() from a callback, then loop.close(), without cancelling anything:
- tasks stay pending (not cancelled, no CancelledError delivered); when collected asyncio logs
  "Task was destroyed but it is pending!".
- executor: close shuts the default executor down without waiting; running and queued jobs
  still run to the end on their threads, and their results are dropped (no callback runs on
  the closed loop).
- timers and ready callbacks are dropped without running.
- every later call_soon, call_later, call_soon_threadsafe, run_in_executor and
  run_until_complete raises RuntimeError("Event loop is closed"); a second close() is a no-op.
- connections: as above (tideloop closes the sockets in close(); asyncio at collection).
"""

import json
import pathlib
import subprocess
import sys

import pytest

from conftest import LOOP_KINDS, subprocess_env
from reliability_support import shared_report

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import reliability_shutdown_child as child  # noqa: E402  (the load's constants)

CLOSED = "RuntimeError: Event loop is closed"


def shutdown(tmp_path_factory, kind, scenario):
    """The child's report for one loop kind and scenario, run once per session."""
    def compute():
        proc = subprocess.run(
            [sys.executable, str(HERE / "reliability_shutdown_child.py"), kind, scenario],
            capture_output=True, text=True, env=subprocess_env(), timeout=60)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Fatal Python error" not in proc.stderr, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    report = shared_report(tmp_path_factory, f"shutdown-{kind}-{scenario}", compute)
    print(kind, scenario, json.dumps(report))
    return report


def check_common(r, kind):
    final = r["counts_final"]
    assert r["producers_alive"] == 0, r
    assert r["producer_errors"] == [CLOSED], r
    assert final["threadsafe_ran"] <= final["threadsafe_issued"], r
    assert r["threadsafe_ran_after_close"] == 0, r
    assert final["long_timer_fired"] == 0, r
    assert r["long_timer_handles_cancelled"] == 0, r
    assert final["echo_roundtrips"] > 0, r
    # no job is left running or queued in the end, and the jobs nobody awaited all ran
    assert final["job_started"] == final["job_finished"], r
    assert final["free_job_finished"] == child.FREE_JOBS, r
    # transports: tideloop closes them in close(), asyncio when they are collected
    assert r["writers_closing"] == (child.CLIENTS if kind == "tideloop" else 0), r
    # the server's listening socket is closed by nobody (in both); asyncio's transports too
    assert r["fds_open_before_gc"] == (1 if kind == "tideloop" else 1 + 2 * child.CLIENTS), r
    assert r["fds_open_after_gc"] == 0, r
    assert r["threads_after"] == 0, r


def test_leaving_run_under_load(tmp_path_factory, loop_kind):
    r = shutdown(tmp_path_factory, loop_kind, "run")
    check_common(r, loop_kind)
    at_close = r["counts_at_close"]
    assert r["run_returned"] == "main done"
    assert r["tasks_pending"] == 0, r
    assert at_close["task_cancelled"] == child.TASKS, r
    assert at_close["task_cleanup_done"] == child.TASKS // 2, r
    assert at_close["task_finished"] == 0, r
    assert at_close["client_cancelled"] == child.CLIENTS, r
    assert at_close["handler_cancelled"] == child.CLIENTS, r
    # the runner waited for the executor: nothing running when run() returned ...
    assert at_close["job_started"] == at_close["job_finished"], r
    assert at_close["free_job_finished"] == child.FREE_JOBS, r
    # ... and the queued jobs of the cancelled tasks never ran
    assert r["counts_final"]["job_started"] < child.EXECUTOR_JOBS + child.FREE_JOBS, r


def test_stop_and_close_under_load(tmp_path_factory, loop_kind):
    r = shutdown(tmp_path_factory, loop_kind, "close")
    check_common(r, loop_kind)
    at_close, final = r["counts_at_close"], r["counts_final"]
    assert at_close["task_cancelled"] == 0, r
    assert r["tasks_pending"] >= child.TASKS, r  # the sleepers at least: nothing cancelled them
    assert r["tasks_cancelled_state"] == 0, r
    # close() did not wait for the executor, and the jobs went on to the end after it
    assert final["job_started"] == child.EXECUTOR_JOBS + child.FREE_JOBS, r
    for call in ("call_soon", "call_later", "run", "threadsafe", "executor"):
        assert r[f"{call}_after_close"] == CLOSED, (call, r)
    assert r["close_again"] is None, r


@pytest.mark.skipif("asyncio" not in LOOP_KINDS, reason="TIDELOOP_TEST_LOOPS excludes asyncio")
@pytest.mark.parametrize("scenario", ["run", "close"])
def test_same_outcome_as_asyncio(tmp_path_factory, scenario):
    """Every deterministic outcome the child reports is the same on both loops (the counts that
    depend on timing, and the documented transport difference, are left out)."""
    timing = {"shutdown_seconds", "jobs_settle_seconds", "counts_at_close", "counts_final",
              "tasks_pending", "tasks_cancelled_state", "writers_closing", "fds_open_before_gc",
              "resource_warnings"}
    a = shutdown(tmp_path_factory, "asyncio", scenario)
    t = shutdown(tmp_path_factory, "tideloop", scenario)
    assert {k: v for k, v in t.items() if k not in timing} == \
        {k: v for k, v in a.items() if k not in timing}
    same_counts = ("task_cancelled", "task_cleanup_done", "task_finished", "long_timer_fired",
                   "client_cancelled", "handler_cancelled", "free_job_finished")
    assert {k: t["counts_final"][k] for k in same_counts} == \
        {k: a["counts_final"][k] for k in same_counts}
