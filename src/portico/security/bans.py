"""Abuse bans: client keys refused for a while after breaking a listener's rule.

Owns `Ban` (one banned key of one listener, until a wall-clock time) and `BanTable` (the bans
one process knows, lapsing by themselves). *Pure*: the caller passes ``now``. Counting the
requests that lead to a ban is the state store's (`StateStore.count`); spreading a ban to the
other workers and instances is the supervisor's: a worker that sees a rule broken bans the key
at once itself, and tells the supervisor, which tells every worker (and, with Redis, every
instance).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Ban:
    """`key` (a client address, or a header's or cookie's value) is refused on `listener`
    until `expires` (wall clock), because of `rule`."""

    listener: str
    key: str
    expires: float
    rule: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "listener": self.listener,
            "key": self.key,
            "expires": self.expires,
            "rule": self.rule,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Ban:
        expires = data["expires"]
        if not isinstance(expires, int | float):
            raise ValueError(f"expires must be a number, not {expires!r}")
        return cls(
            str(data["listener"]), str(data["key"]), float(expires), str(data.get("rule", ""))
        )


class BanTable:
    """The live bans of one process, by (listener, key)."""

    def __init__(self) -> None:
        self.bans: dict[tuple[str, str], Ban] = {}
        self._next_expiry = float("inf")

    def add(self, ban: Ban) -> bool:
        """Record `ban`; False when the key was already banned at least as long."""
        key = (ban.listener, ban.key)
        current = self.bans.get(key)
        if current is not None and current.expires >= ban.expires:
            return False
        self.bans[key] = ban
        self._next_expiry = min(self._next_expiry, ban.expires)
        return True

    def remove(self, listener: str, key: str) -> bool:
        return self.bans.pop((listener, key), None) is not None

    def replace(self, bans: Iterable[Ban]) -> None:
        self.bans = {(b.listener, b.key): b for b in bans}
        self._next_expiry = min((b.expires for b in self.bans.values()), default=float("inf"))

    def is_banned(self, listener: str, key: str, now: float) -> bool:
        if not self.bans:
            return False
        if now >= self._next_expiry:
            self.expire(now)
        return (listener, key) in self.bans

    def expire(self, now: float) -> None:
        for key in [k for k, b in self.bans.items() if b.expires <= now]:
            del self.bans[key]
        self._next_expiry = min((b.expires for b in self.bans.values()), default=float("inf"))

    def live(self, now: float) -> list[Ban]:
        self.expire(now)
        return sorted(self.bans.values(), key=lambda b: (b.listener, b.key))
