"""The response phases of a request's way through Portico: the values and interfaces. *pure*

Owns what a response-head stage, a body transform and a done stage are, the same for HTTP/1.1
and HTTP/2 clients (the exchange, `portico.proxy.l7`, runs them; the framers frame the
result):

- `ResponseEdit`: a response head being decided (status, end-to-end headers, the body's length
  when known, the request it answers), which a `ResponseStage` may change, give a streaming
  `BodyTransform` (`transform`) or swap for a whole other answer (`replace`);
- `BodyTransform`: bytes in, bytes out, `flush`, `end`, `abort`; `TransformChain` runs the
  transforms of one response in order and turns what one raises into `TransformFailed`;
- `Outcome`: how an exchange ended (status, whether the whole body went out, bytes, server,
  pool, duration, error), which `DoneStage`s (the access log, stick-table learning, a cache's
  commit, users' `on_done`) see once per request.

Streaming local answers (`BodySource`, `FileBody`) are in `portico.http.local` and
`portico.pipeline.sources`. Nothing here awaits, touches a socket or reads the clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from portico.http.headers import Header, RequestHead
from portico.http.local import BodySource, LocalResponse

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "BodySource",
    "BodyTransform",
    "DoneStage",
    "ExchangeView",
    "Outcome",
    "ResponseEdit",
    "ResponseStage",
    "TransformChain",
    "TransformFailed",
]

log = logging.getLogger("portico.pipeline")

DEFAULT_OFFLOAD_MIN: Final = 32 * 1024  # see TransformChain.offload_min
LOG_INTERVAL: Final = 60.0  # seconds between two log lines about one failing transform class


class BodyTransform(Protocol):
    """A streaming change of one response body (compression, a cache's copy, a rewrite).

    Called in order for one response: `feed` per body piece as it arrives, `flush` when the
    exchange wants what is held back out now (a streaming response waiting for more), then
    `end` once (the last bytes) or `abort` once (the body ended incomplete: the server died,
    the client left, a later transform raised). Each returns what goes on towards the client,
    possibly empty. Memory is the transform's own business: keep what you hold bounded.
    An exception fails the request (a 500 when nothing was sent yet, else the response is cut).
    """

    def feed(self, data: bytes | memoryview) -> bytes | memoryview: ...
    def flush(self) -> bytes: ...
    def end(self) -> bytes: ...
    def abort(self) -> None: ...

    # Optional: a class attribute `threaded = True` says `feed` may be called in a worker
    # thread (one call at a time, in order): pieces of `offload_min` bytes or more (an
    # attribute, default 32 KiB) are then transformed off the event loop. Only for transforms
    # whose work releases the GIL and keeps no thread-bound state.


class ExchangeView(Protocol):
    """What stages may read of the exchange they run for (`portico.proxy.l7.Exchange`
    satisfies it): the request, as parsed, and where it went."""

    headers: list[Header]  # the request's, as received (a filter may have replaced them)

    @property
    def method(self) -> bytes: ...
    @property
    def version(self) -> str: ...
    @property
    def target(self) -> bytes: ...
    @property
    def head(self) -> RequestHead: ...
    @property
    def pool_name(self) -> str: ...


class ResponseEdit:
    """A response head on its way to the client, as response-head stages see and change it.

    `status`, `headers` (end-to-end fields, framing excluded, as (bytes, bytes) pairs) and
    `reason` may be changed in place. `length` is the body's size when known (None: unknown,
    or no body); `has_body` is False for an answer to HEAD and for 1xx/204/304 (a transform
    then never sees a byte). `local` is True for Portico's own answers (a filter's, a
    route's, a static file, a cache hit), False for a server's. `request` is the exchange
    (method, target, headers: `ExchangeView`).
    """

    __slots__ = (
        "has_body",
        "headers",
        "length",
        "local",
        "reason",
        "replacement",
        "request",
        "status",
        "transforms",
    )

    def __init__(
        self,
        status: int,
        reason: bytes,
        headers: list[Header],
        length: int | None,
        request: ExchangeView,
        *,
        has_body: bool = True,
        local: bool = False,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.length = length
        self.request = request
        self.has_body = has_body
        self.local = local
        self.transforms: list[BodyTransform] = []
        self.replacement: LocalResponse | None = None

    def transform(self, transform: BodyTransform) -> None:
        """Run `transform` over the body, after those attached before it. The body's length
        is then unknown downstream: Content-Length is dropped, HTTP/1.1 clients get it chunked,
        HTTP/2 ones as DATA frames. Ignored when there is no body (HEAD, 204, 304)."""
        if self.has_body:
            self.transforms.append(transform)

    def replace(self, answer: LocalResponse) -> None:
        """Answer with `answer` instead; the server's body is discarded (its connection is
        closed). Later stages do not run, transforms attached so far are dropped, and the
        answer goes out as it is."""
        self.replacement = answer

    # -- header helpers (names in any case) ----------------------------------------------------

    def header(self, name: bytes) -> bytes | None:
        """The first value of field `name`, or None."""
        low = name.lower()
        for field, value in self.headers:
            if field.lower() == low:
                return value
        return None

    def set_header(self, name: bytes, value: bytes) -> None:
        """Replace every field `name` by one with `value`."""
        self.remove_header(name)
        self.headers.append((name, value))

    def remove_header(self, name: bytes) -> None:
        low = name.lower()
        self.headers[:] = [h for h in self.headers if h[0].lower() != low]


class ResponseStage(Protocol):
    """Runs on each response head of the listener or route it is configured on."""

    name: str  # for logs and docs: "compression", "cache_store", ...

    def on_response_head(self, exchange: ExchangeView, edit: ResponseEdit) -> None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one exchange ended, for the done phase.

    `complete`: the whole response went out (False when it was cut, or the client left
    before the end); `bytes_sent`: response body bytes written to the client (after
    transforms); `server`: the server that answered (None for Portico's own answers and
    failures before one was chosen); `duration_s` since the request head was in; `error`:
    why it ended incomplete (the server closed, a timeout, a transform raised), or why
    Portico answered with an error (the last server's failure), else None. The rest is what
    the access log reports: `target` as the client sent it (before rewrites), the response
    head's bytes, the request body bytes received, the server's connect and response times
    (seconds, None without a server), the request id (None unless the listener logs).
    """

    status: int
    complete: bool
    bytes_sent: int
    server: str | None
    pool: str
    duration_s: float
    error: str | None = None
    listener: str = ""
    route: str | None = None
    client_ip: str = ""
    target: bytes = b""
    head_bytes: int = 0
    received: int = 0
    connect_s: float | None = None
    response_s: float | None = None
    request_id: bytes | None = None


class DoneStage(Protocol):
    """Runs once per exchange when it has ended (answered, cut or abandoned). Must not
    raise; it cannot change anything any more."""

    name: str  # "access_log", a plugin's "mod:Class (listener web)", ...

    def on_done(self, exchange: ExchangeView, outcome: Outcome) -> None: ...


class TransformFailed(Exception):
    """A body transform raised (logged); the response fails."""


_last_logged: dict[str, float] = {}


def _log_failure(transform: object, doing: str, exc: BaseException) -> None:
    name = type(transform).__qualname__
    now = time.monotonic()
    if now - _last_logged.get(name, -LOG_INTERVAL) >= LOG_INTERVAL:
        _last_logged[name] = now
        log.error(
            "body transform %s failed in %s: %s: %s (the response fails)",
            name,
            doing,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )


class TransformChain:
    """The transforms of one response, applied in order: each one's output is the next
    one's input. Raises `TransformFailed` when one raises (after logging it, at most once a
    minute per transform class, and aborting the others)."""

    __slots__ = ("_done", "_transforms", "offload_min", "threaded")

    def __init__(self, transforms: Iterable[BodyTransform]) -> None:
        self._transforms: Sequence[BodyTransform] = tuple(transforms)
        self._done = False
        # every transform may run in a worker thread (one call at a time, never two at once):
        # the exchange then hands large pieces to a thread instead of holding the event loop
        # (compressors: zlib, brotli and zstandard release the GIL while they work)
        self.threaded = bool(self._transforms) and all(
            getattr(t, "threaded", False) for t in self._transforms
        )
        # the piece size from which that is worth it (a transform's `offload_min`, else 32 KiB)
        self.offload_min: int = max(
            (getattr(t, "offload_min", DEFAULT_OFFLOAD_MIN) for t in self._transforms),
            default=DEFAULT_OFFLOAD_MIN,
        )

    def feed(self, data: bytes | memoryview) -> bytes | memoryview:
        current = data
        for transform in self._transforms:
            if not current:
                return b""
            try:
                current = transform.feed(current)
            except Exception as exc:
                self._fail(transform, "feed", exc)
        return current

    def flush(self) -> bytes | memoryview:
        """Each transform's held bytes, pushed through the ones after it."""
        return self._drain("flush")

    def end(self) -> bytes | memoryview:
        """The body is complete: each transform's last bytes, through the ones after it."""
        if self._done:
            return b""
        out = self._drain("end")
        self._done = True
        return out

    def abort(self) -> None:
        """The body ended incomplete: every transform is told (their errors are logged)."""
        if self._done:
            return
        self._done = True
        for transform in self._transforms:
            try:
                transform.abort()
            except Exception as exc:
                _log_failure(transform, "abort", exc)

    def _drain(self, doing: str) -> bytes | memoryview:
        out: bytes | memoryview = b""
        for transform in self._transforms:
            try:
                passed = transform.feed(out) if out else b""
                tail = transform.flush() if doing == "flush" else transform.end()
            except Exception as exc:
                self._fail(transform, doing, exc)
            out = (bytes(passed) + tail if passed else tail) if tail else passed
        return out

    def _fail(self, transform: BodyTransform, doing: str, exc: Exception) -> None:
        _log_failure(transform, doing, exc)
        self._done = False
        for other in self._transforms:
            if other is not transform:
                try:
                    other.abort()
                except Exception as other_exc:
                    _log_failure(other, "abort", other_exc)
        self._done = True
        raise TransformFailed(f"{type(transform).__qualname__} failed in {doing}") from exc
