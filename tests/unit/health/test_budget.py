from __future__ import annotations

import math

import pytest

from portico.health import RetryBudget


def retries_allowed(budget: RetryBudget, now: float) -> int:
    """Spend the budget at `now` retry by retry; how many it allowed."""
    spent = 0
    while budget.can_retry(now):
        budget.record_retry(now)
        spent += 1
        assert spent < 1_000_000
    return spent


def requests(budget: RetryBudget, now: float, count: int) -> None:
    for _ in range(count):
        budget.record_request(now)


# the two limits


def test_the_minimum_allows_a_few_retries_with_no_traffic_at_all() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=1.0, window=10.0)
    assert retries_allowed(budget, 0.0) == 10


def test_the_ratio_allows_a_share_of_recent_requests() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0.0)
    requests(budget, 0.0, 100)
    assert retries_allowed(budget, 0.5) == 20


def test_the_larger_of_the_minimum_and_the_ratio_applies() -> None:
    low = RetryBudget(ratio=0.2, min_per_second=1.0)  # minimum 10 per 10 s window
    requests(low, 0.0, 20)  # ratio: 4
    high = RetryBudget(ratio=0.2, min_per_second=1.0)
    requests(high, 0.0, 200)  # ratio: 40
    assert (retries_allowed(low, 0.0), retries_allowed(high, 0.0)) == (10, 40)


def test_a_fractional_allowance_rounds_up() -> None:
    # retries < 0.25 * 10 = 2.5 holds for 0, 1 and 2 retries so far: a third is allowed
    budget = RetryBudget(ratio=0.25, min_per_second=0.0)
    requests(budget, 0.0, 10)
    assert retries_allowed(budget, 0.0) == 3


def test_nothing_is_allowed_with_no_minimum_and_no_traffic() -> None:
    assert not RetryBudget(ratio=0.2, min_per_second=0.0).can_retry(0.0)


def test_can_retry_does_not_spend_the_budget() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.1)  # one retry per window
    assert all(budget.can_retry(0.0) for _ in range(100))
    budget.record_retry(0.0)
    assert not budget.can_retry(0.0)


def test_more_requests_refill_a_spent_budget() -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0.0)
    requests(budget, 0.0, 2)
    assert retries_allowed(budget, 0.0) == 1
    requests(budget, 1.0, 2)
    assert retries_allowed(budget, 1.0) == 1


# the window


def test_old_requests_age_out_of_the_window() -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0.0, window=10.0)
    requests(budget, 0.0, 100)
    assert budget.can_retry(9.99)
    assert not budget.can_retry(10.0)  # the first 1 s bucket left the window


def test_old_retries_age_out_of_the_window() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=1.0, window=10.0)
    assert retries_allowed(budget, 0.5) == 10
    assert not budget.can_retry(9.99)
    assert retries_allowed(budget, 10.0) == 10


def test_counts_leave_the_window_a_whole_bucket_at_a_time() -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, window=10.0)  # 1 s buckets
    budget.record_request(0.5)
    budget.record_request(5.5)
    budget.record_retry(9.5)
    assert budget.can_retry(9.999)  # 1 retry < 2 requests
    assert not budget.can_retry(10.0)  # the request at 0.5 left with its bucket: 1 < 1 fails


def test_a_long_idle_period_clears_every_bucket() -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0.0, window=10.0)
    requests(budget, 3.0, 100)
    retries_allowed(budget, 3.0)
    requests(budget, 1_000_003.0, 2)
    assert retries_allowed(budget, 1_000_003.0) == 1  # only the new requests count


def test_fewer_buckets_make_counts_leave_in_coarser_steps() -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, window=10.0, buckets=2)  # 5 s buckets
    budget.record_request(0.0)
    budget.record_request(4.9)
    assert retries_allowed(budget, 9.9) == 2
    requests(budget, 10.0, 1)
    assert retries_allowed(budget, 10.0) == 0  # both requests left together, retries stayed
    assert retries_allowed(budget, 15.0) == 1


def test_a_clock_that_goes_backwards_counts_in_the_current_bucket() -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, window=10.0)
    budget.record_request(5.0)
    budget.record_request(4.0)  # read late from another timer: counted now, not lost
    budget.record_retry(5.0)
    assert budget.can_retry(14.9)  # both requests are still in the window with the retry
    assert not budget.can_retry(15.0)


# under load


def test_a_flood_of_failures_gets_at_most_ratio_extra_load_plus_the_minimum() -> None:
    ratio, minimum, window = 0.2, 1.0, 10
    budget = RetryBudget(ratio, minimum, window)
    per_second: dict[int, int] = {}  # retries sent in each second
    total_requests = total_retries = 0
    for tick in range(60 * 100):  # 100 requests a second for a minute; every attempt fails
        now, second = tick / 100, tick // 100
        budget.record_request(now)
        total_requests += 1
        for _ in range(3):  # up to 3 retries per request, as far as the budget allows
            if not budget.can_retry(now):
                break
            budget.record_retry(now)
            total_retries += 1
            per_second[second] = per_second.get(second, 0) + 1
        # the budget's window: this second and the 9 before it
        retries_in_window = sum(
            per_second.get(s, 0) for s in range(second - window + 1, second + 1)
        )
        requests_in_window = tick + 1 - 100 * max(0, second - window + 1)
        assert retries_in_window <= math.ceil(max(minimum * window, ratio * requests_in_window))
    assert total_retries <= ratio * total_requests + minimum * window
    assert total_retries >= 0.95 * ratio * total_requests  # the budget is used, not wasted


def test_low_traffic_gets_retries_from_the_minimum() -> None:
    # One request every 2 s, each failing: 20% of the 5 requests in a window would allow 1
    # retry per 10 s; the minimum of 0.3/s allows 3.
    budget = RetryBudget(ratio=0.2, min_per_second=0.3, window=10.0)
    retried = []
    for tick in range(30):
        now = tick * 2.0
        budget.record_request(now)
        if budget.can_retry(now):
            budget.record_retry(now)
            retried.append(now)
    assert retried[:6] == [0.0, 2.0, 4.0, 10.0, 12.0, 14.0]
    assert len(retried) == 18  # 0.3 a second for 60 s


@pytest.mark.parametrize(
    ("args", "kwargs", "name"),
    [
        ((-0.1, 1.0), {}, "ratio"),
        ((math.nan, 1.0), {}, "ratio"),
        ((math.inf, 1.0), {}, "ratio"),
        ((0.2, -1.0), {}, "min_per_second"),
        ((0.2, math.nan), {}, "min_per_second"),
        ((0.2, 1.0, 0.0), {}, "window"),
        ((0.2, 1.0, math.inf), {}, "window"),
        ((0.2, 1.0), {"buckets": 0}, "buckets"),
    ],
)
def test_retry_budget_rejects_bad_settings(
    args: tuple[float, ...], kwargs: dict[str, int], name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        RetryBudget(*args, **kwargs)


def test_retry_budget_repr_shows_the_window_counts() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=1.0)
    requests(budget, 0.0, 5)
    budget.record_retry(0.0)
    assert repr(budget) == "<RetryBudget retries=1 requests=5 ratio=0.2 min=10.0>"
