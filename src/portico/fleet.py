"""A fleet that acts as one: runtime changes shared by every instance through Redis.

Owns the change log, a Redis stream (``<prefix>changes``): a change made through any
instance's admin API with `fleet` is appended there (XADD) with who made it, and every
instance reads the stream (XREAD, blocking, so a change reaches the others within a fraction of
a second) and applies it. The stream is the record: an instance started later reads it from
the last ``reset`` on and converges on the same state; a reload re-applies it (the supervisor
keeps what it applied). Also owns the heartbeats that say which instances are live: one key
per instance (``<prefix>instance:<id>``) refreshed every second with a short TTL, so a dead
instance disappears on its own.

The kinds of change are open: the supervisor registers a handler per kind (drain, weights,
servers added and removed, ...) and any feature may register its own (access-list entries,
cache purges) and publish into the same log. Never decides what a change means, never builds
a consensus: Redis orders the log, and every instance applies it in that order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Final, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from portico import tasks

__all__ = ["Change", "Fleet", "FleetUnavailable"]

log = logging.getLogger("portico.fleet")

Change = dict[str, Any]  # {"kind": ..., fields of the kind..., "by": {...}, "at": unix time}
Handler = Callable[[Change], None]

HEARTBEAT_INTERVAL: Final = 1.0
HEARTBEAT_TTL: Final = 3  # seconds without a heartbeat before an instance is gone
READ_BLOCK_MS: Final = 500
MAX_LOG: Final = 10_000  # the stream is trimmed to about this many changes
RESET: Final = "reset"  # the supervisor publishes {"kind": "reset"} for POST /api/fleet/reset


class FleetUnavailable(Exception):
    """Redis did not take the change: nothing was applied anywhere."""


class Fleet:
    """One instance's membership of the fleet. `apply` is called for every change read from
    the log that another instance (or this one before a restart) made; `info` gives what this
    instance's heartbeat says about it."""

    def __init__(
        self,
        url: str,
        instance: str,
        info: Callable[[], dict[str, Any]],
        *,
        prefix: str = "portico:fleet:",
        timeout: float = 1.0,
    ) -> None:
        self.instance = instance
        self.info = info
        self.stream = f"{prefix}changes"
        self.members = f"{prefix}instance:"
        # two connections: the blocking reader holds one
        self._reader = Redis.from_url(url, socket_timeout=timeout + READ_BLOCK_MS / 1000)
        self._writer = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.handlers: dict[str, Handler] = {}
        self.last_id = "0-0"
        self.applied = 0
        self.connected = False
        self._tasks: list[asyncio.Task[None]] = []
        self._progress = asyncio.Condition()  # notified as the reader moves through the log
        self._failing = False

    def register(self, kind: str, handler: Handler) -> None:
        """Call `handler` for every change of `kind` (`reset` is the supervisor's)."""
        self.handlers[kind] = handler

    async def start(self) -> None:
        """Replay the log from its last reset (bounded by the timeout: a Redis that does not
        answer leaves this instance on its file, and the reader catches up once it does),
        then follow it and send heartbeats."""
        try:
            await self._replay()
        except (RedisError, OSError) as exc:
            self._down(exc)
        self._tasks = [tasks.spawn(self._follow()), tasks.spawn(self._heartbeat())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            async with asyncio.timeout(1.0):
                await self._writer.delete(self.members + self.instance)
        except (RedisError, OSError, TimeoutError):
            pass
        await self._reader.aclose()
        await self._writer.aclose()

    async def publish(self, change: Change, by: dict[str, str], wait: float = 2.0) -> str:
        """Append `change` to the log for every instance, with who made it (`by`, to which
        this instance's id is added), and wait (up to `wait` seconds) until this instance has
        applied it. Every instance, this one included, applies the log in its order, so two
        changes made at once through two instances end the same way everywhere. Returns its
        id; raises FleetUnavailable if Redis did not take it."""
        record = {**change, "by": {**by, "instance": self.instance}, "at": round(time.time(), 3)}
        try:
            raw = await self._writer.xadd(
                self.stream,
                {"change": json.dumps(record)},
                maxlen=MAX_LOG,
                approximate=True,
            )
        except (RedisError, OSError) as exc:
            raise FleetUnavailable(f"Redis did not take the change: {exc}") from None
        change_id = _text(raw)
        try:
            async with asyncio.timeout(wait), self._progress:
                await self._progress.wait_for(lambda: _order(self.last_id) >= _order(change_id))
        except TimeoutError:
            log.warning("fleet: change %s not read back within %gs", change_id, wait)
        return change_id

    async def history(self, count: int = 100) -> list[Change]:
        """The latest changes of the log, newest first (for the admin API)."""
        rows = cast(list[Any], await self._writer.xrevrange(self.stream, count=count))
        return [{"id": _text(i), **json.loads(f[b"change"])} for i, f in rows]

    async def instances(self) -> list[dict[str, Any]]:
        """The live instances, as their heartbeats describe them."""
        keys = [key async for key in self._writer.scan_iter(match=self.members + "*", count=100)]
        if not keys:
            return []
        values = await self._writer.mget(keys)
        found = [json.loads(v) for v in values if v is not None]
        return sorted(found, key=lambda i: str(i.get("instance")))

    # -- reading the log ---------------------------------------------------------------------

    async def _replay(self) -> None:
        rows = cast(list[Any], await self._writer.xrange(self.stream))
        start = 0
        for i, (_, fields) in enumerate(rows):
            if _kind(fields) == RESET:
                start = i + 1
        for change_id, fields in rows[start:]:
            self._apply(_text(change_id), fields, replay=True)
        if rows:
            self.last_id = _text(rows[-1][0])
        self.connected = True
        if rows[start:]:
            log.info("fleet: replayed %d change(s) from the log", len(rows) - start)

    async def _follow(self) -> None:
        while True:
            try:
                if not self.connected:
                    await self._replay_missed()
                reply = cast(
                    list[Any],
                    await self._reader.xread({self.stream: self.last_id}, block=READ_BLOCK_MS),
                )
            except (RedisError, OSError) as exc:
                self._down(exc)
                await asyncio.sleep(HEARTBEAT_INTERVAL)
                continue
            self._up()
            for _, rows in reply or ():
                for change_id, fields in rows:
                    self.last_id = _text(change_id)
                    self._apply(self.last_id, fields, replay=False)
            async with self._progress:
                self._progress.notify_all()

    async def _replay_missed(self) -> None:
        """Back after Redis was unreachable: from the start if it never answered, else from
        the last change read (XREAD from last_id does that by itself)."""
        if self.last_id == "0-0":
            await self._replay()
        self.connected = True

    def _apply(self, change_id: str, fields: dict[bytes, bytes], *, replay: bool) -> None:
        try:
            change = json.loads(fields[b"change"])
        except (KeyError, ValueError):
            log.warning("fleet: change %s is not readable: skipped", change_id)
            return
        handler = self.handlers.get(str(change.get("kind")))
        if handler is None:
            log.warning("fleet: change %s of unknown kind %r: skipped", change_id, change["kind"])
            return
        try:
            handler(change)
        except Exception:
            log.exception("fleet: change %s (%s) failed", change_id, change.get("kind"))
            return
        self.applied += 1
        if not replay:
            by = change.get("by", {})
            log.info(
                "fleet: applied %s from %s (%s)",
                change.get("kind"),
                by.get("instance"),
                by.get("user") or by.get("client"),
            )

    # -- heartbeats ----------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        key = self.members + self.instance
        while True:
            record = {**self.info(), "instance": self.instance, "seen": round(time.time(), 3)}
            try:
                await self._writer.set(key, json.dumps(record), ex=HEARTBEAT_TTL)
            except (RedisError, OSError) as exc:
                self._down(exc)
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    def _down(self, exc: BaseException) -> None:
        if not self._failing:
            log.warning("fleet: Redis unreachable (%s): changes from others wait", exc)
            self._failing = True

    def _up(self) -> None:
        if self._failing:
            log.info("fleet: Redis reachable again")
            self._failing = False


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _order(change_id: str) -> tuple[int, int]:
    """A stream id ("1733450000000-3") as something that sorts in the stream's order."""
    ms, _, seq = change_id.partition("-")
    return int(ms), int(seq or 0)


def _kind(fields: dict[bytes, bytes]) -> str | None:
    try:
        return str(json.loads(fields[b"change"]).get("kind"))
    except (KeyError, ValueError, AttributeError):
        return None
