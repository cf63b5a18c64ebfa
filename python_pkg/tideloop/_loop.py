"""tideloop.Loop: the asyncio event loop whose engine is the C++ bridge.

The hot methods (call_soon, call_later, call_at, call_soon_threadsafe, time, create_future,
run_forever, add_reader...) live in the C base class ``_tideloop.LoopCore``. This module adds the
rest of ``asyncio.AbstractEventLoop``: what runs rarely (close, executors, signal handlers,
exception handling) and is clearer in Python. Where asyncio's own ``BaseEventLoop`` method only
relies on the loop's public surface it is reused as is, so its behaviour is asyncio's by
construction.
"""

import asyncio
import concurrent.futures
import contextvars
import errno
import signal
import socket
import sys
import threading
import time
import weakref
from asyncio import base_events, coroutines, format_helpers, futures, tasks
from asyncio.log import logger

from . import _tideloop
from ._net import NetworkMethods
from ._sock import SockMethods

__all__ = ("Loop",)

_BaseEventLoop = base_events.BaseEventLoop


class Loop(_tideloop.LoopCore, SockMethods, NetworkMethods, asyncio.AbstractEventLoop):
    """A complete asyncio event loop (everything but pipes and subprocesses so far)."""

    def __init__(self):
        self._default_executor = None
        self._exception_handler = None
        self._task_factory = None
        self._asyncgens = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._executor_shutdown_called = False
        self._signal_handlers = {}
        self._clock_resolution = time.get_clock_info("monotonic").resolution
        self._coroutine_origin_tracking_saved_depth = None
        # In debug mode, a callback that runs longer than this (seconds) is logged.
        self.slow_callback_duration = 0.1
        self.set_debug(coroutines._is_debug_mode())

    # asyncio's own implementations, which only use the loop's public surface.
    __repr__ = _BaseEventLoop.__repr__
    __del__ = _BaseEventLoop.__del__
    create_task = _BaseEventLoop.create_task
    set_task_factory = _BaseEventLoop.set_task_factory
    get_task_factory = _BaseEventLoop.get_task_factory
    run_until_complete = _BaseEventLoop.run_until_complete
    set_debug = _BaseEventLoop.set_debug
    get_exception_handler = _BaseEventLoop.get_exception_handler
    set_exception_handler = _BaseEventLoop.set_exception_handler
    default_exception_handler = _BaseEventLoop.default_exception_handler
    call_exception_handler = _BaseEventLoop.call_exception_handler
    shutdown_asyncgens = _BaseEventLoop.shutdown_asyncgens
    set_default_executor = _BaseEventLoop.set_default_executor
    getaddrinfo = _BaseEventLoop.getaddrinfo
    getnameinfo = _BaseEventLoop.getnameinfo
    _getaddrinfo_debug = _BaseEventLoop._getaddrinfo_debug
    _asyncgen_firstiter_hook = _BaseEventLoop._asyncgen_firstiter_hook
    _asyncgen_finalizer_hook = _BaseEventLoop._asyncgen_finalizer_hook
    _check_closed = _BaseEventLoop._check_closed
    _check_running = _BaseEventLoop._check_running
    _check_default_executor = _BaseEventLoop._check_default_executor
    _check_callback = _BaseEventLoop._check_callback
    _set_coroutine_origin_tracking = _BaseEventLoop._set_coroutine_origin_tracking
    _do_shutdown = _BaseEventLoop._do_shutdown

    def close(self):
        """Close the loop: drop pending callbacks, release fds; the loop must not be running."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self._debug:
            logger.debug("Close %r", self)
        if self._signal_handlers:
            if not sys.is_finalizing():
                for sig in list(self._signal_handlers):
                    self.remove_signal_handler(sig)
            else:
                self._signal_handlers.clear()
        self._close_core()
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)

    # --- executors -------------------------------------------------------------------------

    def run_in_executor(self, executor, func, *args):
        """Run func(*args) on a thread; the default executor is tideloop's native pool."""
        self._check_closed()
        if self._debug:
            self._check_callback(func, "run_in_executor")
        if executor is None:
            executor = self._default_executor
            self._check_default_executor()
            if executor is None:
                return self._run_in_native_pool(func, args)
        return futures.wrap_future(executor.submit(func, *args), loop=self)

    async def shutdown_default_executor(self):
        """Wait for every run_in_executor job of this loop, then shut a set executor down."""
        self._executor_shutdown_called = True
        idle = self._native_pool_idle()
        if idle is not None:
            await idle
        if self._default_executor is None:
            return
        future = self.create_future()
        thread = threading.Thread(target=self._do_shutdown, args=(future,))
        thread.start()
        try:
            await future
        finally:
            thread.join()

    # --- signals (asyncio's unix_events semantics) -----------------------------------------

    def add_signal_handler(self, sig, callback, *args):
        if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        if not callable(callback):
            raise TypeError(
                f"a callable object was expected by add_signal_handler(), got {callback!r}")
        try:
            # Raises ValueError outside the main thread: a loop running in another thread
            # cannot add a signal handler.
            signal.set_wakeup_fd(self._signal_wakeup_fd())
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc))
        self._signal_handlers[sig] = (callback, args, contextvars.copy_context())
        self._set_signal_state(True, True)
        try:
            # Python's C handler writes the signal number to the wakeup fd; the loop reads it.
            signal.signal(sig, _sighandler_noop)
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                self._release_wakeup_fd()
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught")
            raise

    def remove_signal_handler(self, sig):
        self._check_signal(sig)
        try:
            del self._signal_handlers[sig]
        except KeyError:
            return False
        handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught")
            raise
        if not self._signal_handlers:
            self._release_wakeup_fd()
        return True

    def _release_wakeup_fd(self):
        try:
            signal.set_wakeup_fd(-1)
        except (ValueError, OSError) as exc:
            logger.info("set_wakeup_fd(-1) failed: %s", exc)
        self._set_signal_state(False, False)

    def _handle_signal(self, sig):
        # Called by the C core when the wakeup fd reports `sig`.
        entry = self._signal_handlers.get(sig)
        if entry is not None:
            callback, args, context = entry
            self.call_soon(callback, *args, context=context)

    def _check_signal(self, sig):
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")


def _sighandler_noop(signum, frame):
    """Dummy signal handler: the wakeup fd tells the loop which signal arrived."""


# --- helpers called by the C core on cold paths ---------------------------------------------

def _callback_exception(handle, exc):
    cb = format_helpers._format_callback_source(handle._callback, handle._args)
    context = {"message": f"Exception in callback {cb}", "exception": exc, "handle": handle}
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    handle._loop.call_exception_handler(context)


def _handle_repr(handle):
    # asyncio.Handle._repr_info / TimerHandle._repr_info
    info = [type(handle).__name__]
    if handle._cancelled:
        info.append("cancelled")
    if isinstance(handle, _tideloop.TimerHandle):
        info.insert(2 if handle._cancelled else 1, f"when={handle._when}")
    if handle._callback is not None:
        info.append(format_helpers._format_callback_source(handle._callback, handle._args))
    if handle._source_traceback:
        frame = handle._source_traceback[-1]
        info.append(f"created at {frame[0]}:{frame[1]}")
    return "<{}>".format(" ".join(info))


def _extract_stack():
    # Frame 1 is the Python code that called call_soon & co. (C methods push no frame).
    return format_helpers.extract_stack(sys._getframe(1))


def _check_callback(callback, method):
    _BaseEventLoop._check_callback(None, callback, method)


def _log_slow_callback(handle, dt):
    logger.warning("Executing %s took %.3f seconds", base_events._format_handle(handle), dt)


_tideloop._init_helpers(
    callback_exception=_callback_exception,
    handle_repr=_handle_repr,
    extract_stack=_extract_stack,
    check_callback=_check_callback,
    log_slow_callback=_log_slow_callback,
)
