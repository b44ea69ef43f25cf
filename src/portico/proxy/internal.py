"""Portico's own failures while serving a request: a bug, not the client's fault nor a server's.

Owns how they are logged: with the traceback, at most once per `LOG_INTERVAL` per place (a bug
hit by every request must not flood the log), with the count since the last line. What the
request gets (a 500, never forwarded, the connection closed) is the caller's business.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from portico.plugins.guard import LOG_INTERVAL

__all__ = ["InternalErrors", "internal_errors"]

log = logging.getLogger("portico")


class InternalErrors:
    """Counts and logs (sparingly) the exceptions Portico raised while serving requests."""

    __slots__ = ("_logged_at", "_unlogged", "total")

    def __init__(self) -> None:
        self.total = 0  # since the worker started (tests read it)
        self._unlogged: dict[str, int] = {}  # per place: failures since its last log line
        self._logged_at: dict[str, float] = {}

    def report(self, doing: str, exc: BaseException, now: float | None = None) -> None:
        """`exc` was raised while `doing` ("setting up a request"): log it, the traceback
        included, unless this place was logged less than `LOG_INTERVAL` seconds ago."""
        self.total += 1
        count = self._unlogged.get(doing, 0) + 1
        now = time.monotonic() if now is None else now
        if now - self._logged_at.get(doing, -LOG_INTERVAL) < LOG_INTERVAL:
            self._unlogged[doing] = count
            return
        self._logged_at[doing] = now
        self._unlogged[doing] = 0
        log.error(
            "internal error while %s: %s: %s (the request gets a 500; %d such error(s) since "
            "the last report)",
            doing,
            type(exc).__name__,
            exc,
            count,
            exc_info=exc,
        )


internal_errors: Final = InternalErrors()
