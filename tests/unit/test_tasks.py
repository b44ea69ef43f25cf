"""Background tasks: held until done, and a failure is logged when it happens."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest

from portico import tasks


def test_a_failing_task_is_logged_at_once_and_never_left_unretrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    unretrieved: list[dict[str, Any]] = []

    async def boom() -> None:
        raise ValueError("bad value(s) in fds_to_keep")

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: unretrieved.append(ctx))
        done = asyncio.Event()
        task = tasks.spawn(boom())
        task.add_done_callback(lambda _: done.set())
        await done.wait()
        del task
        gc.collect()  # where asyncio would say "Task exception was never retrieved"

    with caplog.at_level(logging.ERROR, logger="portico"):
        asyncio.run(main())
    assert unretrieved == []
    [record] = [r for r in caplog.records if r.exc_info]
    assert "bad value(s)" in str(record.exc_info[1])  # type: ignore[index]


def test_a_cancelled_task_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        task = tasks.spawn(asyncio.Event().wait())
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.ERROR, logger="portico"):
        asyncio.run(main())
    assert caplog.records == []
