"""The contract between the pool and its load-balancing policies. *pure*

Owns `Candidate` (what a policy may read on a backend), `Policy` (what the pool calls once per
request) and `CandidateSetCache` (how a policy memoises whatever it derives from the candidate
set, so the hot path never rebuilds it).

Never awaits, never touches sockets, never reads the clock or the `random` module globals:
anything time- or chance-dependent is passed in, so every decision is reproducible in a test.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, Self, TypeVar, cast

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["C", "Candidate", "CandidateSetCache", "Policy", "Signature"]


class Candidate(Protocol):
    """What a policy may look at on a backend (the live BackendState object satisfies it)."""

    @property
    def name(self) -> str:
        """Stable and unique within a pool: hashing policies map keys to it."""
        ...

    @property
    def weight(self) -> int:
        """Relative share of traffic, >= 1."""
        ...

    @property
    def in_flight(self) -> int:
        """Requests currently outstanding to this backend."""
        ...

    @property
    def latency(self) -> float:
        """Peak-EWMA response time in seconds; 0.0 means no sample yet."""
        ...


C = TypeVar("C", bound=Candidate)
T = TypeVar("T")

# The part of a candidate set that derived structures (rings, slot tables, cumulative weights)
# depend on: (name, weight) per candidate, in the caller's order.
Signature = tuple[tuple[str, int], ...]


class Policy:
    """Chooses the backend for one request; the pool owns one instance per pool.

    The base of every policy, the built-in ones and users' (`portico.plugins` exports it):
    a plain class, never compiled, so any policy may subclass it in either build. What a pool
    must do for a policy is said by class attributes, not by its config name.
    """

    __slots__ = ()

    Options: ClassVar[type[BaseModel] | None] = None
    """The pydantic model of the policy's options (`policy: {use: ..., with: {...}}`)."""

    needs_key: bool = False
    """True for hashing policies: the caller then computes the key per request."""

    fixed_key: str | None = None
    """The hash key whatever the pool's `hash_key` says (`ip_hash`: "client_ip")."""

    needs_latency: bool = False
    """True when `pick` reads `Candidate.latency`: the pool then times every response."""

    @classmethod
    def create(cls, options: BaseModel | None, rng: random.Random) -> Self:
        """A new instance for one pool: ``cls(options)``, or ``cls()`` without `Options`.
        Override to use `rng`, the pool's random source (seeded in tests)."""
        factory: Any = cls
        return cast(Self, factory(options) if cls.Options is not None else factory())

    def pick(self, candidates: Sequence[C], key: bytes) -> C | None:
        """Choose one of `candidates`, or None when there are none.

        `candidates` are already filtered to healthy backends and may differ between calls as
        servers go up and down. `key` is b"" unless `needs_key`. Runs once per request, so
        implementations keep it cheap and allocation-free in the steady state.
        """
        raise NotImplementedError


class CandidateSetCache(Generic[T]):
    """Memoises one value derived from a candidate set, rebuilt only when the set changes.

    The value is built from the set's `Signature`, never from the candidate objects, and must
    refer to candidates by index: a pool that swaps in fresh objects with the same names and
    weights (a config reload) keeps the cached value, and the policy still returns the fresh
    objects by indexing the sequence it was given.

    Fast path: the very same tuple object as last time is trusted without looking inside
    (identity, O(1)). Precondition: a pool that changes membership or a weight hands over a
    new tuple, which it does anyway when it rebuilds its healthy set. Any other sequence (a
    list that may be mutated in place) is compared by signature, O(n) but no rebuild.
    """

    __slots__ = ("_build", "_last", "_signature", "_value")

    def __init__(self, build: Callable[[Signature], T]) -> None:
        self._build = build
        self._last: object = None  # the last tuple seen; held so its id cannot be reused
        self._signature: Signature | None = None
        self._value: T | None = None

    def get(self, candidates: Sequence[Candidate]) -> T:
        """The value for `candidates`, building it only if their signature changed."""
        value = self._value
        if candidates is self._last and value is not None:
            return value
        signature = tuple([(c.name, c.weight) for c in candidates])
        if value is None or signature != self._signature:
            value = self._value = self._build(signature)
            self._signature = signature
        self._last = candidates if type(candidates) is tuple else None
        return value
