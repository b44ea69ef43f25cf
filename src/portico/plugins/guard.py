"""How Portico runs plugin code: timed, with what it raises contained and logged sparingly.

Owns `Guard` (one per plugin instance: its name for logs, the blocking budget, and the
rate limits of its log lines), `PluginError` (what the proxy turns into a 500 for the one
request concerned) and `GuardedPolicy` (a user's policy behind a guard). Never decides what
a failure means for a request: callers do.

Timing is a monotonic clock read before and after each synchronous call (two
`time.perf_counter()` calls, ~0.1 µs): a call longer than the budget held the event loop, and
every connection of the worker waited with it, so it is logged with the plugin's name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Final

from portico.balancing.base import C, Policy

__all__ = ["LOG_INTERVAL", "Guard", "GuardedPolicy", "PluginError"]

log = logging.getLogger("portico.plugins")

LOG_INTERVAL: Final = 60.0  # seconds: at most one line per plugin and kind of trouble
DEFAULT_BUDGET: Final = 0.005  # seconds a synchronous plugin call may hold the loop


class PluginError(Exception):
    """A plugin raised (already logged); the request it was serving fails with a 500."""


class Guard:
    """The bookkeeping of one plugin instance: what to call it, how long a call may take,
    and when it last said something in the log."""

    __slots__ = ("_failures", "_failures_logged_at", "_slow", "_slow_logged_at", "budget", "name")

    def __init__(self, name: str, budget: float = DEFAULT_BUDGET) -> None:
        self.name = name  # "examples.apikey:ApiKey (listener web)"
        self.budget = budget
        self._failures = 0  # since the last line about them
        self._failures_logged_at = -LOG_INTERVAL
        self._slow = 0
        self._slow_logged_at = -LOG_INTERVAL

    def timed(self, started: float) -> None:
        """A synchronous call that began at `started` (`time.perf_counter()`) has returned."""
        elapsed = time.perf_counter() - started
        if elapsed > self.budget:
            self._slow += 1
            now = time.monotonic()
            if now - self._slow_logged_at >= LOG_INTERVAL:
                log.warning(
                    "plugin %s blocked the event loop for %.1f ms (budget %.1f ms; %d such "
                    "call(s) since the last report)",
                    self.name,
                    elapsed * 1e3,
                    self.budget * 1e3,
                    self._slow,
                )
                self._slow = 0
                self._slow_logged_at = now

    def failed(
        self, exc: BaseException, doing: str, outcome: str = "the request gets a 500"
    ) -> PluginError:
        """The plugin raised `exc` while `doing` ("on_request"): log it with `outcome` (the
        traceback at most once per LOG_INTERVAL) and return the PluginError to raise."""
        self._failures += 1
        now = time.monotonic()
        if now - self._failures_logged_at >= LOG_INTERVAL:
            log.error(
                "plugin %s failed in %s: %s: %s (%s; %d failure(s) since the last report)",
                self.name,
                doing,
                type(exc).__name__,
                exc,
                outcome,
                self._failures,
                exc_info=exc,
            )
            self._failures = 0
            self._failures_logged_at = now
        return PluginError(f"{self.name} failed in {doing}")


class GuardedPolicy(Policy):
    """A user's policy, timed and contained: what it raises becomes a PluginError (the pool's
    caller answers that request 500). Built-in policies run bare."""

    __slots__ = ("fixed_key", "guard", "inner", "needs_key", "needs_latency")

    def __init__(self, inner: Policy, guard: Guard) -> None:
        self.inner = inner
        self.guard = guard
        self.needs_key = inner.needs_key
        self.fixed_key = inner.fixed_key
        self.needs_latency = inner.needs_latency

    def pick(self, candidates: Sequence[C], key: bytes) -> C | None:
        started = time.perf_counter()
        try:
            chosen = self.inner.pick(candidates, key)
        except Exception as exc:
            self.guard.timed(started)  # before logging: the log's own time is not the plugin's
            raise self.guard.failed(exc, "pick") from exc
        self.guard.timed(started)
        return chosen
