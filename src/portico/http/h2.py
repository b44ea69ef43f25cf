"""HTTP/2 messages mapped to and from the HTTP/1.1 shape the rest of the proxy speaks. *Pure.*

Owns: turning a decoded HTTP/2 request header block (already checked by the h2 library for
pseudo-header order, connection-specific fields and lower-case names) into the method, target
and header list an `Exchange` takes (RFC 9113 §8.3.1: `:authority` becomes Host; split Cookie
fields are joined again, §8.2.3), with the listener's size limits; and turning a response head (a
server's, or one of Portico's own `LocalResponse` answers) into an HTTP/2 header list.
Never touches frames or sockets (`portico.listeners.h2` does).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from portico.http.headers import Header

PREFACE: Final = (
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # what an HTTP/2 client sends first (RFC 9113 3.4)
)

# Per RFC 9113 §6.5.2 a header field costs its name and value plus 32 octets of overhead.
FIELD_OVERHEAD: Final = 32

# Never sent on HTTP/2 (RFC 9113 §8.2.2).
_CONNECTION_SPECIFIC: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
    }
)


class H2Request:
    """An HTTP/2 request head in the form an HTTP/1.1 exchange takes.

    A plain class, not a dataclass: one is made per request, and a compiled dataclass keeps
    the `__init__` the decorator writes (Python code); this one is compiled."""

    __slots__ = ("has_length", "headers", "method", "target")

    def __init__(
        self, method: bytes, target: bytes, headers: list[Header], has_length: bool
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers  # Host first (from :authority), then the regular fields
        self.has_length = has_length  # a content-length field was sent

    def __repr__(self) -> str:
        return (
            f"H2Request(method={self.method!r}, target={self.target!r}, "
            f"headers={self.headers!r}, has_length={self.has_length!r})"
        )


@dataclass(frozen=True, slots=True)
class RequestLimits:
    max_request_line: int
    max_header_size: int
    max_headers: int


def map_request(fields: list[Header], limits: RequestLimits) -> H2Request | int:
    """The request, or the status to refuse it with (400, 405, 414, 431).

    `fields` are as h2 decodes them: pseudo-headers first, names lower-case.
    """
    method = path = authority = None
    headers: list[Header] = []
    cookies: list[bytes] = []
    host: bytes | None = None
    has_length = False
    size = 0
    for name, value in fields:
        size += len(name) + len(value) + FIELD_OVERHEAD
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name != b":scheme":
                return 400  # :protocol (extended CONNECT) is not offered
            continue
        if name == b"cookie":
            cookies.append(value)
            continue
        if name == b"host":
            if host is not None:
                return 400
            host = value
        elif name == b"content-length":
            has_length = True
        headers.append((name, value))
    if size > limits.max_header_size or len(headers) + len(cookies) > limits.max_headers:
        return 431
    if method == b"CONNECT":
        return 405  # before the :path check: an ordinary CONNECT has none (RFC 9113 §8.5)
    if method is None or path is None:
        return 400
    if path[:1] != b"/" and not (path == b"*" and method == b"OPTIONS"):
        return 400
    if len(method) + len(path) + 10 > limits.max_request_line:
        return 414
    if authority is not None:
        if not authority or 0x40 in authority:  # "@" as an int: a byte search, no TypeError
            return 400  # RFC 9113 §8.3.1: no userinfo
        if host is not None and host != authority:
            return 400  # §8.3.1: Host must name what :authority names
        if host is None:
            headers.insert(0, (b"host", authority))
    elif host is None:
        return 400  # nothing names the origin
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    return H2Request(method, path, headers, has_length)


def response_fields(status: int, headers: Iterable[Header]) -> list[Header]:
    """A response head as HTTP/2 fields: `:status` first, names lower-case, and nothing
    connection-specific (a server's own Connection-listed fields were removed already)."""
    code = _STATUS_CODES[status] if 100 <= status < 1000 else b"%d" % status
    out: list[Header] = [(b":status", code)]
    lowered = _LOWERED
    for name, value in headers:
        low = lowered.get(name)
        if low is None:
            low = name.lower()
            if len(lowered) < LOWERED_LIMIT:
                lowered[name] = low
        if low not in _CONNECTION_SPECIFIC:
            out.append((low, value))
    return out


# `:status` values, made once
_STATUS_CODES: Final = [b"%d" % code for code in range(1000)]
# field names as servers spell them -> lower case: a look-up, not a `lower()` call and a new
# object per field (whose hash HPACK's tables would compute again). Bounded: past the limit,
# names a server invents are lowered each time, as before.
LOWERED_LIMIT: Final = 512
_LOWERED: Final[dict[bytes, bytes]] = {}


class FloodGuard:
    """Counts what an HTTP/2 client makes the server do for nothing, and says when a
    connection has gone from busy to abusive.

    - Control frames (PING, SETTINGS, PRIORITY, RST_STREAM, empty DATA, unknown types) spend
      from a token bucket: `burst` at once, refilled at `rate` per second. A ping or settings
      flood (CVE-2019-9512, -9515) drains it within a fraction of a second; a browser's few
      per page never come close.
    - Streams the client resets before their response ended (rapid reset, CVE-2023-44487),
      Envoy's rule: once `reset_min` streams were reset early and they are at least half of
      all streams opened, the connection is abusive.
    - WINDOW_UPDATE frames beyond `window_updates_per_data` per DATA frame sent (plus a
      slack): a client that showers updates (CVE-2019-9511's cousin) without reading data.
    """

    __slots__ = (
        "_burst",
        "_data_frames",
        "_rate",
        "_reset_min",
        "_tokens",
        "_updated",
        "_window_updates",
        "early_resets",
        "opened",
    )

    WINDOW_UPDATE_SLACK: Final = 1000

    def __init__(
        self,
        now: float,
        *,
        burst: int = 1000,
        rate: float = 100.0,
        reset_min: int = 100,
    ) -> None:
        self._burst = float(burst)
        self._rate = rate
        self._tokens = float(burst)
        self._updated = now
        self._reset_min = reset_min
        self._data_frames = 0
        self._window_updates = 0
        self.opened = 0
        self.early_resets = 0

    def control_frame(self, now: float) -> bool:
        """One control frame received; False once the client is flooding."""
        tokens = self._tokens + (now - self._updated) * self._rate
        self._updated = now
        if tokens > self._burst:
            tokens = self._burst
        tokens -= 1.0
        self._tokens = tokens
        return tokens >= 0.0

    def stream_opened(self) -> None:
        self.opened += 1

    def early_reset(self) -> bool:
        """A stream was reset by the client before its response ended; False once that is
        the connection's habit."""
        self.early_resets += 1
        return not (self.early_resets >= self._reset_min and self.early_resets * 2 >= self.opened)

    def data_frame_sent(self, frames: int = 1) -> None:
        self._data_frames += frames

    def window_update(self) -> bool:
        self._window_updates += 1
        return self._window_updates <= self.WINDOW_UPDATE_SLACK + 10 * self._data_frames
