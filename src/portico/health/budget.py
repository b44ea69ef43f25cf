"""The retry budget of one pool: retries as a bounded share of recent requests. *pure*

Owns `RetryBudget`, the windowed counts of requests and retries and the verdict on whether one
more retry is allowed. Never decides whether a request is safe or worth retrying (idempotency,
what failed, the per-request retry limit: the proxy does) and never retries anything. Never
reads the clock: `now` is in seconds on any monotonic scale.
"""

from __future__ import annotations

import math

__all__ = ["RetryBudget"]

_NEVER = -(2**62)  # bucket epoch before any call: the first call finds every bucket stale


class RetryBudget:
    """Allows a retry while retries in the last `window` seconds stay below
    max(`min_per_second` * `window`, `ratio` * requests in that window).

    Per-request retry limits alone multiply load exactly when a pool is failing: with 2
    retries each, a pool that fails everything gets 3x its traffic. A budget caps the extra
    load at `ratio` (0.2: at most +20%) however many requests fail, while the floor of
    `min_per_second` keeps retries available at low traffic, where a ratio of a handful of
    requests would round down to nothing (Finagle's RetryBudget; Envoy's retry budget is the
    same idea over concurrent requests instead of a time window).

    Counts are kept in `buckets` time buckets of `window / buckets` seconds, a ring over the
    window: every call is O(1) and memory is fixed, whatever the request rate. A bucket's
    counts leave the window all at once, between `window - window / buckets` and `window`
    seconds after they were recorded; stale buckets are cleared lazily by the next call.

    The caller records each original request with `record_request` and each retry with
    `record_retry` only, never both for one attempt: retries must not fund further retries.
    """

    __slots__ = (
        "_epoch",
        "_requests",
        "_requests_in_window",
        "_retries",
        "_retries_in_window",
        "_slot",
        "_width",
        "min_retries",
        "ratio",
        "window",
    )

    def __init__(
        self, ratio: float, min_per_second: float, window: float = 10.0, *, buckets: int = 10
    ) -> None:
        if not (ratio >= 0 and math.isfinite(ratio)):
            raise ValueError(f"ratio must be >= 0, got {ratio!r}")
        if not (min_per_second >= 0 and math.isfinite(min_per_second)):
            raise ValueError(f"min_per_second must be >= 0, got {min_per_second!r}")
        if not (window > 0 and math.isfinite(window)):
            raise ValueError(f"window must be > 0 seconds, got {window!r}")
        if buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {buckets!r}")
        self.ratio = ratio
        self.window = window
        self.min_retries = min_per_second * window  # retries always allowed per window

        # the ring: bucket i holds the counts of the epochs e with e % buckets == i
        self._width = window / buckets
        self._requests = [0] * buckets
        self._retries = [0] * buckets
        self._epoch = _NEVER  # floor(now / width) of the latest call
        self._slot = 0  # _epoch % buckets: the bucket being filled
        # the sums of the ring, kept so that reading them is O(1)
        self._requests_in_window = 0
        self._retries_in_window = 0

    def record_request(self, now: float) -> None:
        """Count one original request (not a retry) sent at `now`: it funds `ratio` retries."""
        epoch = int(now // self._width)
        if epoch > self._epoch:
            self._advance(epoch)
        self._requests[self._slot] += 1
        self._requests_in_window += 1

    def can_retry(self, now: float) -> bool:
        """True when one more retry at `now` stays within the budget.

        Does not spend anything: call `record_retry` when the retry is actually sent.
        """
        epoch = int(now // self._width)
        if epoch > self._epoch:
            self._advance(epoch)
        retries = self._retries_in_window
        return retries < self.min_retries or retries < self.ratio * self._requests_in_window

    def record_retry(self, now: float) -> None:
        """Count one retry sent at `now` against the budget."""
        epoch = int(now // self._width)
        if epoch > self._epoch:
            self._advance(epoch)
        self._retries[self._slot] += 1
        self._retries_in_window += 1

    def _advance(self, epoch: int) -> None:
        """Move the ring forward to `epoch`, clearing the buckets whose counts left the window.

        At most `buckets` buckets are cleared, however long the pool was idle. A `now` that
        goes backwards never gets here: it counts in the current bucket.
        """
        requests, retries = self._requests, self._retries
        n = len(requests)
        if epoch - self._epoch >= n:
            for i in range(n):
                requests[i] = 0
                retries[i] = 0
            self._requests_in_window = 0
            self._retries_in_window = 0
        else:
            for stale in range(self._epoch + 1, epoch + 1):
                i = stale % n
                self._requests_in_window -= requests[i]
                self._retries_in_window -= retries[i]
                requests[i] = 0
                retries[i] = 0
        self._epoch = epoch
        self._slot = epoch % n

    def __repr__(self) -> str:
        return (
            f"<RetryBudget retries={self._retries_in_window} "
            f"requests={self._requests_in_window} ratio={self.ratio} min={self.min_retries}>"
        )
