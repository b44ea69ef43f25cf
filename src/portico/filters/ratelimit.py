"""Request rate limits as a filter: the key, the 429 answer, the RateLimit headers.

Owns `RateLimitFilter` (a listener's per-client limit, counted in this worker) and
`SharedRateLimitFilter` (the same limit counted in a shared store), both answering 429 with a
`LocalResponse`, and `ratelimit_headers` (the RateLimit-* and Retry-After response headers).
The arithmetic is `portico.state.gcra`'s (pure, shared with the stores); `parse_rate` (the
config text "100/s") is `portico.config.units`'. Both are re-exported here, where the filter's
users look for them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from portico.config.units import parse_rate
from portico.http.keys import key_function
from portico.http.local import LocalResponse, local_response
from portico.state.gcra import Decision, Gcra, RateLimiter
from portico.state.store import StateStore, StoreUnavailable

if TYPE_CHECKING:
    from portico.config.schema import RateLimitConfig
    from portico.filters.base import FilterRequest

__all__ = [
    "Decision",
    "Gcra",
    "RateLimitFilter",
    "RateLimiter",
    "SharedRateLimitFilter",
    "parse_rate",
    "ratelimit_headers",
]

# Float noise tolerated when rounding seconds up for headers: 7.000000000000001 seconds is
# 7, not 8. A nanosecond is below any clock's resolution and far below `decide`'s slack, so a
# client that waits the rounded value is still on time.
_CEIL_NOISE = 1e-9


def _ceil_seconds(seconds: float) -> int:
    """Whole seconds, rounded up, ignoring float noise below a nanosecond; never negative."""
    return max(0, math.ceil(seconds - _CEIL_NOISE))


def ratelimit_headers(
    decision: Decision, limit: int, window_seconds: float
) -> list[tuple[bytes, bytes]]:
    """The response headers for `decision`, as deployed from draft-ietf-httpapi-ratelimit-headers.

    `limit` requests per `window_seconds` is the policy advertised; for a `Gcra` the honest
    pair is (burst, window): a full burst, refilled over `window`. Sends RateLimit-Limit,
    RateLimit-Remaining (capped at `limit`), RateLimit-Reset (seconds until the full limit is
    available again) and RateLimit-Policy (``limit;w=window``), all integers with seconds
    rounded up. When denied, also Retry-After: seconds rounded up and at least 1, so a client
    that waits exactly that long is then allowed, and never told to retry at once.
    """
    headers = [
        (b"RateLimit-Limit", b"%d" % limit),
        (b"RateLimit-Remaining", b"%d" % min(decision.remaining, limit)),
        (b"RateLimit-Reset", b"%d" % _ceil_seconds(decision.reset_after)),
        (b"RateLimit-Policy", b"%d;w=%d" % (limit, max(1, _ceil_seconds(window_seconds)))),
    ]
    if not decision.allowed:
        headers.append((b"Retry-After", b"%d" % max(1, _ceil_seconds(decision.retry_after))))
    return headers


# ---------------------------------------------------------------------------------------------
# The filter: a listener's per-client limit, answering 429 itself


_TOO_MANY_BODY = b"429 Too Many Requests\n"
_TOO_MANY_FIELDS = (
    (b"Content-Type", b"text/plain; charset=utf-8"),
    (b"Content-Length", b"%d" % len(_TOO_MANY_BODY)),
    (b"Cache-Control", b"no-store"),
)


class RateLimitFilter:
    name = "rate_limit"  # the request phase's stage name
    asynchronous = False  # SharedRateLimitFilter (through a store) is awaited

    """Per-client rate limit of one listener (per worker, in memory). A request over the
    limit is answered 429 with Retry-After and RateLimit-* headers and never reaches a pool.
    The key is the client address, a header or a cookie; a request without that header or
    cookie is limited by its client address."""

    def __init__(self, config: RateLimitConfig, clock: Callable[[], float]) -> None:
        burst = config.burst_size()
        self.limiter = RateLimiter(config.rate, burst)
        self.clock = clock
        self.key_of = key_function(config.key)

    def on_request(self, exchange: FilterRequest) -> LocalResponse | None:
        client = exchange.client
        key = self.key_of(exchange.headers, exchange.target, client.client_ip)
        decision = self.limiter.check(key, self.clock())
        if decision.allowed:
            return None
        return self._too_many(decision)

    async def check(self, exchange: FilterRequest) -> LocalResponse | None:
        return self.on_request(exchange)

    def _too_many(self, decision: Decision) -> LocalResponse:
        gcra = self.limiter.gcra
        return local_response(
            429,
            [
                *_TOO_MANY_FIELDS,
                *ratelimit_headers(decision, gcra.burst, gcra.window),
            ],
            _TOO_MANY_BODY,
        )


class SharedRateLimitFilter(RateLimitFilter):
    """The same limit, counted in a shared store (Redis: every worker and instance together),
    atomically there (a Lua GCRA on the server's clock). The store answers within its
    timeout or not at all; then `fallback` decides: this worker's own limiter (`local`),
    allow (`open`) or refuse (`closed`). Each fallback is counted."""

    asynchronous = True

    def __init__(
        self,
        config: RateLimitConfig,
        clock: Callable[[], float],
        store: StateStore,
        namespace: bytes,
        fallback: str,
    ) -> None:
        super().__init__(config, clock)
        self.store = store
        self.namespace = namespace + b":"
        self.fallback = fallback
        self.fallbacks = 0

    async def check(self, exchange: FilterRequest) -> LocalResponse | None:
        client = exchange.client
        key = self.key_of(exchange.headers, exchange.target, client.client_ip)
        gcra = self.limiter.gcra
        try:
            decision = await self.store.rate_limit(self.namespace + key, gcra.rate, gcra.burst)
        except StoreUnavailable:
            self.fallbacks += 1
            if self.fallback == "open":
                return None
            if self.fallback == "closed":
                return self._too_many(Decision(False, 0.0, 1.0, 0, 1.0))
            decision = self.limiter.check(key, self.clock())
        return None if decision.allowed else self._too_many(decision)
