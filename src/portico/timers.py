"""Resettable deadlines that are cheap to arm, push back and drop on the hot path.

Connections re-arm their timeouts on every read, and every client connection arms one at
accept. A loop TimerHandle per deadline cost an allocation per arm, and its making and
cancelling (libuv's timer, uvloop's two objects) ~5 us per short-lived connection. Instead the
deadlines of one loop share one TimerHandle (`Timers`): a heap of when each is due, the handle
set for the earliest. `set` only stores the new deadline when it is later than the one in the
heap, and an entry that comes up early goes back for the remainder (the lazy-timer technique
of NGINX's and HAProxy's timer trees). Entries of deadlines pushed earlier or cancelled stay in
the heap, ignored, until they come up or outnumber the live ones (then the heap is rebuilt):
nothing is searched.

A new entry is not pushed on the heap at once but appended to a list of those made since the
handle last fired (`_fresh`; the handle is still set for it if it is the earliest): most are
dropped before that (a short connection's header timeout, cancelled when it closes), and
those never cost a heap push (~800 instructions a connection). Whatever is still live goes
on the heap when the handle fires, before anything is run.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from heapq import heapify, heappop, heappush
from typing import Final

_NEVER: Final = float("inf")
# The context the shared timer runs in. The loop would otherwise copy the current one for
# each handle; none of Portico's timeout callbacks reads or sets a context variable.
_CONTEXT: Final = contextvars.Context()
# Stale heap entries tolerated before a rebuild is considered (then: when they are the most)
_STALE_MIN: Final = 64


class Timers:
    """The deadlines of one loop: a heap of (when, number, deadline), the entries not yet on it
    (`_fresh`), and one TimerHandle, set no later than the earliest of either. An entry counts
    while its number is its deadline's `_seq`."""

    __slots__ = ("_at", "_clock", "_fresh", "_handle", "_heap", "_loop", "_seq", "_stale")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # the loop's clock bound once: each Deadline.set reads it (a method look-up on the
        # loop otherwise, ~200 instructions)
        self._clock: Callable[[], float] = loop.time
        self._heap: list[tuple[float, int, Deadline]] = []
        self._fresh: list[tuple[float, int, Deadline]] = []  # added since the handle fired
        self._handle: asyncio.TimerHandle | None = None
        self._at = _NEVER  # when the handle is due (_NEVER: no handle)
        self._seq = 0
        self._stale = 0

    def __len__(self) -> int:
        """Entries held, stale ones included (what memory they take)."""
        return len(self._heap) + len(self._fresh)

    def time(self) -> float:
        return self._clock()

    def add(self, when: float, deadline: Deadline) -> int:
        """Hold an entry for `deadline` at `when`; returns the entry's number."""
        seq = self._seq = self._seq + 1
        self._fresh.append((when, seq, deadline))  # on the heap when the handle fires
        if when < self._at:
            self._schedule(when)
        return seq

    def dropped(self) -> None:
        """An entry no longer counts (its deadline was set earlier, or cancelled)."""
        stale = self._stale = self._stale + 1
        heap = self._heap
        fresh = self._fresh
        if stale > _STALE_MIN and stale * 2 > len(heap) + len(fresh):
            live = [entry for entry in heap if entry[2]._seq == entry[1]]
            heapify(live)
            self._heap = live
            self._fresh = [entry for entry in fresh if entry[2]._seq == entry[1]]
            self._stale = 0

    def _schedule(self, when: float) -> None:
        handle = self._handle
        if handle is not None:
            handle.cancel()
        self._at = when
        self._handle = self._loop.call_at(when, self, context=_CONTEXT)

    def __call__(self) -> None:
        """The handle fired: run the deadlines that are due, put back those pushed later."""
        self._handle = None
        self._at = _NEVER
        fresh = self._fresh
        if fresh:
            self._fresh = []
            heap = self._heap
            for entry in fresh:
                if entry[2]._seq == entry[1]:
                    heappush(heap, entry)
                else:
                    self._stale -= 1  # dropped before it reached the heap
        loop = self._loop
        now = loop.time()
        later: list[tuple[float, Deadline]] = []
        while self._heap:  # (a callback's cancel may rebuild it)
            heap = self._heap
            entry = heap[0]
            if entry[0] > now:
                break
            heappop(heap)
            deadline = entry[2]
            if deadline._seq != entry[1]:
                self._stale -= 1
                continue
            deadline._seq = 0
            deadline._at = _NEVER
            when = deadline._when
            if when == 0.0:
                continue  # cleared since
            if when > now:
                later.append((when, deadline))  # pushed back: after this round
                continue
            deadline._when = 0.0
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
        for when, deadline in later:
            if deadline._seq == 0 and deadline._when == when:  # not set again meanwhile
                deadline._at = when
                deadline._seq = self.add(when, deadline)
        heap = self._heap
        if heap and heap[0][0] < self._at:
            self._schedule(heap[0][0])


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

    __slots__ = ("_at", "_callback", "_owner", "_seq", "_timers", "_when")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        callback: Callable[..., None],
        owner: object = None,
    ) -> None:
        self._timers = timers_of(loop)
        self._callback = callback
        self._owner = owner
        self._at = _NEVER  # when its heap entry is due (_NEVER: none)
        self._seq = 0  # its heap entry's number (0: none)
        self._when = 0.0  # 0.0 = not armed

    def set(self, seconds: float) -> None:
        timers = self._timers
        when = self._when = timers.time() + seconds
        if when < self._at:
            if self._seq:
                self._seq = 0
                timers.dropped()
            self._at = when
            self._seq = timers.add(when, self)

    def clear(self) -> None:
        """Disarm; the heap entry, if any, will come up once and do nothing."""
        self._when = 0.0

    def cancel(self) -> None:
        """Disarm for good, for a connection that is going away: the callback, a bound method
        of the owner, and the owner are dropped. That breaks the cycle owner -> deadline ->
        owner, so the owner (and, for TLS, the ~100 KiB of OpenSSL state its transport holds)
        is freed at once instead of waiting for a full garbage collection; the heap keeps only
        this small object until its entry comes up or the heap is rebuilt."""
        self._when = 0.0
        self._at = _NEVER
        self._callback = _NOTHING
        self._owner = None
        if self._seq:
            self._seq = 0
            self._timers.dropped()

    @property
    def armed(self) -> bool:
        return self._when != 0.0


def _nothing() -> None:
    pass


# Final: the compiled build reads it as a C static, not a look-up in the module's dict
_NOTHING: Final[Callable[[], None]] = _nothing
