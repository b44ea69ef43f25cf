"""What DNS answers mean for a pool: pure decisions, no I/O.

Owns `Found` (one server a record names: address, port, weight, and the name it gets),
`srv_servers` (RFC 2782: the lowest priority's targets, with their weights and ports),
`next_lookup` (the records' TTL bounded by min_ttl/max_ttl) and `changes` (what to add,
drain and re-weight to go from one set to the next). Never resolves anything (`lookup.py`
does) and never touches a pool (the supervisor does, through the workers' channel).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "Changes",
    "Found",
    "LookupFailed",
    "SrvRecord",
    "changes",
    "next_lookup",
    "srv_servers",
]

MAX_WEIGHT = 256  # a pool's weights are 1..256 (ServerConfig.weight)


class LookupFailed(Exception):
    """A lookup that gave no usable answer: failed, timed out, or named nothing."""


@dataclass(frozen=True, slots=True)
class Found:
    """One server a DNS answer names."""

    host: str  # an IP address
    port: int
    weight: int = 1

    @property
    def name(self) -> str:
        """host:port ([v6]:port): the server's name in logs, metrics and the admin API."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


def srv_weight(weight: int) -> int:
    """An SRV weight (0..65535) as a pool weight (1..256): 0 means "rarely" in RFC 2782, here
    the smallest share, 1; larger ones are capped."""
    return max(1, min(weight, MAX_WEIGHT))


def srv_servers(
    records: Iterable[SrvRecord], addresses: Mapping[str, Sequence[str]]
) -> list[Found]:
    """The servers of an SRV answer: every address of each target of the lowest priority
    that has any address (a higher priority number is a backup, used only when no target of a
    lower one resolves), on the record's port, with its weight. A "." target means no
    service (RFC 2782) and is skipped."""
    by_priority: dict[int, list[SrvRecord]] = {}
    for record in records:
        if record.target.rstrip(".") == "":
            continue
        by_priority.setdefault(record.priority, []).append(record)
    for priority in sorted(by_priority):
        out = [
            Found(host, record.port, srv_weight(record.weight))
            for record in by_priority[priority]
            for host in addresses.get(record.target, ())
        ]
        if out:
            return _unique(out)
    return []


def address_servers(hosts: Iterable[str], port: int, weight: int) -> list[Found]:
    """The servers of A/AAAA answers: each address on the configured port."""
    return _unique(Found(str(ipaddress.ip_address(host)), port, weight) for host in hosts)


def _unique(found: Iterable[Found]) -> list[Found]:
    """One server per name (the same address twice, as two targets or families, is one)."""
    seen: dict[str, Found] = {}
    for server in found:
        seen.setdefault(server.name, server)
    return sorted(seen.values(), key=lambda s: s.name)


def next_lookup(ttl: float | None, min_ttl: float, max_ttl: float) -> float:
    """Seconds until the next lookup: the answer's TTL (the smallest of its records), bounded
    by `min_ttl` and `max_ttl`; after a failure (`ttl` None), `min_ttl` (but not 0)."""
    if ttl is None:
        return max(min_ttl, 1.0)
    return min(max(ttl, min_ttl), max_ttl)


@dataclass(frozen=True, slots=True)
class Changes:
    added: tuple[Found, ...] = ()
    removed: tuple[str, ...] = ()  # names: drained, then taken out
    reweighted: tuple[Found, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.reweighted)


def changes(current: Sequence[Found], new: Sequence[Found]) -> Changes:
    """How to go from the servers a pool has from one entry (`current`) to those its latest
    good answer names (`new`)."""
    before = {s.name: s for s in current}
    after = {s.name: s for s in new}
    return Changes(
        added=tuple(s for name, s in after.items() if name not in before),
        removed=tuple(name for name in before if name not in after),
        reweighted=tuple(
            s for name, s in after.items() if name in before and before[name].weight != s.weight
        ),
    )
