"""Load-balancing policies, registered under their config names. *pure*

Owns the registry (`POLICIES`) of the built-in policies under the names a pool's `policy:`
uses; `portico.config.plugins` finds them there, as it finds users' policies by entry point or
``module:Class``, and builds one per pool with `Policy.create`. Never filters out unhealthy
backends, counts requests or times responses: the pool does that and hands each policy the
healthy candidates. Never reads the clock or the global `random` module: `create` passes the
`random.Random` that randomised policies draw from.
"""

from __future__ import annotations

import random

from portico.balancing.base import Candidate, Policy
from portico.balancing.hashing import ConsistentHash, IpHash
from portico.balancing.least_conn import LeastConn
from portico.balancing.p2c_ewma import P2CEwma, PeakEwma
from portico.balancing.round_robin import Random, RoundRobin, SmoothWeightedRoundRobin

__all__ = ["POLICIES", "Candidate", "PeakEwma", "Policy", "make_policy"]

POLICIES: dict[str, type[Policy]] = {
    "round_robin": RoundRobin,
    "weighted_round_robin": SmoothWeightedRoundRobin,
    "least_conn": LeastConn,
    "random": Random,
    "p2c_ewma": P2CEwma,
    "ip_hash": IpHash,
    "consistent_hash": ConsistentHash,
}
"""The built-in policies by config name, in the order the docs list them."""


def make_policy(name: str, rng: random.Random | None = None) -> Policy:
    """A new built-in policy instance for the config name `name`, one per pool.

    `rng` feeds the randomised policies (`random`, `p2c_ewma`); pass a seeded one in tests.
    Raises ValueError for unknown names. (A config's policy, built-in or not, is built by
    `portico.config.plugins.build_policy`.)
    """
    try:
        cls = POLICIES[name]
    except KeyError:
        known = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown balancing policy {name!r}; expected one of: {known}") from None
    return cls.create(None, rng if rng is not None else random.Random())
