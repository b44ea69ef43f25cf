"""Background tasks that cannot be garbage-collected mid-flight.

asyncio keeps only a weak reference to a task; a task nobody holds may vanish before it ends.
`spawn` holds each one until it is done, and `cancel_all` ends them on shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Start `coro` as a task held until it finishes."""
    task = asyncio.get_running_loop().create_task(coro)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


def cancel_all() -> None:
    for task in list(_running):
        task.cancel()
