"""tideloop: an asyncio event loop on a C++20 runtime.

    import tideloop
    tideloop.run(main())            # like asyncio.run, on tideloop's loop
    tideloop.install()              # or: make every asyncio.run / new_event_loop use it
"""

import asyncio as __asyncio
import atexit as __atexit

from . import _tideloop
from ._loop import Loop

__all__ = ("Loop", "EventLoopPolicy", "install", "new_event_loop", "run", "__version__")

__version__ = "0.1.0"


def new_event_loop() -> Loop:
    """Return a new tideloop event loop."""
    return Loop()


class EventLoopPolicy(__asyncio.DefaultEventLoopPolicy):
    """asyncio's default policy, creating tideloop loops.

        asyncio.set_event_loop_policy(tideloop.EventLoopPolicy())
    """

    def _loop_factory(self):
        return new_event_loop()

    def __repr__(self):
        return f"<{type(self).__name__} object at {id(self):#x}>"


def install() -> None:
    """Make asyncio use tideloop: sets the event loop policy to EventLoopPolicy()."""
    __asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main, *, debug=None):
    """Like asyncio.run(main, debug=debug), on a new tideloop loop."""
    if __asyncio._get_running_loop() is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    with __asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)


# Join the native executor threads before the interpreter finalizes (as concurrent.futures
# does for its workers), so no native thread asks for the GIL of a dead interpreter.
__atexit.register(_tideloop._shutdown_native_pool)
