"""MemoryStore: stick-table NX and compare-and-set semantics, TTLs on a fake clock, bounds, and
GCRA rate limits, all without an event loop (the store never suspends)."""

from __future__ import annotations

import math
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from portico.filters.ratelimit import Gcra
from portico.state import MemoryStore, StateStore
from portico.state.store import check_table, ttl_ms

T = TypeVar("T")


def done(coro: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that must finish without suspending (no event loop needed)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    coro.close()
    raise AssertionError("MemoryStore suspended: it must never await")


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> MemoryStore:
    return MemoryStore(clock)


def test_memory_store_is_a_state_store(store: MemoryStore) -> None:
    shared: StateStore = store  # a static check (mypy --strict on this file)
    assert shared.name == "memory"


# -- stick tables: NX and compare-and-set ----------------------------------------------------


def test_get_sticky_misses_an_unknown_table_or_key(store: MemoryStore) -> None:
    assert done(store.get_sticky("app", b"k")) is None
    done(store.set_sticky("app", b"other", "s1", 10))
    assert done(store.get_sticky("app", b"k")) is None


def test_set_sticky_stores_when_absent_and_returns_the_value(store: MemoryStore) -> None:
    assert done(store.set_sticky("app", b"k", "s1", 10)) == "s1"
    assert done(store.get_sticky("app", b"k")) == "s1"


def test_set_sticky_keeps_the_first_writers_value(store: MemoryStore) -> None:
    done(store.set_sticky("app", b"k", "s1", 10))
    assert done(store.set_sticky("app", b"k", "s2", 10)) == "s1"
    assert done(store.get_sticky("app", b"k")) == "s1"


def test_set_sticky_replaces_only_the_named_old_value(store: MemoryStore) -> None:
    done(store.set_sticky("app", b"k", "s1", 10))
    assert done(store.set_sticky("app", b"k", "s2", 10, replace="s1")) == "s2"
    # a second instance that also saw s1 fail loses the race and gets the winner's value
    assert done(store.set_sticky("app", b"k", "s3", 10, replace="s1")) == "s2"
    assert done(store.get_sticky("app", b"k")) == "s2"


def test_tables_are_separate(store: MemoryStore) -> None:
    done(store.set_sticky("a", b"k", "s1", 10))
    assert done(store.set_sticky("b", b"k", "s2", 10)) == "s2"
    assert done(store.get_sticky("a", b"k")) == "s1"


# -- TTLs --------------------------------------------------------------------------------------


def test_an_entry_expires_after_its_ttl(store: MemoryStore, clock: FakeClock) -> None:
    done(store.set_sticky("app", b"k", "s1", 10))
    clock.advance(9.999)
    assert done(store.get_sticky("app", b"k")) == "s1"
    clock.advance(0.001)
    assert done(store.get_sticky("app", b"k")) is None


def test_an_expired_entry_can_be_replaced_by_anyone(store: MemoryStore, clock: FakeClock) -> None:
    done(store.set_sticky("app", b"k", "s1", 1))
    clock.advance(1)
    assert done(store.set_sticky("app", b"k", "s2", 1)) == "s2"


def test_get_with_a_ttl_refreshes_the_entry(store: MemoryStore, clock: FakeClock) -> None:
    done(store.set_sticky("app", b"k", "s1", 10))
    clock.advance(8)
    assert done(store.get_sticky("app", b"k", ttl=10)) == "s1"
    clock.advance(8)  # 16 s after the write, 8 s after the refresh
    assert done(store.get_sticky("app", b"k")) == "s1"
    clock.advance(2)
    assert done(store.get_sticky("app", b"k")) is None


def test_get_without_a_ttl_does_not_refresh(store: MemoryStore, clock: FakeClock) -> None:
    done(store.set_sticky("app", b"k", "s1", 10))
    clock.advance(8)
    done(store.get_sticky("app", b"k"))
    clock.advance(2)
    assert done(store.get_sticky("app", b"k")) is None


def test_touch_refreshes_and_reports_a_miss(store: MemoryStore, clock: FakeClock) -> None:
    done(store.set_sticky("app", b"k", "s1", 10))
    clock.advance(9)
    assert done(store.touch_sticky("app", b"k", 10)) is True
    clock.advance(9)
    assert done(store.get_sticky("app", b"k")) == "s1"
    assert done(store.touch_sticky("app", b"missing", 10)) is False
    clock.advance(1)
    assert done(store.touch_sticky("app", b"k", 10)) is False  # expired


def test_writing_the_same_value_again_refreshes_it(store: MemoryStore, clock: FakeClock) -> None:
    done(store.set_sticky("app", b"k", "s1", 10))
    clock.advance(9)
    assert done(store.set_sticky("app", b"k", "s1", 10)) == "s1"
    clock.advance(9)
    assert done(store.get_sticky("app", b"k")) == "s1"


@pytest.mark.parametrize("ttl", [0.0, -1.0, math.inf, math.nan])
def test_a_ttl_must_be_positive_and_finite(store: MemoryStore, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl must be"):
        done(store.set_sticky("app", b"k", "s1", ttl))


def test_ttls_round_up_to_whole_milliseconds() -> None:
    assert ttl_ms(0.0001) == 1
    assert ttl_ms(1.0) == 1000
    assert ttl_ms(1.0001) == 1001


@pytest.mark.parametrize("table", ["", "a{b", "a}b"])
def test_a_table_name_is_non_empty_without_braces(store: MemoryStore, table: str) -> None:
    with pytest.raises(ValueError, match="table name"):
        check_table(table)
    with pytest.raises(ValueError, match="table name"):
        done(store.set_sticky(table, b"k", "s1", 10))


# -- bounds ------------------------------------------------------------------------------------


def test_a_full_table_evicts_the_least_recently_used(store: MemoryStore) -> None:
    for key in (b"k1", b"k2", b"k3"):
        done(store.set_sticky("app", key, "s1", 10, max_entries=3))
    done(store.get_sticky("app", b"k1", ttl=10))  # used: now the most recent
    done(store.set_sticky("app", b"k4", "s1", 10, max_entries=3))
    assert [done(store.get_sticky("app", k)) for k in (b"k1", b"k2", b"k3", b"k4")] == [
        "s1",
        None,
        "s1",
        "s1",
    ]
    assert store.evicted == 1
    assert len(store) == 3


def test_the_store_bounds_every_table(clock: FakeClock) -> None:
    store = MemoryStore(clock, max_entries=2)
    for i in range(5):
        done(store.set_sticky("app", b"k%d" % i, "s1", 10, max_entries=100))
    assert len(store) == 2
    assert store.evicted == 3


def test_evicting_an_expired_entry_is_not_counted(clock: FakeClock) -> None:
    store = MemoryStore(clock, max_entries=2)
    done(store.set_sticky("app", b"old", "s1", 1))
    clock.advance(1)
    done(store.set_sticky("app", b"k1", "s1", 10))
    done(store.set_sticky("app", b"k2", "s1", 10))
    assert store.evicted == 0
    assert len(store) == 2


def test_bounds_must_be_positive(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        MemoryStore(clock, max_entries=0)


# -- rate limits -------------------------------------------------------------------------------


def test_rate_limit_allows_a_burst_then_the_rate(store: MemoryStore, clock: FakeClock) -> None:
    allowed = [done(store.rate_limit(b"c", rate=10, burst=3)).allowed for _ in range(4)]
    assert allowed == [True, True, True, False]
    clock.advance(0.1)
    assert done(store.rate_limit(b"c", rate=10, burst=3)).allowed
    assert not done(store.rate_limit(b"c", rate=10, burst=3)).allowed


def test_rate_limit_decides_as_gcra_does(store: MemoryStore) -> None:
    gcra = Gcra(2.5, 4)
    tat: float | None = None
    for now_ms, cost in [(1000, 1), (1000, 2), (1100, 2), (1500, 0), (2000, 1), (9000, 4)]:
        expected = gcra.decide(tat, now_ms / 1000, cost)
        got = done(store.rate_limit(b"c", 2.5, 4, now_ms=now_ms, cost=cost))
        assert got == expected
        if expected.allowed:
            tat = expected.new_tat


def test_each_rate_and_burst_has_its_own_limiter(store: MemoryStore) -> None:
    for _ in range(2):
        done(store.rate_limit(b"c", rate=1, burst=2))
    assert not done(store.rate_limit(b"c", rate=1, burst=2)).allowed
    assert done(store.rate_limit(b"c", rate=1, burst=3)).allowed


def test_rate_limit_rejects_bad_arguments(store: MemoryStore) -> None:
    with pytest.raises(ValueError, match="rate must be"):
        done(store.rate_limit(b"c", rate=0, burst=1))
    with pytest.raises(ValueError, match="burst must be"):
        done(store.rate_limit(b"c", rate=1, burst=0))
    with pytest.raises(ValueError, match="cost must be"):
        done(store.rate_limit(b"c", rate=1, burst=2, cost=3))


def test_rate_limit_keys_are_bounded(clock: FakeClock) -> None:
    store = MemoryStore(clock, max_rate_keys=10)
    for i in range(100):
        done(store.rate_limit(b"client-%d" % i, rate=1, burst=5))
    (limiter,) = store._limiters.values()
    assert len(limiter) <= 15  # RateLimiter's bound: 1.5 * max_keys between sweeps


def test_close_forgets_everything(store: MemoryStore) -> None:
    done(store.set_sticky("app", b"k", "s1", 10))
    done(store.close())
    assert done(store.get_sticky("app", b"k")) is None
