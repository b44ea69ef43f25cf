"""The access log: one line per request, formatted on the loop, written by a background thread.

Owns the access record (what is logged about one request), the two line formats (`combined`,
NGINX's; `json`, one object per line), the escaping that keeps a client from forging lines,
`AccessLogWriter`, which gets lines from the event loop to a file or stdout, and
`AccessLogStage`, the log as a stage of the request pipeline's done phase. The formatters are
*pure*: plain values in, bytes out, no clock, no I/O. The writer never blocks the event loop: the
loop only appends to a list; a flush hands one joined buffer to a single writer thread, and when
that thread falls behind (a stalled disk, a full pipe) lines are dropped and counted rather than
held without bound. Never decides what a request's values are (the proxy measures them) and
never uses the `logging` machinery per line (only for the rare warning about itself).

Combined format: NGINX's ``combined`` exactly, then Portico's fields, each one token::

    $remote_addr - - [$time_local] "$request" $status $body_bytes_sent "$http_referer"
    "$http_user_agent" rid=<request id> route=<route> pool=<pool> backend=<server>
    rt=<total s> uct=<upstream connect s> urt=<upstream response head s>

(one line). Times are seconds with millisecond resolution, like NGINX's ``$request_time``; an
absent value is ``-`` (``uct=-``: a pooled connection was reused; ``urt=-`` and ``backend=-``:
no server answered). ``urt`` is the time from sending the request to the server until its
response head arrived (NGINX calls this ``$upstream_header_time``). ``[$time_local]`` is the time
the request *started* (Apache's ``%t``, HAProxy's accept date); NGINX stamps the time of logging,
which is this plus ``rt``.

JSON format: the keys are `AccessRecord`'s field names, in its order, except that ``start``
becomes ``time`` (ISO 8601, UTC, milliseconds); durations are numbers of seconds with three
decimals; absent values are ``null``. Bytes from the client are decoded as UTF-8 (written as
UTF-8, not ``\\u`` escapes, except control characters); bytes that are not UTF-8 appear as
``\\xHH`` text.
"""

from __future__ import annotations

import contextlib
import enum
import io
import json
import logging
import os
import queue
import select
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from portico.pipeline import ExchangeView, Outcome

__all__ = [
    "FORMATS",
    "AccessLogWriter",
    "AccessRecord",
    "Format",
    "Sink",
    "access_record",
    "escape",
    "format_combined",
    "format_json",
    "open_sink",
    "split_lines",
]

log = logging.getLogger("portico.access_log")

Format = Literal["combined", "json"]


@dataclass(slots=True)
class AccessRecord:
    """What is logged about one request, built once when it ends from values the proxy has.

    Durations are seconds (monotonic clock differences); `start` is wall-clock seconds since the
    epoch (`time.time()`) when the request head arrived. Header values are the client's bytes
    (None: the header was absent). `status` is what the client was sent (NGINX logs 499 when the
    client left before any response: pass that). `bytes_sent` counts head and body bytes written
    to the client (NGINX's ``$bytes_sent``), `body_bytes_sent` only the body as framed on the
    wire (``$body_bytes_sent``; Portico's own answers included: a 502's 16 bytes are 16), and
    `bytes_received` the request body as received. The totals per listener, heads included,
    are the metrics ``portico_client_received_bytes`` and ``portico_client_sent_bytes``.
    """

    start: float
    client_ip: str
    method: bytes
    target: bytes  # as the client sent it (before any prefix rewrite)
    version: str  # "1.1", "1.0" or "2.0" (HTTP/2, logged as NGINX does)
    status: int
    bytes_sent: int
    body_bytes_sent: int
    bytes_received: int
    referer: bytes | None
    user_agent: bytes | None
    host: bytes | None
    request_id: bytes
    listener: str
    route: str | None
    pool: str | None
    backend: str | None  # the server's name; None when no server answered
    duration: float  # head received -> last response byte written
    upstream_connect: float | None  # None: a pooled connection was reused, or none was made
    upstream_response: float | None  # request sent -> response head received; None: no head


class AccessLogStage:
    """The access log as a done-phase stage: one record per request, from its `Outcome`."""

    __slots__ = ("writer",)

    name = "access_log"

    def __init__(self, writer: AccessLogWriter) -> None:
        self.writer = writer

    def on_done(self, exchange: ExchangeView, outcome: Outcome) -> None:
        self.writer.log(
            access_record(
                duration=outcome.duration_s,
                headers=exchange.headers,
                client_ip=outcome.client_ip,
                method=exchange.method,
                target=outcome.target,
                version=exchange.version,
                status=outcome.status,
                head_bytes=outcome.head_bytes,
                body_bytes=outcome.bytes_sent,
                received=outcome.received,
                host=exchange.head.host,
                request_id=outcome.request_id,
                listener=outcome.listener,
                route=outcome.route,
                pool=outcome.pool,
                backend=outcome.server,
                upstream_connect=outcome.connect_s,
                upstream_response=outcome.response_s,
            )
        )


def access_record(
    *,
    duration: float,
    headers: Sequence[tuple[bytes, bytes]],
    client_ip: str,
    method: bytes,
    target: bytes,
    version: str,
    status: int,
    head_bytes: int,
    body_bytes: int,
    received: int,
    host: bytes | None,
    request_id: bytes | None,
    listener: str,
    route: str | None,
    pool: str | None,
    backend: str | None,
    upstream_connect: float | None,
    upstream_response: float | None,
) -> AccessRecord:
    """The record of a request that ended `duration` seconds after its head arrived, from what
    the proxy measured: Referer and User-Agent are picked from the request's `headers`, the
    start is the wall clock now minus `duration`. (Reads the wall clock: not pure.)"""
    referer = user_agent = None
    for name, value in headers:
        low = name.lower()
        if low == b"referer":
            referer = value
        elif low == b"user-agent":
            user_agent = value
    return AccessRecord(
        start=time.time() - duration,
        client_ip=client_ip,
        method=method,
        target=target,
        version=version,
        status=status,
        bytes_sent=head_bytes + body_bytes,
        body_bytes_sent=body_bytes,
        bytes_received=received,
        referer=referer,
        user_agent=user_agent,
        host=host,
        request_id=request_id or b"-",
        listener=listener,
        route=route,
        pool=pool,
        backend=backend,
        duration=duration,
        upstream_connect=upstream_connect,
        upstream_response=upstream_response,
    )


# ---------------------------------------------------------------------------------------------
# Escaping (NGINX's `escape=default`: ngx_http_log_escape)

# Control characters, '"', '\' and every byte from DEL up become \xHH (upper-case hex, as NGINX
# writes them): a client cannot end a line, close a quoted field early, or smuggle a terminal
# escape sequence into someone's `tail -f`.
_ESCAPES: Final[list[bytes]] = [bytes([b]) for b in range(256)]
for _b in (*range(0x20), 0x22, 0x5C, *range(0x7F, 0x100)):
    _ESCAPES[_b] = b"\\x%02X" % _b
_SAFE: Final = bytes(b for b in range(256) if len(_ESCAPES[b]) == 1)
# Portico's key=value fields must also stay one token: a space is escaped there too.
_TOKEN_SAFE: Final = _SAFE.replace(b" ", b"")


def escape(value: bytes) -> bytes:
    """`value` as NGINX's access log writes it: unchanged unless it holds a byte to escape."""
    # bytes.translate with a delete table is one C pass: nothing left means nothing to escape
    if not value.translate(None, _SAFE):
        return value
    return b"".join([_ESCAPES[b] for b in value])


def _escape_token(value: bytes) -> bytes:
    if not value.translate(None, _TOKEN_SAFE):
        return value or b"-"
    return b"".join([b"\\x20" if b == 0x20 else _ESCAPES[b] for b in value])


# Names come from the config (a few dozen); their escaped form is looked up, not recomputed.
_tokens: dict[str | None, bytes] = {None: b"-"}


def _token(name: str | None) -> bytes:
    out = _tokens.get(name)
    if out is None:
        assert name is not None
        if len(_tokens) > 4096:  # configs change on reload: never grow without bound
            _tokens.clear()
            _tokens[None] = b"-"
        out = _tokens[name] = _escape_token(name.encode())
    return out


# ---------------------------------------------------------------------------------------------
# Time stamps: formatted once per second, not once per line

_MONTHS: Final = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun")
_MONTHS_2: Final = (b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")
_MONTH_NAMES: Final = _MONTHS + _MONTHS_2  # English whatever the locale, as NGINX's

_local_second = -1
_local_stamp = b""
_utc_second = -1
_utc_stamp = ""


def _local_time(second: int) -> bytes:
    """`10/Oct/2000:13:55:36 -0700`: NGINX's `$time_local` for `second`, in local time."""
    global _local_second, _local_stamp
    if second != _local_second:
        t = time.localtime(second)
        offset = (t.tm_gmtoff or 0) // 60
        sign = b"+" if offset >= 0 else b"-"
        offset = abs(offset)
        _local_stamp = b"%02d/%s/%d:%02d:%02d:%02d %s%02d%02d" % (
            t.tm_mday,
            _MONTH_NAMES[t.tm_mon - 1],
            t.tm_year,
            t.tm_hour,
            t.tm_min,
            t.tm_sec,
            sign,
            offset // 60,
            offset % 60,
        )
        _local_second = second
    return _local_stamp


def _iso_time(start: float) -> str:
    """`2000-10-10T20:55:36.123Z`: `start` in ISO 8601, UTC, to the millisecond."""
    global _utc_second, _utc_stamp
    ms = int(start * 1000.0 + 0.5)  # to the nearest millisecond (start is never negative)
    second = ms // 1000
    ms -= second * 1000
    if second != _utc_second:
        t = time.gmtime(second)
        _utc_stamp = f"{t[0]}-{t[1]:02d}-{t[2]:02d}T{t[3]:02d}:{t[4]:02d}:{t[5]:02d}"
        _utc_second = second
    return f"{_utc_stamp}.{ms:03d}Z"


def _reset_time_caches() -> None:
    """Forget the formatted stamps (after a time zone change: tests only)."""
    global _local_second, _utc_second
    _local_second = _utc_second = -1


# ---------------------------------------------------------------------------------------------
# Formatters (pure)


_COMBINED: Final = (
    b'%s - - [%s] "%s" %03d %d "%s" "%s"'  # NGINX's combined, byte for byte
    b" rid=%s route=%s pool=%s backend=%s rt=%.3f uct=%s urt=%s\n"
)


def format_combined(record: AccessRecord) -> bytes:
    """One line (with its newline) in NGINX's `combined` format plus Portico's fields."""
    referer = record.referer
    user_agent = record.user_agent
    upstream_connect = record.upstream_connect
    upstream_response = record.upstream_response
    return _COMBINED % (
        record.client_ip.encode(),
        _local_time(int(record.start)),
        escape(b"%s %s HTTP/%s" % (record.method, record.target, record.version.encode())),
        record.status,
        record.body_bytes_sent,
        b"-" if referer is None else escape(referer),
        b"-" if user_agent is None else escape(user_agent),
        _escape_token(record.request_id),
        _token(record.route),
        _token(record.pool),
        _token(record.backend),
        record.duration,
        b"-" if upstream_connect is None else b"%.3f" % upstream_connect,
        b"-" if upstream_response is None else b"%.3f" % upstream_response,
    )


# JSON strings: the C escaper json.dumps uses, with ensure_ascii=False (quotes, backslashes and
# control characters escaped; other characters as they are). The object itself is one template:
# json's encoder formats floats through a Python function, several times slower than this.
_json_string: Final[Callable[[str], str]] = json.encoder.encode_basestring

_JSON: Final = (
    '{"time":"%s","client_ip":%s,"method":%s,"target":%s,"version":%s,"status":%d,'
    '"bytes_sent":%d,"body_bytes_sent":%d,"bytes_received":%d,"referer":%s,"user_agent":%s,'
    '"host":%s,"request_id":%s,"listener":%s,"route":%s,"pool":%s,"backend":%s,'
    '"duration":%.3f,"upstream_connect":%s,"upstream_response":%s}\n'
)


# JSON leaves C1 controls and the Unicode line separators raw; a terminal may act on the first
# (U+009B is CSI) and some line readers split on the others. Escaped after `_json_string`.
_JSON_UNSAFE: Final = {c: f"\\u{c:04x}" for c in (*range(0x80, 0xA0), 0x2028, 0x2029)}


def _json_text(value: bytes | None) -> str:
    if value is None:
        return "null"
    if value.isascii():
        return _json_string(value.decode("ascii"))
    return _json_string(value.decode("utf-8", "backslashreplace")).translate(_JSON_UNSAFE)


def _json_name(value: str | None) -> str:
    return "null" if value is None else _json_string(value)


def format_json(record: AccessRecord) -> bytes:
    """One line (with its newline): a JSON object with `AccessRecord`'s fields as keys."""
    upstream_connect = record.upstream_connect
    upstream_response = record.upstream_response
    return (
        _JSON
        % (
            _iso_time(record.start),
            _json_string(record.client_ip),
            _json_text(record.method),
            _json_text(record.target),
            _json_string(record.version),
            record.status,
            record.bytes_sent,
            record.body_bytes_sent,
            record.bytes_received,
            _json_text(record.referer),
            _json_text(record.user_agent),
            _json_text(record.host),
            _json_text(record.request_id),
            _json_string(record.listener),
            _json_name(record.route),
            _json_name(record.pool),
            _json_name(record.backend),
            record.duration,
            "null" if upstream_connect is None else f"{upstream_connect:.3f}",
            "null" if upstream_response is None else f"{upstream_response:.3f}",
        )
    ).encode()


FORMATS: Final[dict[str, Callable[[AccessRecord], bytes]]] = {
    "combined": format_combined,
    "json": format_json,
}


# ---------------------------------------------------------------------------------------------
# The writer


class Sink(Protocol):
    """Where the writer thread puts bytes: a raw (unbuffered) binary file, or a test's fake.

    `write` may write less than it was given and returns how much it wrote (None: a
    non-blocking descriptor would have blocked).
    """

    def write(self, data: bytes | memoryview, /) -> int | None: ...

    def close(self) -> None: ...


def open_sink(path: str | None) -> Sink:
    """Stdout for None or ``-`` (the descriptor, not `sys.stdout`'s buffer), else `path`
    opened for appending. Unbuffered: each write is one `write(2)`, and with O_APPEND the
    workers' writes to one file never overwrite each other."""
    if path is None or path == "-":
        return open(1, "wb", buffering=0, closefd=False)  # closed by the writer
    return open(path, "ab", buffering=0)


class _Handle(Protocol):
    def cancel(self) -> None: ...


class _Loop(Protocol):
    """What `start` needs of an event loop (asyncio's and uvloop's have it)."""

    def call_later(self, delay: float, callback: Callable[[], object], /) -> _Handle: ...


class _Command(enum.Enum):
    REOPEN = 1
    STOP = 2


FLUSH_SIZE: Final = 64 * 1024  # buffered bytes that trigger a flush before the timer does
FLUSH_INTERVAL: Final = 0.1  # seconds between timed flushes
MAX_PENDING: Final = 4 * 1024 * 1024  # bytes the thread may be behind before lines are dropped
WARN_INTERVAL: Final = 1.0  # at most one warning about dropped lines per this many seconds


class AccessLogWriter:
    """Lines from the event loop to a file or stdout, without the loop ever waiting.

    Loop side: `append` (or `log`) adds a line to a list, O(1) and no system call; `flush`
    joins the list into one buffer and hands it to the writer thread (a queue put). Flushes
    happen when `flush_size` bytes are buffered and every `interval` seconds once `start`ed.
    Thread side: one `write` per buffer (for a pipe or socket, one per `PIPE_BUF` of whole
    lines, so that several workers' lines never interleave mid-line). If the thread is more
    than `max_pending` bytes behind, a flush drops its lines and counts them in `dropped`.

    Not thread-safe on the loop side: one writer per event loop.
    """

    def __init__(
        self,
        path: str | None,
        format: Format = "combined",
        *,
        flush_size: int = FLUSH_SIZE,
        interval: float = FLUSH_INTERVAL,
        max_pending: int = MAX_PENDING,
        opener: Callable[[], Sink] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.format: Format = format
        self._formatter = FORMATS[format]
        self._opener: Callable[[], Sink] = opener or (lambda: open_sink(path))
        sink = self._opener()  # here, not in the thread: a bad path fails the caller at once
        self._flush_size = flush_size
        self._interval = interval
        self._max_pending = max_pending
        self._clock = clock
        # loop side: only the event loop's thread touches these
        self._lines: list[bytes] = []
        self._size = 0
        self._submitted = 0  # bytes handed to the thread, ever
        self._dropped = 0
        self._unreported = 0  # dropped lines not yet in a warning
        self._warned_at = -WARN_INTERVAL
        self._loop: _Loop | None = None
        self._timer: _Handle | None = None
        self._closed = False
        # thread side: only the writer thread changes these (the loop reads `_done` to know
        # how far behind it is; two counters, each with one writer, need no lock)
        self._done = 0  # bytes the thread has finished with (written, or lost to an error)
        self._lost = 0  # lines lost to write errors
        self._error_at = -WARN_INTERVAL
        self._queue: queue.SimpleQueue[bytes | _Command] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, args=(sink,), name="portico-access-log", daemon=True
        )
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Lines that never reached the log: the writer was behind, or a write failed."""
        return self._dropped + self._lost

    @property
    def pending(self) -> int:
        """Bytes handed to the writer thread and not yet written."""
        return self._submitted - self._done

    # -- loop side ---------------------------------------------------------------------------

    def log(self, record: AccessRecord) -> None:
        """Format `record` in this writer's format and buffer the line."""
        self.append(self._formatter(record))

    def append(self, line: bytes) -> None:
        """Buffer one formatted line (ending in a newline); flush if the buffer is full."""
        self._lines.append(line)
        size = self._size + len(line)
        self._size = size
        if size >= self._flush_size:
            self.flush()

    def flush(self) -> None:
        """Hand what is buffered to the writer thread (or drop it, if the thread is behind)."""
        lines = self._lines
        if lines:
            data = b"".join(lines)
            self._lines = []
            self._size = 0
            if self._closed:
                self._dropped += len(lines)
            elif self._submitted - self._done + len(data) > self._max_pending:
                self._dropped += len(lines)
                self._unreported += len(lines)
            else:
                self._submitted += len(data)
                self._queue.put(data)
        if self._unreported:
            self._warn_dropped()

    def start(self, loop: _Loop) -> None:
        """Flush every `interval` seconds on `loop` until `close`."""
        if self._timer is None and not self._closed:
            self._loop = loop
            self._timer = loop.call_later(self._interval, self._tick)

    def reopen(self) -> None:
        """Open the path again (after logrotate moved the file): what was logged before this
        call goes to the old file, what is logged after it to the new one."""
        self.flush()
        if not self._closed:
            self._queue.put(_Command.REOPEN)

    def close(self, timeout: float | None = 5.0) -> bool:
        """Flush, stop the timer, let the thread write everything and close the file.

        Blocks for at most `timeout` seconds (it is for shutdown); True when every line handed
        to the thread was written (or lost to a reported error) in that time.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._closed:
            self.flush()
            self._closed = True
            self._queue.put(_Command.STOP)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _tick(self) -> None:
        self._timer = None
        self.flush()
        loop = self._loop
        if loop is not None and not self._closed:
            self._timer = loop.call_later(self._interval, self._tick)

    def _warn_dropped(self) -> None:
        now = self._clock()
        if now - self._warned_at >= WARN_INTERVAL:
            self._warned_at = now
            log.warning(
                "access log %s: writer %d bytes behind, dropped %d lines (%d in all)",
                self.path or "-",
                self.pending,
                self._unreported,
                self._dropped,
            )
            self._unreported = 0

    # -- thread side -------------------------------------------------------------------------

    def _run(self, sink: Sink) -> None:
        limit = _atomic_limit(sink)
        while True:
            item = self._queue.get()
            if item is _Command.STOP:
                break
            if item is _Command.REOPEN:
                try:
                    fresh = self._opener()
                except OSError as exc:
                    log.error("access log %s: cannot reopen, kept the old file: %s", self.path, exc)
                    continue
                with contextlib.suppress(OSError):
                    sink.close()
                sink = fresh
                limit = _atomic_limit(sink)
                continue
            assert isinstance(item, bytes)
            try:
                if limit is None or len(item) <= limit:
                    _write_all(sink, item)
                else:
                    for piece in split_lines(item, limit):
                        _write_all(sink, piece)
            except OSError as exc:
                self._lost += item.count(b"\n")
                now = self._clock()
                if now - self._error_at >= WARN_INTERVAL:
                    self._error_at = now
                    log.error("access log %s: write failed: %s", self.path or "-", exc)
            finally:
                self._done += len(item)
        with contextlib.suppress(OSError):
            sink.close()


def _atomic_limit(sink: Sink) -> int | None:
    """None when one write of any size keeps lines whole (a regular file opened O_APPEND, or a
    fake); else PIPE_BUF, the size up to which a pipe write is atomic (POSIX)."""
    fileno = getattr(sink, "fileno", None)
    if fileno is None:
        return None
    try:
        mode = os.fstat(fileno()).st_mode
    except (OSError, ValueError, io.UnsupportedOperation):
        return None
    return None if stat.S_ISREG(mode) else select.PIPE_BUF


def split_lines(data: bytes, limit: int) -> list[memoryview]:
    """`data` cut after newlines into pieces of at most `limit` bytes; a line longer than
    `limit` is a piece of its own."""
    view = memoryview(data)
    out: list[memoryview] = []
    start = 0
    end = len(data)
    while end - start > limit:
        cut = data.rfind(b"\n", start, start + limit) + 1
        if cut <= start:
            cut = data.find(b"\n", start + limit) + 1 or end
        out.append(view[start:cut])
        start = cut
    if start < end:
        out.append(view[start:])
    return out


def _write_all(sink: Sink, data: bytes | memoryview) -> None:
    """Write all of `data`: usually one call; more only after a short write."""
    view = memoryview(data)
    while view:
        n = sink.write(view)
        if n is None:  # a non-blocking descriptor (stdout can be one): wait until writable
            fileno = getattr(sink, "fileno", None)
            if fileno is None:
                raise BlockingIOError("the access log sink would block")
            select.select([], [fileno()], [])
            continue
        view = view[n:]
