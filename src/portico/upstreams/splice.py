"""A response body moved from a server socket to a client socket in the kernel (issue #18).

Why: relaying a big body through user space costs two copies per byte (recv into a buffer,
send out of it), which are most of the kernel time of a 1 MiB response (`perf`:
`_copy_to_iter` and `_copy_from_iter`, ~45% of the worker's time). splice(2) from the server
socket into a pipe takes references to the received pages, and splice(2) from the pipe into
the client socket hands the same pages to the client's send queue: no byte is copied by the
worker (HAProxy's `option splice-response` does the same, and NGINX's sendfile for files).

Owns one body's move (`BodySplice`) and the pipes (a few kept per worker, `_IDLE_PIPES`).
Never decides whether a body may be spliced (the proxy does: a plain HTTP/1.x client, a plain
server connection, a Content-Length body nothing has to see) nor what a failure means (its
`SpliceOwner`, the server connection, does). Both sockets are written and read through
duplicate descriptors that the loop watches (`add_reader`/`add_writer`); the transports keep
their own, the server's paused meanwhile, so their close and every other operation stay theirs
(`portico.proxy.local_body.send_file` does the same for files).

Flow control: at most `limit` bytes (the listener's `response_buffer`) are in the pipe at a
time, so a client that stops reading makes the worker hold no more than on the copying path
(and those bytes are the kernel's received pages, not copies). Reading the server waits while
the pipe holds bytes the client does not take; writing the client waits for it to be writable.
"""

from __future__ import annotations

import array
import asyncio
import errno
import fcntl
import os
import sys
import termios
from typing import Final, Protocol

# F_SETPIPE_SZ (Linux 2.6.35+; the fcntl module names it from Python 3.10)
_F_SETPIPE_SZ: Final = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ: Final = getattr(fcntl, "F_GETPIPE_SZ", 1032)
# SPLICE_F_MOVE is a hint; NONBLOCK: the pipe side never blocks (the sockets are non-blocking)
_FLAGS: Final = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
# pipes kept for the next body (each a pair of descriptors, empty)
KEEP_PIPES: Final = 8
_IDLE_PIPES: Final[list[tuple[int, int, int]]] = []  # (read end, write end, size)


# "off": bodies are copied as on other platforms (to compare, or to rule splicing out)
SPLICE_ENV: Final = "PORTICO_SPLICE"


def available() -> bool:
    """Whether bodies may be spliced: Linux, Python 3.10+, and not PORTICO_SPLICE=off."""
    if os.environ.get(SPLICE_ENV, "").lower() == "off":
        return False
    return sys.platform == "linux" and hasattr(os, "splice")


def _take_pipe(size: int) -> tuple[int, int, int]:
    """An empty pipe of at least `size` bytes' capacity (its real size is its third item);
    OSError when none can be made (EMFILE)."""
    while _IDLE_PIPES:
        pipe = _IDLE_PIPES.pop()
        if pipe[2] >= size:
            return pipe
        os.close(pipe[0])
        os.close(pipe[1])
    read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        try:
            real = fcntl.fcntl(write, _F_SETPIPE_SZ, size)
        except OSError:  # above /proc/sys/fs/pipe-max-size, or the user's pipe pages: as made
            real = fcntl.fcntl(write, _F_GETPIPE_SZ)
    except OSError:
        os.close(read)
        os.close(write)
        raise
    return read, write, real


def _give_pipe(pipe: tuple[int, int, int], empty: bool) -> None:
    """Keep `pipe` for the next body when it is `empty` and fewer than KEEP_PIPES are kept;
    else close it (bytes left in it belong to no one)."""
    if empty and len(_IDLE_PIPES) < KEEP_PIPES:
        _IDLE_PIPES.append(pipe)
        return
    os.close(pipe[0])
    os.close(pipe[1])


class SpliceOwner(Protocol):
    """What a `BodySplice` reports to (the server connection)."""

    def splice_moved(self, size: int) -> None:
        """`size` more body bytes reached the client's socket."""

    def splice_waits(self, for_client: bool) -> None:
        """Nothing moves until the client's socket takes more (`for_client`) or the server
        sends more: the owner arms the matching timeout."""

    def splice_done(self, trailing: bool) -> None:
        """The whole body reached the client's socket (the splice has closed itself);
        `trailing`: the server's socket holds bytes beyond it (the connection is out of step:
        the copying path sees such bytes in the body's last read and never reuses it)."""

    def splice_failed(self, reason: str, client: bool) -> None:
        """The move stopped (the splice has closed itself): the server ended early or failed
        (`client` false), or the client's socket failed (true)."""


class BodySplice:
    """Moves `count` bytes from `source` to `dest` (descriptors this object owns and closes)
    through a pipe, driven by the loop's readiness callbacks, at most `limit` in the pipe."""

    __slots__ = (
        "_count",
        "_dest",
        "_held",
        "_limit",
        "_loop",
        "_owner",
        "_pipe",
        "_reading",
        "_source",
        "_writing",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        source: int,
        dest: int,
        count: int,
        limit: int,
        owner: SpliceOwner,
    ) -> None:
        self._loop = loop
        self._source = source
        self._dest = dest
        self._count = count  # still to be read from the server
        self._held = 0  # read into the pipe, not yet taken by the client
        self._limit = limit
        self._owner = owner
        self._pipe: tuple[int, int, int] | None = None
        self._reading = False  # the loop watches `source` for us
        self._writing = False  # ... `dest`

    def start(self) -> None:
        """Begin with the next turn of the loop (the server's socket is watched: what it holds
        now is moved then). OSError when no pipe can be made, or the loop refuses to watch
        the descriptor (the caller goes on copying)."""
        self._pipe = _take_pipe(self._limit)
        self._loop.add_reader(self._source, self._step)
        self._reading = True
        self._owner.splice_waits(False)

    def close(self) -> None:
        """Stop (idempotent): nothing is watched, the descriptors are closed, the pipe kept
        if it is empty."""
        pipe, self._pipe = self._pipe, None
        if pipe is None and self._source < 0:
            return
        loop = self._loop
        if self._reading:
            self._reading = False
            loop.remove_reader(self._source)
        if self._writing:
            self._writing = False
            loop.remove_writer(self._dest)
        if self._source >= 0:
            os.close(self._source)
            os.close(self._dest)
            self._source = self._dest = -1
        if pipe is not None:
            _give_pipe(pipe, self._held == 0)

    def _step(self) -> None:
        """Move what can be moved now without blocking, then wait for the side that stops
        it: the client while the pipe holds bytes it has not taken, else the server."""
        pipe = self._pipe
        if pipe is None:
            return  # closed within this turn, after the loop picked the callback
        read_end, write_end, _ = pipe
        moved = 0
        while True:
            progress = False
            room = self._limit - self._held
            want = self._count if self._count < room else room
            if want > 0:
                try:
                    got = os.splice(self._source, write_end, want, flags=_FLAGS)
                except (BlockingIOError, InterruptedError):
                    got = -1
                except OSError as exc:
                    self._fail(f"server closed the connection ({_describe(exc)})", False, moved)
                    return
                if got == 0:
                    self._fail("server closed the connection", False, moved)
                    return
                if got > 0:
                    self._count -= got
                    self._held += got
                    progress = True
            held = self._held
            if held:
                try:
                    put = os.splice(read_end, self._dest, held, flags=_FLAGS)
                except (BlockingIOError, InterruptedError):
                    put = 0
                except OSError as exc:
                    self._fail(f"client: {_describe(exc)}", True, moved)
                    return
                if put > 0:
                    self._held = held - put
                    moved += put
                    progress = True
            if not progress:
                break
        owner = self._owner
        if moved:
            owner.splice_moved(moved)
            if self._pipe is None:
                return  # the owner closed it meanwhile
        if self._count == 0 and self._held == 0:
            trailing = _unread(self._source) > 0
            self.close()
            owner.splice_done(trailing)
            return
        self._wait(self._held > 0)

    def _wait(self, for_client: bool) -> None:
        loop = self._loop
        if for_client:
            if self._reading:
                self._reading = False
                loop.remove_reader(self._source)
            if not self._writing:
                self._writing = True
                loop.add_writer(self._dest, self._step)
        else:
            if self._writing:
                self._writing = False
                loop.remove_writer(self._dest)
            if not self._reading:
                self._reading = True
                loop.add_reader(self._source, self._step)
        self._owner.splice_waits(for_client)

    def _fail(self, reason: str, client: bool, moved: int) -> None:
        owner = self._owner
        if moved:
            owner.splice_moved(moved)
        self.close()
        owner.splice_failed(reason, client)


def _unread(fd: int) -> int:
    """Bytes waiting in socket `fd`'s receive queue (FIONREAD); 0 if it cannot say."""
    count = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, count)
    except OSError:
        return 0
    return count[0]


def _describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0)
    return type(exc).__name__ if name is None else f"{type(exc).__name__}: {name}"
