"""A tiny stand-in for the live backend state: just what `Candidate` asks for."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    weight: int = 1
    in_flight: int = 0
    latency: float = 0.0


def nodes(*names: str) -> tuple[Node, ...]:
    """Idle, unsampled, weight-1 nodes with the given names, in that order."""
    return tuple(Node(name) for name in names)


def names(picked: list[Node | None]) -> str:
    """Picks as a string of names, for comparing single-letter sequences at a glance."""
    return "".join(node.name if node is not None else "-" for node in picked)


def tally(picked: list[Node | None]) -> Counter[str]:
    """How many times each name was picked."""
    return Counter(node.name if node is not None else "-" for node in picked)
