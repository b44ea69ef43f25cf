"""A named group of servers and the choice of one of them per request.

Owns: the backends of one pool in one worker, its balancing policy, its hash-key rule and its
upstream settings. Never does I/O: `select` is a plain function of the request and live state.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from portico.balancing import Policy, make_policy
from portico.balancing.p2c_ewma import P2CEwma
from portico.config.schema import PoolConfig
from portico.http.headers import Header
from portico.upstreams.backend import BackendState

# A hash key from (headers, path, client address).
KeyFunction = Callable[[Sequence[Header], bytes, str], bytes]


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


def key_function(spec: str) -> KeyFunction:
    """Compile a `hash_key` setting (client_ip | path | header:NAME | cookie:NAME)."""
    if spec == "client_ip":
        return lambda headers, path, client_ip: client_ip.encode()
    if spec == "path":
        return lambda headers, path, client_ip: path.split(b"?", 1)[0]
    kind, _, name = spec.partition(":")
    wanted = name.lower().encode()
    if kind == "header":

        def by_header(headers: Sequence[Header], path: bytes, client_ip: str) -> bytes:
            for key, value in headers:
                if key.lower() == wanted:
                    return value
            return client_ip.encode()

        return by_header
    if kind == "cookie":
        cookie_name = name.encode()

        def by_cookie(headers: Sequence[Header], path: bytes, client_ip: str) -> bytes:
            for key, value in headers:
                if key.lower() == b"cookie":
                    for part in value.split(b";"):
                        k, _, v = part.strip().partition(b"=")
                        if k == cookie_name:
                            return v
            return client_ip.encode()

        return by_cookie
    raise ValueError(f"unknown hash key {spec!r}")


class Pool:
    """The servers of one pool and how a request picks one."""

    __slots__ = ("backends", "key_of", "name", "policy", "settings")

    def __init__(
        self,
        name: str,
        backends: Sequence[BackendState],
        policy: Policy,
        settings: UpstreamSettings,
        key_of: KeyFunction | None,
    ) -> None:
        self.name = name
        self.backends = tuple(backends)
        self.policy = policy
        self.settings = settings
        self.key_of = key_of

    @classmethod
    def from_config(
        cls, name: str, config: PoolConfig, clock: Callable[[], float], rng: random.Random
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
        policy = make_policy(config.policy, rng)
        if isinstance(policy, P2CEwma):
            for backend in backends:
                backend.tracks_latency = True
        key_of: KeyFunction | None = None
        if policy.needs_key:
            key_of = key_function("client_ip" if config.policy == "ip_hash" else config.hash_key)
        settings = UpstreamSettings(
            connect_timeout=config.timeouts.connect,
            read_timeout=config.timeouts.read,
            write_timeout=config.timeouts.write,
            idle_timeout=keepalive.idle_timeout,
            max_requests=keepalive.max_requests,
            retries=config.retries,
            hide_headers=frozenset(h.lower().encode() for h in config.hide_headers),
        )
        return cls(name, backends, policy, settings, key_of)

    def select(
        self,
        headers: Sequence[Header],
        path: bytes,
        client_ip: str,
        exclude: Sequence[BackendState],
    ) -> BackendState | None:
        """The backend for this request, avoiding those in `exclude` (already tried)."""
        candidates: Sequence[BackendState] = self.backends
        if exclude:
            candidates = [b for b in candidates if b not in exclude]
        key = self.key_of(headers, path, client_ip) if self.key_of is not None else b""
        return self.policy.pick(candidates, key)

    def close_idle(self, older_than: float) -> None:
        for backend in self.backends:
            backend.close_idle(older_than)
