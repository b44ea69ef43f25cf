"""Streaming one of Portico's own answers to a client: a `BodySource` read piece by piece, or
a body through transforms, with back-pressure.

Owns `stream_local` (the coroutine an exchange spawns for such an answer) and `send_file`
(sendfile(2) on a plain HTTP/1.1 connection: the file's bytes go from the page cache to the
socket without passing through Python). Each piece is read only once the client's side is
writable (its socket buffer, or an HTTP/2 stream's queue, below the high-water mark), so a
slow client holds one piece in memory, not the body. The answer's head and framing are the
framer's (`portico.proxy.framing`); the exchange is told the end (`local_sent`) or the
failure (`local_failed`). Plain Python: not compiled.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Final, Protocol

from portico.outbox import OUTBOX
from portico.pipeline import TURN_BUDGET, TransformChain, TransformFailed
from portico.proxy.framing import BODY_NONE, BODY_UNKNOWN, ResponseFramer

if TYPE_CHECKING:
    from portico.http.headers import Header
    from portico.http.local import BodySource

__all__ = [
    "PIECE",
    "LocalSink",
    "send_file",
    "stream_local",
    "transform_executor",
]

log = logging.getLogger("portico.proxy")

PIECE: Final = 64 * 1024  # bytes read from a source at a time
SENDFILE_PIECE: Final = 1 << 20  # bytes one sendfile(2) call may send
# the worker threads that transform large pieces: as many as CPUs (more would only queue for
# the same cores, and contend with the event loop's thread for the GIL between steps)
_workers: list[ThreadPoolExecutor] = []


def transform_executor() -> ThreadPoolExecutor:
    """This process's pool of threads for large transform steps (made on first use)."""
    if not _workers:
        _workers.append(
            ThreadPoolExecutor(
                max_workers=max(1, (os.cpu_count() or 2) - 1), thread_name_prefix="transform"
            )
        )
    return _workers[0]


class LocalSink(Protocol):
    """What `stream_local` needs of its exchange (`portico.proxy.l7.Exchange`)."""

    @property
    def method(self) -> bytes: ...
    @property
    def finished(self) -> bool: ...

    async def wait_writable(self) -> None: ...
    def local_started(self) -> None: ...
    def local_sent(self, head_len: int, sent: int, keep: bool) -> None: ...
    def local_failed(self, head_len: int, sent: int, error: str) -> None: ...


async def stream_local(
    exchange: LocalSink,
    framer: ResponseFramer,
    pipe: TransformChain | None,
    status: int,
    reason: bytes,
    headers: list[Header],
    body: bytes,
    source: BodySource | None,
    keep: bool,
    send_timeout: float,
) -> None:
    """Send a local answer: head, then `body` or `source` through `pipe` (if any), then the
    end. A HEAD request, a 204 or a 304 gets the head only (with the GET's Content-Length
    when it is known and not transformed)."""
    head_len = 0
    sent = 0
    try:
        fields = [h for h in headers if h[0].lower() != b"content-length"]
        known = source.length if source is not None else len(body)
        no_body = exchange.method == b"HEAD" or status == 204 or status == 304
        if no_body:
            if pipe is not None:
                pipe.abort()
                pipe = None
            if known is not None and status != 204 and status != 304:
                fields.append((b"Content-Length", b"%d" % known))
            length = BODY_NONE
        elif pipe is not None or known is None:
            length = BODY_UNKNOWN
        else:
            length = known
        head_len = framer.send_response_head(status, reason, fields, length, None, keep)
        if not no_body:
            if source is None:
                out = pipe.feed(body) if pipe is not None else body
                if out:
                    framer.send_body(out)
                    sent += len(out)
                    exchange.local_started()
            else:
                span = source.file_range() if pipe is None else None
                transport = framer.raw_transport() if span is not None else None
                if span is not None and transport is not None:
                    framer.send_body(b"")  # the staged head, alone
                    exchange.local_started()
                    sent += await send_file(
                        transport, span[0], span[1], span[2], exchange, send_timeout
                    )
                    framer.sent_raw(sent)
                else:
                    while True:
                        await exchange.wait_writable()
                        if exchange.finished:
                            return
                        data = await source.read(PIECE)
                        if exchange.finished:
                            return
                        if not data:
                            break
                        if pipe is None:
                            out = data
                        elif pipe.threaded and len(data) >= pipe.offload_min:
                            # compressed in a worker thread: the loop serves others meanwhile
                            loop = asyncio.get_running_loop()
                            out = await loop.run_in_executor(transform_executor(), pipe.feed, data)
                            if exchange.finished:
                                return
                        else:
                            if pipe.threaded:  # within this turn's budget, or in a later turn
                                loop = asyncio.get_running_loop()
                                if not TURN_BUDGET.take(len(data), pipe.offload_min, loop):
                                    turn = loop.create_future()
                                    TURN_BUDGET.wait(
                                        len(data), pipe.offload_min, loop, partial(_set, turn)
                                    )
                                    await turn
                                    if exchange.finished:
                                        return
                            out = pipe.feed(data)
                        if out:
                            framer.send_body(out)
                            if not sent:
                                exchange.local_started()
                            sent += len(out)
            if pipe is not None:
                tail = pipe.end()
                if tail:
                    framer.send_body(tail)
                    if not sent:
                        exchange.local_started()
                    sent += len(tail)
        if exchange.finished:
            return
        framer.send_end()
        exchange.local_sent(head_len, sent, keep)
    except TransformFailed as exc:
        exchange.local_failed(head_len, sent, str(exc))
    except (ConnectionError, TimeoutError) as exc:  # the client left, or stopped reading
        exchange.local_failed(head_len, sent, f"client: {type(exc).__name__}")
    except Exception as exc:  # a source that failed (a file gone unreadable, a cache error)
        if pipe is not None:
            pipe.abort()
        log.error("a local answer's body failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
        exchange.local_failed(head_len, sent, f"{type(exc).__name__}: {exc}")
    finally:
        if source is not None:
            source.close()


async def send_file(
    transport: asyncio.Transport,
    fd: int,
    offset: int,
    count: int,
    exchange: LocalSink,
    send_timeout: float,
) -> int:
    """sendfile(2) `count` bytes of `fd` from `offset` to the transport's socket, once what the
    transport buffered is out; returns the bytes sent. The socket is written through a
    duplicate descriptor that the loop watches for writability (the transport's own is the
    loop's), so the connection's reads and close stay the transport's. A client that takes
    nothing for `send_timeout` seconds raises TimeoutError (the connection's send timeout)."""
    OUTBOX.flush_to(transport)  # the head (and anything before it) goes first, then the file
    loop = asyncio.get_running_loop()
    sock = transport.get_extra_info("socket")
    own = os.dup(sock.fileno())
    sent = 0
    try:
        while transport.get_write_buffer_size() and not exchange.finished:
            await _writable(loop, own, send_timeout)
        while count > 0 and not exchange.finished:
            try:
                done = os.sendfile(own, fd, offset, min(count, SENDFILE_PIECE))
            except (BlockingIOError, InterruptedError):
                await _writable(loop, own, send_timeout)
                continue
            if done == 0:
                raise OSError(f"the file ended {count} bytes early")
            sent += done
            offset += done
            count -= done
    finally:
        os.close(own)
    return sent


async def _writable(loop: asyncio.AbstractEventLoop, fd: int, limit: float) -> None:
    waiter: asyncio.Future[None] = loop.create_future()
    loop.add_writer(fd, _set, waiter)
    try:
        async with asyncio.timeout(limit):
            await waiter
    finally:
        loop.remove_writer(fd)


def _set(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
