"""Stick tables over a MemoryStore (no event loop: the store never suspends), their fallback
when the store is unavailable, and `find_named`."""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from portico.filters.ratelimit import Decision
from portico.persistence import StickTable, find_named
from portico.state import MemoryStore, StoreUnavailable

T = TypeVar("T")


def done(coro: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that must finish without suspending (no event loop needed)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    coro.close()
    raise AssertionError("suspended")


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


class DownStore:
    """A store whose every call fails, as a Redis that is down."""

    name = "down"

    async def get_sticky(self, table: str, key: bytes, ttl: float | None = None) -> str | None:
        raise StoreUnavailable("down")

    async def set_sticky(
        self,
        table: str,
        key: bytes,
        value: str,
        ttl: float,
        *,
        replace: str | None = None,
        max_entries: int = 0,
    ) -> str:
        raise StoreUnavailable("down")

    async def touch_sticky(self, table: str, key: bytes, ttl: float) -> bool:
        raise StoreUnavailable("down")

    async def rate_limit(
        self, key: bytes, rate: float, burst: int, now_ms: int | None = None, cost: int = 1
    ) -> Decision:
        raise StoreUnavailable("down")

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class Server:
    name: str


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def table(clock: FakeClock) -> StickTable:
    return StickTable(MemoryStore(clock), "app", ttl=30, size=2)


def test_a_key_sticks_to_the_server_learned_for_it(table: StickTable) -> None:
    assert done(table.lookup(b"client")) is None
    assert done(table.learn(b"client", "web-1")) == "web-1"
    assert done(table.lookup(b"client")) == "web-1"
    assert (table.hits, table.misses, table.learned) == (1, 1, 1)


def test_learning_keeps_the_server_learned_first(table: StickTable) -> None:
    done(table.learn(b"client", "web-1"))
    assert done(table.learn(b"client", "web-2")) == "web-1"
    assert table.conflicts == 1


def test_learning_replaces_a_server_found_unfit(table: StickTable) -> None:
    done(table.learn(b"client", "web-1"))
    assert done(table.learn(b"client", "web-2", replacing="web-1")) == "web-2"
    assert done(table.lookup(b"client")) == "web-2"


def test_lookups_refresh_the_ttl(table: StickTable, clock: FakeClock) -> None:
    done(table.learn(b"client", "web-1"))
    clock.now += 29
    assert done(table.lookup(b"client")) == "web-1"
    clock.now += 29
    assert done(table.lookup(b"client")) == "web-1"
    clock.now += 30
    assert done(table.lookup(b"client")) is None


def test_the_table_holds_at_most_size_entries(table: StickTable) -> None:
    for key in (b"a", b"b", b"c"):
        done(table.learn(key, "web-1"))
    assert [done(table.lookup(k)) for k in (b"a", b"b", b"c")] == [None, "web-1", "web-1"]


def test_an_empty_key_never_sticks(table: StickTable) -> None:
    assert done(table.learn(b"", "web-1")) == "web-1"
    assert done(table.lookup(b"")) is None
    assert table.learned == 0


def test_a_store_that_is_down_means_a_miss_and_nothing_learned() -> None:
    table = StickTable(DownStore(), "app", ttl=30)
    assert done(table.lookup(b"client")) is None
    assert done(table.learn(b"client", "web-1")) == "web-1"
    assert table.errors == 2


@pytest.mark.parametrize(("ttl", "size"), [(0, 0), (-1, 0), (10, -1)])
def test_settings_are_checked_up_front(ttl: float, size: int) -> None:
    with pytest.raises(ValueError, match=r"ttl|size"):
        StickTable(MemoryStore(), "app", ttl=ttl, size=size)


def test_find_named_returns_the_sticky_candidate_if_present() -> None:
    candidates = [Server("web-1"), Server("web-2")]
    assert find_named(candidates, "web-2") is candidates[1]
    assert find_named(candidates, "web-3") is None
    assert find_named(candidates, None) is None
    assert find_named([], "web-1") is None
