"""The package surface: install(), EventLoopPolicy, new_event_loop(), run(), Loop, __version__,
type stubs, and an installable build."""

import asyncio
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

import tideloop
from conftest import BUILD_PYTHON


def test_public_names_and_version():
    for name in ("install", "EventLoopPolicy", "new_event_loop", "run", "Loop", "__version__"):
        assert hasattr(tideloop, name)
    assert tideloop.__version__ == tideloop._tideloop.__version__


def test_loop_is_an_abstract_event_loop():
    loop = tideloop.new_event_loop()
    try:
        assert isinstance(loop, tideloop.Loop)
        assert isinstance(loop, asyncio.AbstractEventLoop)
        assert "Loop running=False closed=False" in repr(loop)
    finally:
        loop.close()


def test_install_sets_policy():
    old = asyncio.get_event_loop_policy()
    try:
        tideloop.install()
        assert isinstance(asyncio.get_event_loop_policy(), tideloop.EventLoopPolicy)
        loop = asyncio.new_event_loop()
        assert isinstance(loop, tideloop.Loop)
        loop.close()

        async def main():
            return type(asyncio.get_running_loop())

        assert asyncio.run(main()) is tideloop.Loop
    finally:
        asyncio.set_event_loop_policy(old)


def test_run():
    async def main(x):
        await asyncio.sleep(0.001)
        return x, asyncio.get_running_loop().get_debug(), type(asyncio.get_running_loop())

    assert tideloop.run(main(1)) == (1, False, tideloop.Loop)
    assert tideloop.run(main(2), debug=True) == (2, True, tideloop.Loop)
    with pytest.raises(ValueError):
        tideloop.run(1)


def test_run_inside_running_loop_raises():
    async def outer():
        coro = asyncio.sleep(0)
        try:
            tideloop.run(coro)
        finally:
            coro.close()

    with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
        tideloop.run(outer())


def test_stubs_ship_with_the_extension():
    pkg = pathlib.Path(tideloop.__file__).parent
    assert (pkg / "_tideloop.pyi").is_file()
    assert (pkg / "py.typed").is_file()
    stub = (pkg / "_tideloop.pyi").read_text()
    for name in ("class LoopCore", "class Handle", "class TimerHandle", "def call_soon"):
        assert name in stub
    assert list(pkg.glob("_tideloop*.so"))


def test_cmake_install_puts_a_working_package_into_site_packages(tmp_path):
    build = BUILD_PYTHON.parent
    if not (build / "CMakeCache.txt").is_file() or shutil.which("cmake") is None:
        pytest.skip("no CMake build tree")
    env = dict(os.environ, DESTDIR=str(tmp_path))
    r = subprocess.run(["cmake", "--install", str(build), "--component", "python"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    installed = sorted(tmp_path.rglob("tideloop/_tideloop*.so"))
    assert installed, list(tmp_path.rglob("*"))
    site = installed[0].parent.parent
    assert str(site).endswith(sysconfig.get_paths()["platlib"])
    code = "import tideloop, asyncio; print(tideloop.run(asyncio.sleep(0, 'ok')), tideloop.__file__)"
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(site)),
                       capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok ") and str(tmp_path) in r.stdout
