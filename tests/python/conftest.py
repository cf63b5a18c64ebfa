"""Shared fixtures: every behaviour test runs twice, on asyncio's own loop and on tideloop's.

The package is imported from the build tree: <build>/python, where <build> is the env variable
TIDELOOP_BUILD_DIR (default: `build` at the repository root). PYTHONPATH works as well.
"""

import asyncio
import gc
import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
_build = pathlib.Path(os.environ.get("TIDELOOP_BUILD_DIR", "build"))
if not _build.is_absolute():
    _build = ROOT / _build
BUILD_PYTHON = _build / "python"
if (BUILD_PYTHON / "tideloop").is_dir():
    sys.path.insert(0, str(BUILD_PYTHON))

import tideloop  # noqa: E402  (after the path set-up)

# TIDELOOP_TEST_LOOPS=tideloop runs only tideloop's side of the parity tests (the
# sanitizer tree does: asyncio's side runs none of our code).
LOOP_KINDS = tuple(k for k in os.environ.get("TIDELOOP_TEST_LOOPS", "asyncio,tideloop").split(",") if k)


def make_loop(kind):
    if kind == "asyncio":
        return asyncio.SelectorEventLoop()
    if kind == "tideloop":
        return tideloop.new_event_loop()
    raise ValueError(kind)


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request):
    return request.param


@pytest.fixture
def loop(loop_kind):
    """A fresh loop of each kind, closed (and checked for leftovers) after the test."""
    lp = make_loop(loop_kind)
    asyncio.set_event_loop(None)
    yield lp
    if lp.is_running():  # a test failed inside run_forever: do not hide the original error
        return
    if not lp.is_closed():
        lp.run_until_complete(lp.shutdown_default_executor())
        lp.close()
    gc.collect()


@pytest.fixture
def new_loop(loop_kind):
    """A factory for extra loops of the same kind (closed at teardown)."""
    made = []

    def factory():
        lp = make_loop(loop_kind)
        made.append(lp)
        return lp

    yield factory
    for lp in made:
        if not lp.is_closed() and not lp.is_running():
            lp.close()


def run_once(loop):
    """Run exactly one iteration (asyncio's test_utils.run_once)."""
    loop.call_soon(loop.stop)
    loop.run_forever()


def pending_timers(loop):
    """How many timer handles the loop still holds (cancelled ones included)."""
    if isinstance(loop, tideloop.Loop):
        return loop._stats()["scheduled"]
    return len(loop._scheduled)


def subprocess_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(BUILD_PYTHON), env.get("PYTHONPATH", "")) if p)
    return env
