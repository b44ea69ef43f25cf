"""The response phases of a request's way through Portico: the values and interfaces. *pure*

Owns what a response-head stage, a body transform and a done stage are, the same for HTTP/1.1
and HTTP/2 clients (the exchange, `portico.proxy.l7`, runs them; the framers frame the
result):

- `ResponseEdit`: a response head being decided (status, end-to-end headers, the body's length
  when known, the request it answers), which a `ResponseStage` may change, give a streaming
  `BodyTransform` (`transform`) or swap for a whole other answer (`replace`);
- `BodyTransform`: bytes in, bytes out, `flush`, `end`, `abort`; `TransformChain` runs the
  transforms of one response in order and turns what one raises into `TransformFailed`;
  `TurnBudget` (one per worker, `TURN_BUDGET`) decides which pieces are transformed on the
  event loop and which go to a worker thread;
- `Outcome`: how an exchange ended (status, whether the whole body went out, bytes, server,
  pool, duration, error), which `DoneStage`s (the access log, stick-table learning, a cache's
  commit, users' `on_done`) see once per request.

Streaming local answers (`BodySource`, `FileBody`) are in `portico.http.local` and
`portico.pipeline.sources`. Nothing here awaits, touches a socket or reads the clock.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from portico.http.headers import Header, RequestHead
from portico.http.local import BodySource, LocalResponse

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "TURN_BUDGET",
    "BodySource",
    "BodyTransform",
    "DoneStage",
    "ExchangeView",
    "Outcome",
    "ResponseEdit",
    "ResponseStage",
    "TransformChain",
    "TransformFailed",
    "TurnBudget",
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
    # attribute, default 32 KiB) are then transformed off the event loop, and smaller ones
    # wait for a later turn of the loop once this turn has spent its `TurnBudget`. Only for
    # transforms whose work releases the GIL and keeps no thread-bound state.


class _Scheduler(Protocol):
    def call_soon(self, callback: Callable[[], object], /) -> object: ...


class TurnBudget:
    """How much transform work the event loop may still do itself in this turn of the loop,
    shared by every response of the worker: the bound is on the turn, not on the piece, so
    eight responses each bringing a piece just under a chain's `offload_min` do not hold the
    loop eight times as long (they did: small requests then waited ~15 ms behind compression,
    bench/compress_latency.py). The unit is one chain's `offload_min`, the size of a piece that
    takes the loop about `portico.compression.codecs.STEP_BUDGET_MS`: a piece costs its
    size over that, and a turn may spend `share` (TURN_SHARE: a turn holds the loop for about
    `share` x STEP_BUDGET_MS of transform work).

    `take` answers whether a piece may be transformed now (and charges it); if not, `wait`
    queues it for a later turn (a worker thread would do too, but its hand-over costs more
    CPU than compressing a small piece: ~100 µs here). The queue is first come, first served
    and is drained by the refill, which the first charge of a turn schedules with the loop's
    `call_soon` (it runs once the callbacks of this turn are done): each waiting piece costs
    one call, however many turns it waits."""

    __slots__ = ("_refill_on", "_waiting", "left", "share")

    def __init__(self, share: float = 1.0) -> None:
        self.share = share
        self.left = share
        self._refill_on: _Scheduler | None = None  # the loop a refill is scheduled on
        self._waiting: deque[tuple[float, Callable[[], object]]] = deque()

    def take(self, size: int, offload_min: int, loop: _Scheduler) -> bool:
        """True: transform these `size` bytes now (charged); False: not in this turn (`wait`).
        Never True while pieces wait: they go first."""
        cost = size / offload_min if offload_min > 0 else 1.0
        if cost >= self.left or self._waiting:
            return False
        self.left -= cost
        self._schedule(loop)
        return True

    def wait(
        self, size: int, offload_min: int, loop: _Scheduler, then: Callable[[], object]
    ) -> None:
        """Call `then` in a later turn, charged with these `size` bytes, after those waiting."""
        self._waiting.append((size / offload_min if offload_min > 0 else 1.0, then))
        self._schedule(loop)

    def _schedule(self, loop: _Scheduler) -> None:
        if self._refill_on is not loop:  # also when a previous loop closed before its refill
            self._refill_on = loop
            loop.call_soon(self.refill)

    def refill(self) -> None:
        """A new turn: the whole budget, first for the pieces waiting."""
        share = self.left = self.share
        loop, self._refill_on = self._refill_on, None
        waiting = self._waiting
        while waiting:
            cost, then = waiting[0]
            if cost >= self.left and self.left < share:
                break  # (a piece that costs the whole budget or more has a turn to itself)
            waiting.popleft()
            self.left -= cost
            try:
                then()
            except Exception:
                log.exception("a transform step waiting for its turn failed")
        if loop is not None and (waiting or self.left < share):
            self._schedule(loop)


# A turn's share of one `offload_min` (~1.5 ms, see TurnBudget): ~0.5 ms of compression a
# turn across all responses (a 64 KiB gzip-5 piece is about one turn's worth), so a small
# request waits behind at most that much of it, against ~1 ms with a whole share (1.5 ms by
# zlib's rates, ~1 ms at zlib-ng's). gzip-5 per CPU-second unchanged within bench/run's
# noise (0.91x NGINX against 0.94x, 2026-12-06); handing the excess to threads instead
# cost a quarter of it (0.76x)
TURN_SHARE: Final = 1 / 3
TURN_BUDGET: Final = TurnBudget(TURN_SHARE)  # the worker's: one event loop per process


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
