"""A resettable deadline that is cheap to push back on the hot path.

Connections re-arm their timeouts on every read; cancelling and re-creating a TimerHandle each
time would allocate per read. Instead `set` only stores the new deadline when it is later than
the one scheduled, and the handle, when it fires early, re-schedules itself for the remainder
(the lazy-timer technique of NGINX's and HAProxy's timer wheels, in miniature).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Final

_NEVER = float("inf")
# The context every deadline's timer runs in. The loop would otherwise copy the current one
# for each handle (~64 bytes held per armed deadline, i.e. per idle connection); none of
# Portico's timeout callbacks reads or sets a context variable.
_CONTEXT: Final = contextvars.Context()


class Deadline:
    """Calls `callback` once `seconds` after the latest `set`, unless `clear`ed first.

    The deadline itself is its timer's callback (`__call__`): no bound method is made and
    held per scheduled handle."""

    __slots__ = ("_at", "_callback", "_handle", "_loop", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._at = _NEVER  # when the handle is due (_NEVER: no handle)
        self._when = 0.0  # 0.0 = not armed

    def set(self, seconds: float) -> None:
        when = self._when = self._loop.time() + seconds
        if when < self._at:
            if self._handle is not None:
                self._handle.cancel()
            self._at = when
            self._handle = self._loop.call_at(when, self, context=_CONTEXT)

    def clear(self) -> None:
        """Disarm; the scheduled handle, if any, will wake once and do nothing."""
        self._when = 0.0

    def cancel(self) -> None:
        """Disarm for good, for a connection that is going away: the handle is dropped, and
        so is the callback, which is a bound method of the owner. That breaks the cycle owner
        -> deadline -> owner, so the owner (and, for TLS, the ~100 KiB of OpenSSL state its
        transport holds) is freed at once instead of waiting for a full garbage collection."""
        self._when = 0.0
        self._at = _NEVER
        self._callback = _nothing
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    @property
    def armed(self) -> bool:
        return self._when != 0.0

    def __call__(self) -> None:
        """The timer fired."""
        self._handle = None
        self._at = _NEVER
        when = self._when
        if when == 0.0:
            return
        if self._loop.time() < when:
            self._at = when
            self._handle = self._loop.call_at(when, self, context=_CONTEXT)
            return
        self._when = 0.0
        self._callback()


def _nothing() -> None:
    pass
