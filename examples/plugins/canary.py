"""A canary: a steady share of users goes to another pool, chosen by a request header.

    routes:
      - match: {path: /}
        pool: stable
        filters:
          - use: canary:Canary
            with: {pool: canary, share: 0.1, key: X-User}

Each user (the `key` header's value) is hashed to a number in [0, 1): below `share`, their
requests go to `pool`, so one user always sees the same version while a tenth of them try
the new one. `X-Canary: always` or `never` forces it (for testers). Requests without the key
header stay where the route sent them.

Why a filter and not a balancing policy: a policy chooses a server within one pool and sees
only that pool's healthy servers. Choosing the pool is routing, and a filter may do it
(`Request.use_pool`); the canary pool keeps its own servers, health checks, retries, limits
and metrics.
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, Field

from portico.plugins import Filter, PoolName, Request


class Canary(Filter):
    class Options(BaseModel):
        pool: PoolName
        share: float = Field(ge=0.0, le=1.0)
        key: str = "X-User"
        force: str = "X-Canary"

    def __init__(self, options: Options) -> None:
        self.options = options

    def on_request(self, request: Request) -> None:
        options = self.options
        forced = request.header(options.force)
        if forced == "always":
            request.use_pool(options.pool)
            return
        if forced == "never":
            return
        user = request.header(options.key)
        if user is not None and _bucket(user) < options.share:
            request.use_pool(options.pool)


def _bucket(value: str) -> float:
    """`value` hashed to [0, 1), the same in every worker and instance (not Python's hash(),
    which is salted per process)."""
    digest = hashlib.blake2b(value.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
