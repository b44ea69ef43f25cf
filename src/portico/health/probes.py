"""Active health probes: one attempt against one server, turned into a verdict.

Owns: what a probe sends (a TCP connect, or one HTTP/1.1 request with `Connection: close`), how
the answer is judged (status range, body substring within a size bound), and the wording of
the verdict. `probe()` is bounded in time, always closes its connection and never raises: a
failure of any kind is a verdict (`ok=False`) with a short human-readable reason.

Never: schedules probes, counts rise/fall or decides that a server is up or down (that is the
health state machine's job), retries, logs, or keeps anything between two calls. The control
plane runs these once per instance and tells the workers; nothing here knows about workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httptools

from portico.http.headers import BodyKind, response_body_kind
from portico.plugins import Probe, ProbeResult

if TYPE_CHECKING:
    from portico.config.schema import HttpCheckConfig

# A response head larger than this is refused: the probe must stay cheap whatever a broken
# server sends (llhttp itself sets no bound on a head).
MAX_HEAD = 64 * 1024
_READ_SIZE = 64 * 1024
_DETAIL_LIMIT = 160  # a detail is one line in a log or the admin page

# RFC 9110 §5.6.2 token characters, for the request method
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# what a request target and a Host value may hold: no whitespace and no control characters, so
# nothing can end the request line or a header early (bytes >= 0x80 are left to the server)
_FIELD = frozenset(range(0x21, 0x100)) - {0x7F}


@dataclass(frozen=True, slots=True)
class HttpProbe:
    """One HTTP/1.1 request whose answer must have a status in `expect_status` (inclusive) and,
    if `expect_body` is set, contain it within the first `max_body` bytes of the body.

    Validated on construction (ValueError) only where a value would corrupt the request (a CR/LF
    in the path or Host) or cannot mean anything: the config schema owns friendly checks.
    A HEAD probe with `expect_body` always fails ("body lacks ..."): its response has no body.
    """

    method: bytes = b"GET"
    path: bytes = b"/"
    host: bytes | None = None  # the Host header; None: the server's host:port
    expect_status: tuple[int, int] = (200, 399)
    expect_body: bytes | None = None  # a substring the body must contain
    max_body: int = 64 * 1024

    def __post_init__(self) -> None:
        if not self.method or not set(self.method) <= _TOKEN:
            raise ValueError(f"probe method {self.method!r} is not an HTTP token")
        if not self.path or not set(self.path) <= _FIELD:
            raise ValueError(f"probe path {self.path!r} is empty or holds a space or control")
        if self.host is not None and (not self.host or not set(self.host) <= _FIELD):
            raise ValueError(f"probe host {self.host!r} is empty or holds a space or control")
        low, high = self.expect_status
        if not 100 <= low <= high <= 999:
            raise ValueError(f"probe expect_status {self.expect_status} is not a status range")
        if self.max_body < 0:
            raise ValueError("probe max_body must not be negative")
        if self.expect_body is not None and not self.expect_body:
            raise ValueError("probe expect_body must not be empty (use None)")


@dataclass(frozen=True, slots=True)
class TcpProbe:
    """The server accepts a TCP connection: that alone counts as healthy."""


async def probe(
    host: str,
    port: int,
    check: HttpProbe | TcpProbe,
    timeout: float,  # noqa: ASYNC109 (a bound every caller needs; applied inside, in one place)
) -> ProbeResult:
    """Probe `host:port` once with `check`, taking at most `timeout` seconds in all (connect,
    send, receive), and say whether the server is healthy.

    Never raises, except CancelledError when the caller cancels it: a control plane being shut
    down must be able to stop its probes.
    """
    progress = _Progress()
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            return await _attempt(host, port, check, progress)
    except Exception as exc:  # any failure is a verdict, never the caller's problem
        if deadline.expired():
            return ProbeResult(False, f"timed out after {round(float(timeout), 3)}s {progress}")
        return ProbeResult(False, _short(_describe(exc, host, progress)))


class HttpCheck(Probe):
    """The built-in `http` probe: one request, configured by the `http:` section."""

    def __init__(self, config: HttpCheckConfig) -> None:
        self.probe = HttpProbe(
            method=config.method.encode(),
            path=config.path.encode(),
            host=config.host.encode() if config.host else None,
            expect_status=config.expect_status,
            expect_body=config.expect_body.encode() if config.expect_body else None,
        )

    async def check(self, host: str, port: int, timeout: float) -> ProbeResult:  # noqa: ASYNC109
        return await probe(host, port, self.probe, timeout)


class TcpCheck(Probe):
    """The built-in `tcp` probe: the server accepts a connection."""

    async def check(self, host: str, port: int, timeout: float) -> ProbeResult:  # noqa: ASYNC109
        return await probe(host, port, TcpProbe(), timeout)


PROBES: dict[str, type[Probe]] = {"http": HttpCheck, "tcp": TcpCheck}
"""The built-in probes by the name `health.active.type` gives them."""


class _Progress:
    """How far an attempt got: names a failure ("connecting", "waiting for a response")."""

    __slots__ = ("stage",)

    def __init__(self) -> None:
        self.stage = "connecting"

    def __str__(self) -> str:
        return self.stage


async def _attempt(
    host: str, port: int, check: HttpProbe | TcpProbe, progress: _Progress
) -> ProbeResult:
    request = _request(check, host, port) if isinstance(check, HttpProbe) else b""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if not isinstance(check, HttpProbe):
            return ProbeResult(True, "connected")
        progress.stage = "sending the request"
        writer.write(request)
        await writer.drain()
        progress.stage = "waiting for a response"
        response = _ResponseCheck(check)
        while True:
            data = await reader.read(response.wanted())
            verdict = response.feed(data) if data else response.feed_eof()
            if verdict is not None:
                return verdict
            if response.head_done:
                progress.stage = "reading the body"
    finally:
        # abort, not close: nothing we might still have queued matters, and close() would wait
        # for a peer that does not read. Unread response bytes make the kernel answer RST,
        # which is what stopping early on a huge body means.
        writer.transport.abort()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _request(check: HttpProbe, host: str, port: int) -> bytes:
    """The request head; a probe sends no body."""
    authority = check.host if check.host is not None else _authority(host, port)
    return (
        b"%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: portico-health\r\nConnection: close\r\n\r\n"
        % (check.method, check.path, authority)
    )


def _authority(host: str, port: int) -> bytes:
    """`host:port` as a Host value: IPv6 literals bracketed, names in IDNA (RFC 9110 §7.2)."""
    name = f"[{host}]" if ":" in host else host
    value = f"{name}:{port}".encode("idna")
    if not set(value) <= _FIELD:
        raise ValueError(f"host {host!r} cannot be sent in a Host header")
    return value


def _describe(exc: Exception, host: str, progress: _Progress) -> str:
    """A failure in a few words; the stage tells a dead server from a broken one."""
    if progress.stage == "connecting":
        if isinstance(exc, ConnectionRefusedError):
            return "connect refused"
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve {host}: {exc.strerror or exc}"
        if isinstance(exc, OSError):
            return f"connect failed: {exc.strerror or exc}"
    elif isinstance(exc, ConnectionResetError):
        return f"connection reset while {progress}"
    elif isinstance(exc, OSError):
        return f"{exc.strerror or exc} while {progress}"
    return f"probe failed: {type(exc).__name__}: {exc}"


def _short(text: str) -> str:
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 3] + "..."


def _ok(status: int) -> ProbeResult:
    return ProbeResult(True, f"HTTP {status}")


class _ResponseCheck:
    """Judges one probe response as llhttp parses it (this object is the parser's callback
    object). Pure: fed bytes, it says the verdict as soon as one is certain, so the probe stops
    reading there: after the head when the status decides, or once the body shows the expected
    substring or `max_body` bytes of it did not.

    1xx interim responses (100, 103) are skipped; 101 is final and judged like any status.
    """

    __slots__ = (
        "_body",
        "_check",
        "_head_bytes",
        "_interim",
        "_kind",
        "_length",
        "_parser",
        "_searched",
        "_status",
        "_te",
        "head_done",
        "verdict",
    )

    def __init__(self, check: HttpProbe) -> None:
        self._check = check
        self._parser = httptools.HttpResponseParser(self)
        self._head_bytes = 0  # bytes fed before the final head was complete
        self.verdict: ProbeResult | None = None
        self._begin()

    def _begin(self) -> None:
        # per-message state: reset for the final response after an interim one
        self.head_done = False
        self._interim = False
        self._status = 0
        self._length: bytes | None = None
        self._te: bytes | None = None
        self._kind = BodyKind.NONE
        self._body = bytearray()
        self._searched = 0  # the body before this offset holds no match starting there

    def wanted(self) -> int:
        """How many bytes to read next: never (much) more body than `max_body` allows."""
        if not self.head_done:
            return _READ_SIZE
        return max(1, min(_READ_SIZE, self._check.max_body - len(self._body)))

    def feed(self, data: bytes) -> ProbeResult | None:
        """Parse the next bytes; the verdict once it is certain, else None."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # 101 (or an upgrade): judged on its head already
        except httptools.HttpParserError as exc:
            self._decide(False, f"malformed response: {exc}")
        if not self.head_done and self.verdict is None:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self._decide(False, f"malformed response: head larger than {MAX_HEAD} bytes")
        return self.verdict

    def feed_eof(self) -> ProbeResult:
        """The server closed: that ends a close-delimited body, and anything else early."""
        if self.verdict is not None:
            return self.verdict
        if not self.head_done:
            return ProbeResult(False, "closed before a response")
        if self._kind is BodyKind.CLOSE:
            self._judge_body(complete=True)
            assert self.verdict is not None
            return self.verdict
        return ProbeResult(False, "closed mid-body")

    def _decide(self, ok: bool, detail: str) -> None:
        if self.verdict is None:  # the first certainty stands; later bytes do not matter
            self.verdict = ProbeResult(ok, _short(detail))

    def _judge_body(self, *, complete: bool) -> None:
        """Decide on the body seen so far, if `complete` or it has reached `max_body`."""
        needle = self._check.expect_body
        assert needle is not None
        # search only what may hold a match not looked at yet: tiny chunks stay linear
        if self._body.find(needle, self._searched) >= 0:
            self._decide(True, f"HTTP {self._status}")
        elif complete or len(self._body) >= self._check.max_body:
            self._decide(False, f"body lacks {needle.decode('latin-1')!r}")
        self._searched = max(0, len(self._body) - len(needle) + 1)

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        # only the framing matters; llhttp has validated both fields already
        lower = name.lower()
        if lower == b"content-length":
            self._length = value
        elif lower == b"transfer-encoding":
            self._te = value if self._te is None else self._te + b", " + value

    def on_headers_complete(self) -> None:
        status = self._status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True
            return
        self.head_done = True
        if self.verdict is not None:
            return
        low, high = self._check.expect_status
        if not low <= status <= high:
            self._decide(False, f"status {status} not in {low}-{high}")
        elif self._check.expect_body is None:
            self._decide(True, f"HTTP {status}")
        else:
            length = 0 if self._length is not None else None
            self._kind = response_body_kind(self._check.method, status, length, self._te)
            if self._kind is BodyKind.NONE or self._check.max_body == 0:
                self._judge_body(complete=True)

    def on_body(self, body: bytes) -> None:
        if self.verdict is not None or self._interim:
            return
        room = self._check.max_body - len(self._body)
        self._body += body[:room]
        self._judge_body(complete=False)

    def on_message_complete(self) -> None:
        if self._interim:
            self._begin()
            return
        if self.verdict is None:
            self._judge_body(complete=True)
