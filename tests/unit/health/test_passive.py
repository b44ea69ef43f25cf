from __future__ import annotations

import math
import random

import pytest

from portico.health import OutlierDetector


def detector(
    failures: int = 3, base: float = 30.0, max_time: float = 300.0, percent: int = 100
) -> OutlierDetector:
    return OutlierDetector(failures, base, max_time, percent)


def fail(d: OutlierDetector, server: str, now: float, times: int, pool_size: int = 10) -> bool:
    """`times` failures in a row at `now`; True when the last one ejected the server."""
    ejected = [d.observe(server, True, now, pool_size) for _ in range(times)]
    assert not any(ejected[:-1])
    return ejected[-1]


def ejection_length(d: OutlierDetector, server: str, now: float, pool_size: int = 10) -> float:
    """Eject `server` at `now` with a run of failures; how long the ejection lasts."""
    assert fail(d, server, now, d.consecutive_failures, pool_size)
    end = d.next_change(now)
    assert end is not None
    return end - now


# ejecting


def test_consecutive_failures_eject_a_server_and_only_the_last_one_reports_it() -> None:
    d = detector(failures=3)
    assert [d.observe("a", True, 1.0, 10) for _ in range(3)] == [False, False, True]
    assert d.is_ejected("a", 1.0)
    assert d.ejected(1.0) == {"a"}


def test_fewer_failures_than_the_threshold_eject_nothing() -> None:
    d = detector(failures=3)
    assert not fail(d, "a", 1.0, 2)
    assert not d.is_ejected("a", 1.0)
    assert d.ejected(1.0) == set()


def test_a_success_resets_the_failure_count() -> None:
    d = detector(failures=3)
    fail(d, "a", 1.0, 2)
    assert not d.observe("a", False, 1.0, 10)
    assert not fail(d, "a", 1.0, 2)
    assert fail(d, "a", 1.0, 1)


def test_failures_of_other_servers_do_not_add_up() -> None:
    d = detector(failures=2)
    outcomes = [d.observe(server, True, 1.0, 10) for server in "abc"]
    assert outcomes == [False, False, False]
    assert d.ejected(1.0) == set()


def test_a_threshold_of_one_ejects_on_the_first_failure() -> None:
    d = detector(failures=1)
    assert d.observe("a", True, 0.0, 10)


def test_servers_never_seen_or_only_succeeding_are_not_ejected() -> None:
    d = detector()
    assert not d.observe("a", False, 0.0, 10)
    assert not d.is_ejected("a", 0.0)
    assert not d.is_ejected("nobody", 0.0)
    assert d.ejections("nobody") == 0


# how long ejections last


def test_a_first_ejection_lasts_base_ejection_time() -> None:
    d = detector(base=30.0)
    fail(d, "a", 100.0, 3)
    assert d.is_ejected("a", 129.999)
    assert not d.is_ejected("a", 130.0)
    assert d.ejected(130.0) == set()


def test_repeated_ejections_last_base_time_times_the_ejection_count() -> None:
    d = detector(base=30.0)
    lengths = []
    now = 0.0
    for _ in range(4):
        lengths.append(ejection_length(d, "a", now))
        now += lengths[-1]  # fails again right after coming back
    assert lengths == [30.0, 60.0, 90.0, 120.0]


def test_ejection_time_is_capped_at_max_ejection_time() -> None:
    d = detector(base=30.0, max_time=100.0)
    lengths = []
    now = 0.0
    for _ in range(6):
        lengths.append(ejection_length(d, "a", now))
        now += lengths[-1]
    assert lengths == [30.0, 60.0, 90.0, 100.0, 100.0, 100.0]


def test_the_multiplier_decays_by_one_per_base_time_spent_in_service() -> None:
    d = detector(base=10.0)
    now = 0.0
    for _ in range(4):  # multiplier 4: the last ejection lasted 40 s, ending at 100
        now += ejection_length(d, "a", now)
    assert now == 100.0
    # 25 s in service: two whole base times, multiplier 4 - 2 = 2, then + 1 for this ejection
    assert ejection_length(d, "a", 125.0) == 30.0
    # back at 155; 9.9 s later no whole base time has passed: 3 + 1
    assert ejection_length(d, "a", 164.9) == 40.0


def test_the_multiplier_never_decays_below_a_first_ejection() -> None:
    d = detector(base=10.0)
    now = 0.0
    for _ in range(3):
        now += ejection_length(d, "a", now)
    assert ejection_length(d, "a", now + 10_000.0) == 10.0


def test_decay_counts_from_when_the_ejection_ended_not_when_it_was_noticed() -> None:
    d = detector(base=30.0)
    ejection_length(d, "a", 0.0)  # back at 30; nothing looks until 65
    assert ejection_length(d, "a", 65.0) == 30.0  # one whole base time in service at 65


def test_the_multiplier_stops_growing_once_ejections_reach_the_max() -> None:
    # base 10, max 25: multipliers beyond 3 change nothing, so they are not stored; otherwise
    # a server ejected many times would wait many base times to be forgiven.
    d = detector(base=10.0, max_time=25.0)
    now = 0.0
    for _ in range(8):
        now += ejection_length(d, "a", now)
    assert ejection_length(d, "a", now + 20.0) == 20.0  # 3 - 2 + 1, not 8 - 2 + 1


def test_a_server_comes_back_with_a_clean_failure_count() -> None:
    d = detector(failures=3, base=30.0)
    fail(d, "a", 0.0, 3)
    assert not d.is_ejected("a", 30.0)
    assert not fail(d, "a", 30.0, 2)  # a full run is needed again
    assert fail(d, "a", 30.0, 1)


def test_outcomes_reported_while_ejected_are_ignored() -> None:
    d = detector(failures=2, base=30.0)
    fail(d, "a", 0.0, 2)
    # requests that were in flight at the ejection finish later; none extends or re-ejects
    assert not any(d.observe("a", True, 1.0, 10) for _ in range(10))
    assert not d.observe("a", False, 2.0, 10)
    assert d.next_change(2.0) == 30.0
    assert d.ejections("a") == 1
    assert not fail(d, "a", 30.0, 1)  # the failures seen while ejected did not carry over


# how many may be ejected at once


def test_max_ejection_percent_of_fifty_ejects_one_of_three_servers() -> None:
    d = detector(failures=1, percent=50)
    assert d.observe("a", True, 0.0, 3)
    assert not d.observe("b", True, 0.0, 3)  # two of three would be 67%
    assert not d.observe("c", True, 0.0, 3)
    assert d.ejected(0.0) == {"a"}


def test_max_ejection_percent_counts_exactly_at_the_limit() -> None:
    d = detector(failures=1, percent=50)
    assert d.observe("a", True, 0.0, 4)
    assert d.observe("b", True, 0.0, 4)  # 2 of 4 is 50%: allowed
    assert not d.observe("c", True, 0.0, 4)


def test_a_pool_too_small_for_one_servers_share_never_ejects() -> None:
    d = detector(failures=1, percent=50)
    assert not d.observe("only", True, 0.0, 1)
    assert not d.is_ejected("only", 0.0)


def test_max_ejection_percent_of_zero_never_ejects() -> None:
    d = detector(failures=1, percent=0)
    assert not any(d.observe(s, True, 0.0, 100) for s in ("a", "b"))


def test_max_ejection_percent_of_one_hundred_may_eject_the_whole_pool() -> None:
    d = detector(failures=1, percent=100)
    assert all(d.observe(s, True, 0.0, 3) for s in "abc")


def test_a_denied_ejection_is_counted_and_needs_a_new_run_of_failures() -> None:
    d = detector(failures=2, base=30.0, percent=50)
    fail(d, "a", 0.0, 2, pool_size=2)
    assert not fail(d, "b", 0.0, 2, pool_size=2)
    assert d.overflows == 1
    # a's ejection ends; b's denied run was used up: one more failure is not enough
    assert not d.observe("b", True, 30.0, 2)
    assert d.observe("b", True, 30.0, 2)
    assert d.ejected(30.0) == {"b"}


def test_an_ejection_ending_frees_its_place_under_the_cap() -> None:
    d = detector(failures=1, base=30.0, percent=50)
    assert d.observe("a", True, 0.0, 2)
    assert not d.observe("b", True, 29.0, 2)
    assert d.observe("b", True, 30.0, 2)  # a is back at 30, so b may go


def test_the_cap_follows_the_pool_size_given_with_each_outcome() -> None:
    d = detector(failures=1, percent=50)
    assert d.observe("a", True, 0.0, 2)
    assert not d.observe("b", True, 0.0, 2)
    assert d.observe("b", True, 0.0, 4)  # the pool grew


# next_change and ejected


def test_next_change_is_none_while_nothing_is_ejected() -> None:
    d = detector()
    assert d.next_change(0.0) is None
    fail(d, "a", 0.0, 3)
    assert d.next_change(30.0) is None


def test_next_change_is_the_earliest_end_of_an_ejection() -> None:
    d = detector(failures=1, base=30.0)
    d.observe("a", True, 0.0, 10)
    d.observe("b", True, 10.0, 10)
    assert d.next_change(10.0) == 30.0
    assert d.next_change(29.0) == 30.0
    assert d.next_change(30.0) == 40.0  # a is back
    assert d.ejected(30.0) == {"b"}
    assert d.next_change(40.0) is None


def test_ejections_end_in_order_of_their_deadlines_not_their_starts() -> None:
    d = detector(failures=1, base=10.0)
    now = 0.0
    for _ in range(2):
        now += ejection_length(d, "slow", now)
    assert ejection_length(d, "slow", now) == 30.0  # third ejection: 30 to 60
    d.observe("fast", True, 35.0, 10)  # a first ejection: 35 to 45, ends before slow's
    assert d.next_change(35.0) == 45.0
    assert d.ejected(45.0) == {"slow"}
    assert d.next_change(45.0) == 60.0


def test_is_ejected_needs_no_other_call_to_see_an_ejection_end() -> None:
    d = detector(failures=1, base=30.0)
    d.observe("a", True, 0.0, 10)
    assert d.is_ejected("a", 29.0)
    assert not d.is_ejected("a", 31.0)


def test_ejected_returns_a_fresh_set_the_caller_may_keep() -> None:
    d = detector(failures=1)
    d.observe("a", True, 0.0, 10)
    kept = d.ejected(0.0)
    kept.add("x")
    assert d.ejected(0.0) == {"a"}


# bookkeeping


def test_ejections_counts_every_ejection_of_a_server() -> None:
    d = detector(failures=1, base=1.0)
    for now in (0.0, 100.0, 200.0):
        d.observe("a", True, now, 10)
    d.observe("b", True, 0.0, 10)
    assert (d.ejections("a"), d.ejections("b")) == (3, 1)


def test_forget_drops_a_server_and_frees_its_place_under_the_cap() -> None:
    d = detector(failures=1, base=30.0, percent=50)
    d.observe("a", True, 0.0, 2)
    d.forget("a")
    assert not d.is_ejected("a", 1.0)
    assert d.ejected(1.0) == set()
    assert d.next_change(1.0) is None
    assert d.ejections("a") == 0
    assert d.observe("b", True, 1.0, 2)


def test_forget_keeps_the_other_ejections_in_order() -> None:
    d = detector(failures=1, base=10.0)
    for i, server in enumerate("abcd"):
        d.observe(server, True, float(i), 10)
    d.forget("a")
    d.forget("c")
    assert d.next_change(5.0) == 11.0
    assert d.ejected(11.0) == {"d"}
    assert d.next_change(11.0) == 13.0


def test_a_forgotten_server_starts_from_scratch_if_it_returns() -> None:
    d = detector(failures=2, base=10.0)
    now = 0.0
    for _ in range(3):
        now += ejection_length(d, "a", now)
    fail(d, "a", now, 1)
    d.forget("a")
    d.forget("never-seen")  # ignored
    assert not d.observe("a", True, now, 10)  # the failure before forget() is gone
    assert d.observe("a", True, now, 10)
    assert d.next_change(now) == now + 10.0  # a first ejection again
    assert d.ejections("a") == 1


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((0, 30.0, 300.0, 50), "consecutive_failures"),
        ((5, 0.0, 300.0, 50), "base_ejection_time"),
        ((5, math.nan, 300.0, 50), "base_ejection_time"),
        ((5, math.inf, math.inf, 50), "base_ejection_time"),
        ((5, 30.0, 29.0, 50), "max_ejection_time"),
        ((5, 30.0, math.nan, 50), "max_ejection_time"),
        ((5, 30.0, 300.0, -1), "max_ejection_percent"),
        ((5, 30.0, 300.0, 101), "max_ejection_percent"),
    ],
)
def test_outlier_detector_rejects_bad_settings(
    args: tuple[int, float, float, int], name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        OutlierDetector(*args)


def test_random_traffic_never_breaks_the_cap_and_the_views_agree() -> None:
    rng = random.Random(7)
    pool = [f"s{i}" for i in range(7)]
    d = OutlierDetector(2, 5.0, 40.0, 30)  # at most 2 of 7 (28%) at once
    now = 0.0
    for _ in range(20_000):
        now += rng.expovariate(50.0)
        server = rng.choice(pool)
        failed = rng.random() < (0.6 if server in ("s0", "s1", "s2") else 0.05)
        d.observe(server, failed, now, len(pool))
        ejected = d.ejected(now)
        assert len(ejected) <= 2
        assert ejected == {s for s in pool if d.is_ejected(s, now)}
        end = d.next_change(now)
        assert (end is None) == (not ejected)
        assert end is None or end > now
    assert sum(d.ejections(s) for s in pool) > 50
