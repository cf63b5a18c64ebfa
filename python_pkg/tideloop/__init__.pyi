import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from . import _tideloop

_T = TypeVar("_T")

__version__: str

class Loop(_tideloop.LoopCore, asyncio.AbstractEventLoop):
    slow_callback_duration: float
    def __init__(self) -> None: ...

class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    def _loop_factory(self) -> Loop: ...

def new_event_loop() -> Loop: ...
def install() -> None: ...
def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T: ...
