"""Background tasks that cannot be garbage-collected mid-flight, nor fail unheard.

asyncio keeps only a weak reference to a task; a task nobody holds may vanish before it ends.
`spawn` holds each one until it is done, and `cancel_all` ends them on shutdown. A task that
ends with an exception nobody awaited has it logged, with its traceback, when it ends (not
"Task exception was never retrieved" at some later garbage collection, or never).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("portico")

_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Start `coro` as a task held until it finishes."""
    task = asyncio.get_running_loop().create_task(coro)
    _running.add(task)
    task.add_done_callback(_finished)
    return task


def spawn_on(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """`spawn` on a loop the caller holds: `asyncio.get_running_loop()` is a getpid(2) system
    call on CPython 3.11 (the accept path spawns one task per connection)."""
    task = loop.create_task(coro)
    _running.add(task)
    task.add_done_callback(_finished)
    return task


def _finished(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if task.cancelled():
        return
    exc = task.exception()  # retrieved: asyncio will not complain about it later
    if exc is not None:
        log.error("background task %s failed", task.get_coro(), exc_info=exc)


def cancel_all() -> None:
    for task in list(_running):
        task.cancel()
