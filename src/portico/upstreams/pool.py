"""A named group of servers and the choice of one of them per request.

Owns: the backends of one pool in one worker, its balancing policy, its hash-key rule and its
upstream settings. Never does I/O: `select` is a plain function of the request and live state.
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from portico.balancing import Policy
from portico.config.plugins import build_policy
from portico.config.schema import PluginsConfig, PoolConfig
from portico.health import OutlierDetector, RetryBudget, slow_start_factor
from portico.http.headers import Header
from portico.http.keys import KeyFunction, key_function
from portico.persistence.session import Persistence, StickBinding, Sticky
from portico.plugins.guard import DEFAULT_BUDGET
from portico.upstreams.backend import BackendState


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """The numbers the proxy needs on every request, resolved once from the config."""

    connect_timeout: float
    read_timeout: float
    write_timeout: float
    idle_timeout: float
    max_requests: int
    retries: int
    hide_headers: frozenset[bytes]


class Waiter(Protocol):
    """A request waiting in a pool's queue for a server below max_conns."""

    def dequeued(self) -> None:
        """A slot is free: go on (pick a server again)."""


FULL: Final = "full"  # `select` result: servers are up, but every one is at max_conns


class Pool:
    """The servers of one pool in one worker: which are fit for traffic, and which one a
    request gets. Health comes from two sides: the control plane's active checks
    (`set_active_health`) and this worker's own view of real traffic (`observe`, outlier
    ejection). Never does I/O; the clock is passed in."""

    def __init__(
        self,
        name: str,
        backends: Sequence[BackendState],
        policy: Policy,
        settings: UpstreamSettings,
        key_of: KeyFunction | None,
        *,
        rng: random.Random,
        outliers: OutlierDetector | None = None,
        on_5xx: bool = True,
        slow_start: float = 0.0,
        max_conns: int = 0,
        queue_size: int = 0,
        queue_timeout: float = 0.0,
        budget: RetryBudget | None = None,
        fallback: str | None = None,
        send_proxy: str | None = None,
        sticky: Sticky | None = None,
    ) -> None:
        self.name = name
        self.backends = tuple(backends)
        self.policy = policy
        self.settings = settings
        self.key_of = key_of
        self.rng = rng
        self.outliers = outliers
        self.on_5xx = on_5xx
        self.slow_start = slow_start
        self.max_conns = max_conns
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.budget = budget
        self.fallback = fallback
        self.send_proxy = send_proxy  # "v1" | "v2": a PROXY header opens each connection
        # session persistence: the cookie from the config; a stick table is bound by the
        # worker, which owns the state store (`bind_stick_table`)
        self.persistence = Persistence(sticky, None) if sticky is not None else None
        self.queue: deque[Waiter] = deque()
        # what the policy sees: a new tuple whenever the set changes (the policies cache on it)
        self.available: tuple[BackendState, ...] = self.backends
        self._next_refresh = float("inf")  # when an ejection ends

    @classmethod
    def from_config(
        cls,
        name: str,
        config: PoolConfig,
        clock: Callable[[], float],
        rng: random.Random,
        plugins: PluginsConfig | None = None,
    ) -> Pool:
        keepalive = config.keepalive
        backends = [
            BackendState(
                server.name,
                server.address.host,
                server.address.port,
                server.weight,
                max_idle=keepalive.max_idle,
                clock=clock,
            )
            for server in config.servers
        ]
        policy = build_policy(
            config.policy,
            config.policy_with,
            rng,
            pool=name,
            path=plugins.path if plugins is not None else (),
            budget=plugins.block_budget if plugins is not None else DEFAULT_BUDGET,
        )
        if policy.needs_latency:
            for backend in backends:
                backend.tracks_latency = True
        key_of: KeyFunction | None = None
        if policy.needs_key:
            key_of = key_function(policy.fixed_key or config.hash_key)
        settings = UpstreamSettings(
            connect_timeout=config.timeouts.connect,
            read_timeout=config.timeouts.read,
            write_timeout=config.timeouts.write,
            idle_timeout=keepalive.idle_timeout,
            max_requests=keepalive.max_requests,
            retries=config.retries,
            hide_headers=frozenset(h.lower().encode() for h in config.hide_headers),
        )
        passive = config.health.passive
        outliers = None
        if passive.enabled:
            outliers = OutlierDetector(
                passive.consecutive_failures,
                passive.base_ejection_time,
                passive.max_ejection_time,
                passive.max_ejection_percent,
            )
        budget = RetryBudget(config.retry_budget.ratio, config.retry_budget.min_per_second)
        return cls(
            name,
            backends,
            policy,
            settings,
            key_of,
            rng=rng,
            outliers=outliers,
            on_5xx=passive.on_5xx,
            slow_start=config.slow_start,
            max_conns=config.max_conns,
            queue_size=config.queue.size,
            queue_timeout=config.queue.timeout or 0.0,
            budget=budget,
            fallback=config.fallback_pool,
            send_proxy=config.proxy_protocol,
            sticky=Sticky.from_config(config.sticky) if config.sticky is not None else None,
        )

    def bind_stick_table(self, binding: StickBinding) -> None:
        """Persist sessions in `binding`'s stick table too (the worker owns the store)."""
        persistence = self.persistence
        self.persistence = Persistence(
            persistence.cookie if persistence is not None else None, binding
        )

    # -- choosing ------------------------------------------------------------------------------

    def select(
        self,
        headers: Sequence[Header],
        path: bytes,
        client_ip: str,
        exclude: Sequence[BackendState],
        now: float,
        prefer: str | None = None,
    ) -> BackendState | str | None:
        """The backend for this request, avoiding those in `exclude` (already tried); None
        when no server is fit for traffic; FULL when all that are fit are at max_conns.
        `prefer` (a persistence cookie's server) wins while it is fit and has room."""
        if now >= self._next_refresh:
            self.refresh(now)
        candidates: Sequence[BackendState] = self.available
        if exclude:
            candidates = [b for b in candidates if b not in exclude]
        if not candidates:
            return None
        max_conns = self.max_conns
        if max_conns:
            candidates = [b for b in candidates if b.in_flight < max_conns]
            if not candidates:
                return FULL
        if prefer is not None:
            for backend in candidates:
                if backend.name == prefer:
                    return backend
        key = self.key_of(headers, path, client_ip) if self.key_of is not None else b""
        chosen = self.policy.pick(candidates, key)
        if chosen is not None and chosen.up_since is not None and self.slow_start:
            # slow start: a server back from down keeps only `factor` of its picks
            factor = slow_start_factor(chosen.up_since, now, self.slow_start)
            if factor >= 1.0:
                chosen.up_since = None
            elif len(candidates) > 1 and self.rng.random() > factor:
                others = [b for b in candidates if b is not chosen]
                chosen = self.policy.pick(others, key) or chosen
        return chosen

    # -- health --------------------------------------------------------------------------------

    def set_active_health(self, server: str, up: bool, now: float) -> bool:
        """The control plane's verdict on one server; True when it changed anything."""
        for backend in self.backends:
            if backend.name == server and backend.active_up != up:
                backend.active_up = up
                backend.up_since = now if up and self.slow_start else None
                # the active verdict supersedes a passive ejection either way (as Envoy's
                # successful_active_health_check_uneject_host): a server restarted and seen
                # healthy gets traffic now, not when an ejection from its crash runs out
                if self.outliers is not None:
                    self.outliers.forget(server)
                backend.ejected = False
                backend.fail_streak = 0
                self.refresh(now)
                return True
        return False

    def observe(self, backend: BackendState, failed: bool, now: float) -> None:
        """One real request's outcome (failed: connect error, timeout, or 5xx with on_5xx)."""
        outliers = self.outliers
        if outliers is None:
            return
        if not failed and not backend.fail_streak:
            return  # the common case costs one attribute read
        backend.fail_streak = backend.fail_streak + 1 if failed else 0
        if outliers.observe(backend.name, failed, now, len(self.backends)):
            self.refresh(now)

    def refresh(self, now: float, force: bool = False) -> None:
        """Recompute the servers fit for traffic (after a health change, or when an ejection
        ends)."""
        outliers = self.outliers
        ejected = outliers.ejected(now) if outliers is not None else ()
        for backend in self.backends:
            if backend.name in ejected and not backend.ejected:
                backend.ejected = True
            elif backend.ejected and backend.name not in ejected:
                backend.ejected = False
                backend.fail_streak = 0
                backend.up_since = now if self.slow_start else None
        available = tuple(
            b for b in self.backends if b.active_up and not b.ejected and b.admin_state == "ready"
        )
        if available != self.available or force:
            self.available = available
        upcoming = outliers.next_change(now) if outliers is not None else None
        self._next_refresh = upcoming if upcoming is not None else float("inf")

    # -- the queue of requests waiting for a slot (max_conns) ----------------------------------

    def enqueue(self, waiter: Waiter) -> bool:
        """Wait for a free slot; False when the queue is full (or there is none)."""
        if len(self.queue) >= self.queue_size:
            return False
        self.queue.append(waiter)
        return True

    def leave_queue(self, waiter: Waiter) -> None:
        with contextlib.suppress(ValueError):
            self.queue.remove(waiter)

    def released(self) -> None:
        """A request to one of this pool's servers ended: the first waiter may go."""
        if self.queue:
            self.queue.popleft().dequeued()

    def close_idle(self, older_than: float, rest_before: float = 0.0) -> None:
        for backend in self.backends:
            backend.close_idle(older_than, rest_before)

    # -- run-time changes from the admin API ----------------------------------------------------

    def set_weight(self, server: str, weight: int, now: float) -> None:
        for backend in self.backends:
            if backend.name == server:
                backend.weight = weight
        self.refresh(now, force=True)  # a new tuple: the policies rebuild what they derived

    def set_state(self, server: str, state: str, now: float) -> None:
        for backend in self.backends:
            if backend.name == server:
                backend.admin_state = state
        self.refresh(now, force=True)

    def add_backend(self, backend: BackendState, now: float) -> None:
        backend.tracks_latency = any(b.tracks_latency for b in self.backends)
        self.backends = (*self.backends, backend)
        self.refresh(now, force=True)

    def remove_backend(self, server: str, now: float) -> None:
        for backend in self.backends:
            if backend.name == server:
                backend.close_idle(float("inf"))
        self.backends = tuple(b for b in self.backends if b.name != server)
        if self.outliers is not None:
            self.outliers.forget(server)
        self.refresh(now, force=True)
