"""Load-balancing policies, registered under their config names. *pure*

Owns the registry (`POLICIES`, `make_policy`) mapping a pool's `balance:` name to a policy
factory. Never filters out unhealthy backends, counts requests or times responses: the pool does
that and hands each policy the healthy candidates. Never reads the clock or the global `random`
module: factories take the `random.Random` that randomised policies draw from.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from portico.balancing.base import Candidate, Policy
from portico.balancing.hashing import ConsistentHash, IpHash
from portico.balancing.least_conn import LeastConn
from portico.balancing.p2c_ewma import P2CEwma, PeakEwma
from portico.balancing.round_robin import Random, RoundRobin, SmoothWeightedRoundRobin

__all__ = ["POLICIES", "Candidate", "PeakEwma", "Policy", "make_policy"]

POLICIES: dict[str, Callable[[random.Random], Policy]] = {
    "round_robin": lambda _rng: RoundRobin(),
    "weighted_round_robin": lambda _rng: SmoothWeightedRoundRobin(),
    "least_conn": lambda _rng: LeastConn(),
    "random": Random,
    "p2c_ewma": P2CEwma,
    "ip_hash": lambda _rng: IpHash(),
    "consistent_hash": lambda _rng: ConsistentHash(),
}


def make_policy(name: str, rng: random.Random | None = None) -> Policy:
    """A new policy instance for the config name `name`, one per pool.

    `rng` feeds the randomised policies (`random`, `p2c_ewma`); pass a seeded one in tests.
    Raises ValueError (which pydantic validators report as a config error) for unknown names.
    """
    try:
        factory = POLICIES[name]
    except KeyError:
        known = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown balancing policy {name!r}; expected one of: {known}") from None
    return factory(rng if rng is not None else random.Random())
