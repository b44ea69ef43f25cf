"""Resettable deadlines that are cheap to arm, push back and drop on the hot path.

Connections re-arm their timeouts on every read, and every client connection arms one at
accept. A loop TimerHandle per deadline cost an allocation per arm, and its making and
cancelling (libuv's timer, uvloop's two objects) ~5 us per short-lived connection. Instead the
deadlines of one loop share one TimerHandle (`Timers`), set for the earliest of them.

The deadlines are kept in one queue per length (`seconds`): a deadline set for `seconds` is
due `seconds` from now, no earlier than any set before it for as long, so appending it to its
length's queue keeps that queue in the order its deadlines are due, and the earliest deadline
of the loop is the earliest of the queues' first ones. A queue is a list linked through the
deadlines themselves (as NGINX's and HAProxy's timer trees link their nodes through the
connection), so arming, pushing back and dropping one allocates nothing and leaves nothing
behind: no entry per arm (a heap's tuple, boxed time and number: ~120 bytes held by every
idle connection), no stale entries to skip or sweep. Lengths are the configured timeouts: a
handful per loop, which is what makes looking at every queue's first deadline cheap.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Final

_NEVER: Final = float("inf")
# The context the shared timer runs in. The loop would otherwise copy the current one for
# each handle; none of Portico's timeout callbacks reads or sets a context variable.
_CONTEXT: Final = contextvars.Context()


class _Queue:
    """The armed deadlines of one length, in the order they are due (first: the earliest)."""

    __slots__ = ("first", "last", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.first: Deadline | None = None
        self.last: Deadline | None = None


class Timers:
    """The deadlines of one loop: a queue per length, and one TimerHandle, set no later than
    the earliest deadline (it may come up before, for a deadline pushed back or dropped since:
    then it is set again for the earliest)."""

    __slots__ = ("_at", "_clock", "_handle", "_loop", "_queue_list", "_queues")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # the loop's clock bound once: each Deadline.set reads it (a method look-up on the
        # loop otherwise, ~200 instructions)
        self._clock: Callable[[], float] = loop.time
        self._queues: dict[float, _Queue] = {}
        self._queue_list: list[_Queue] = []  # the same, to walk without a dict iterator
        self._handle: asyncio.TimerHandle | None = None
        self._at = _NEVER  # when the handle is due (_NEVER: no handle)

    def __len__(self) -> int:
        """Deadlines armed."""
        count = 0
        for queue in self._queue_list:
            deadline = queue.first
            while deadline is not None:
                count += 1
                deadline = deadline._next
        return count

    def time(self) -> float:
        return self._clock()

    def queue(self, seconds: float) -> _Queue:
        """The queue of deadlines `seconds` long (made the first time that length is used)."""
        queue = self._queues.get(seconds)
        if queue is None:
            queue = self._queues[seconds] = _Queue(seconds)
            self._queue_list.append(queue)
        return queue

    def _schedule(self, when: float) -> None:
        handle = self._handle
        if handle is not None:
            handle.cancel()
        self._at = when
        self._handle = self._loop.call_at(when, self, context=_CONTEXT)

    def _earliest(self) -> Deadline | None:
        earliest: Deadline | None = None
        for queue in self._queue_list:
            deadline = queue.first
            if deadline is not None and (earliest is None or deadline._when < earliest._when):
                earliest = deadline
        return earliest

    def __call__(self) -> None:
        """The handle came up: run the deadlines that are due, earliest first. Those a callback
        arms meanwhile wait for the next round, even when due at once (no round without end)."""
        self._handle = None
        self._at = _NEVER
        loop = self._loop
        now = loop.time()
        due: list[tuple[float, Deadline]] = []
        for queue in self._queue_list:
            deadline = queue.first
            while deadline is not None and deadline._when <= now:
                due.append((deadline._when, deadline))
                deadline = deadline._next
        if len(due) > 1:
            due.sort(key=_due_time)  # stable: a queue's own order kept among equal times
        for when, deadline in due:
            if deadline._when != when:
                continue  # cleared or set again by a callback of this round
            deadline.clear()
            try:
                owner = deadline._owner
                if owner is None:
                    deadline._callback()
                else:
                    deadline._callback(owner)
            except Exception as exc:  # as the loop reports a handle's: the others still run
                loop.call_exception_handler(
                    {"message": "Exception in a timeout callback", "exception": exc}
                )
        earliest = self._earliest()
        if earliest is not None and earliest._when < self._at:
            self._schedule(earliest._when)


def _due_time(entry: tuple[float, Deadline]) -> float:
    return entry[0]


# The last loop asked for and its Timers, as one tuple (read whole, whichever thread asks). A
# worker has one loop, so this is all but always the answer; a loop that asks after another
# gets Timers of its own again, as correct, only not shared with its earlier deadlines (and
# no table of loops is kept alive). In a Final list: the compiled build reads a Final name as a
# C static, any other as a look-up in the module's dict (~100 instructions a connection).
_LAST: Final[list[tuple[asyncio.AbstractEventLoop | None, Timers | None]]] = [(None, None)]


def timers_of(loop: asyncio.AbstractEventLoop) -> Timers:
    """The Timers of `loop`'s latest deadlines (made when another loop asked last)."""
    last = _LAST[0]
    timers = last[1]
    if last[0] is not loop or timers is None:
        timers = Timers(loop)
        _LAST[0] = (loop, timers)
    return timers


class Deadline:
    """Calls `callback` once `seconds` after the latest `set`, unless `clear`ed first; with an
    `owner`, calls `callback(owner)`: an owner that is one of many (a client connection) then
    passes its class's function (`Class.method`) rather than a bound method, which would be an
    object of its own per owner (72 bytes kept by every idle connection)."""

    __slots__ = ("_callback", "_next", "_owner", "_prev", "_queue", "_timers", "_when")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        callback: Callable[..., None],
        owner: object = None,
    ) -> None:
        self._timers = timers_of(loop)
        self._callback = callback
        self._owner = owner
        self._when = 0.0  # 0.0 = not armed (then in no queue)
        self._queue: _Queue | None = None  # the queue of its latest length
        self._prev: Deadline | None = None  # its neighbours in that queue while armed
        self._next: Deadline | None = None

    def set(self, seconds: float) -> None:
        timers = self._timers
        when = timers.time() + seconds
        queue = self._queue
        if self._when != 0.0 and queue is not None:  # armed: in `queue`
            if queue.last is self and queue.seconds == seconds:
                self._when = when  # still the last: where it stands is its place
                return
            self._unlink(queue)
        if queue is None or queue.seconds != seconds:
            queue = self._queue = timers.queue(seconds)
        self._when = when
        last = queue.last
        self._prev = last
        if last is None:
            queue.first = self
        else:
            last._next = self
        queue.last = self
        if when < timers._at:
            timers._schedule(when)

    def _unlink(self, queue: _Queue) -> None:
        prev = self._prev
        after = self._next
        if prev is None:
            queue.first = after
        else:
            prev._next = after
            self._prev = None
        if after is None:
            queue.last = prev
        else:
            after._prev = prev
            self._next = None

    def clear(self) -> None:
        """Disarm (the shared handle, if set for it, comes up once and finds nothing due)."""
        if self._when != 0.0:
            self._when = 0.0
            queue = self._queue
            if queue is not None:
                self._unlink(queue)

    def cancel(self) -> None:
        """Disarm for good, for a connection that is going away: the callback, a bound method
        of the owner, and the owner are dropped. That breaks the cycle owner -> deadline ->
        owner, so the owner (and, for TLS, the ~100 KiB of OpenSSL state its transport holds)
        is freed at once instead of waiting for a full garbage collection."""
        self.clear()
        self._callback = _NOTHING
        self._owner = None

    @property
    def armed(self) -> bool:
        return self._when != 0.0


def _nothing() -> None:
    pass


# Final: the compiled build reads it as a C static, not a look-up in the module's dict
_NOTHING: Final[Callable[[], None]] = _nothing
