"""GCRA decisions, the per-worker key table, rate parsing and RateLimit headers, on a fake clock."""

from __future__ import annotations

import dataclasses
import math
import re
import time

import pytest

from portico.filters.ratelimit import Decision, Gcra, RateLimiter, parse_rate, ratelimit_headers

# Clock readings the arithmetic must be exact at: zero, a monotonic clock after a few hours
# and after two weeks of uptime, and Unix time (the coarsest floats a caller might pass).
CLOCKS = [0.0, 12_345.678, 1_200_000.125, 1_700_000_000.5]


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def burst_from_idle(gcra: Gcra, now: float, tat: float | None = None) -> tuple[int, float | None]:
    """How many cost-1 requests in a row `gcra` allows at the one instant `now`, and the TAT."""
    allowed = 0
    while True:
        decision = gcra.decide(tat, now)
        if not decision.allowed:
            return allowed, tat
        tat = decision.new_tat
        allowed += 1


# ---------------------------------------------------------------------------------------------
# Gcra: parameters


def test_gcra_derives_interval_tolerance_and_window_from_rate_and_burst() -> None:
    gcra = Gcra(rate=10.0, burst=5)
    assert gcra.interval == pytest.approx(0.1)  # T = 1 / rate
    assert gcra.tolerance == pytest.approx(0.4)  # tau = T * (burst - 1)
    assert gcra.window == pytest.approx(0.5)  # tau + T: empty to full
    assert gcra.slack == pytest.approx(1e-4)  # a thousandth of T


def test_gcra_slack_is_capped_at_a_millisecond_for_slow_rates() -> None:
    assert Gcra(rate=1 / 3600, burst=1).slack == 1e-3


@pytest.mark.parametrize("rate", [0.0, -1.0, math.inf, math.nan])
def test_gcra_rejects_a_rate_that_is_not_positive_and_finite(rate: float) -> None:
    with pytest.raises(ValueError, match="rate must be"):
        Gcra(rate, burst=1)


@pytest.mark.parametrize("burst", [0, -3, 2.5, True])
def test_gcra_rejects_a_burst_below_one_or_not_whole(burst: object) -> None:
    with pytest.raises(ValueError, match="burst must be"):
        Gcra(10.0, burst)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Gcra: burst, then the steady rate


def test_gcra_idle_client_gets_exactly_burst_at_once_then_one_per_interval() -> None:
    gcra = Gcra(rate=10.0, burst=5)
    clock = FakeClock()
    allowed, tat = burst_from_idle(gcra, clock.now)
    assert allowed == 5
    for _ in range(100):
        clock.advance(0.1)
        first = gcra.decide(tat, clock.now)
        assert first.allowed
        tat = first.new_tat
        assert not gcra.decide(tat, clock.now).allowed


@pytest.mark.parametrize("now", CLOCKS)
@pytest.mark.parametrize(
    ("rate", "burst"),
    [(10.0, 5), (1.0, 1), (100 / 7, 3), (1000.0, 1000), (1 / 60, 1), (5000 / 3600, 50), (0.5, 7)],
)
def test_gcra_burst_is_exact_at_any_clock_reading(rate: float, burst: int, now: float) -> None:
    assert burst_from_idle(Gcra(rate, burst), now)[0] == burst


def test_gcra_burst_of_one_is_strictly_one_request_per_interval() -> None:
    gcra = Gcra(rate=2.0, burst=1)
    first = gcra.decide(None, 100.0)
    assert first.allowed
    assert not gcra.decide(first.new_tat, 100.49).allowed
    assert gcra.decide(first.new_tat, 100.5).allowed


def test_gcra_hammering_client_gets_burst_plus_rate_times_elapsed() -> None:
    # A request every millisecond for 60 s at 10/s, burst 5: 5 at once, then one per 100 ms.
    gcra = Gcra(rate=10.0, burst=5)
    tat: float | None = None
    allowed = 0
    for ms in range(60_001):
        decision = gcra.decide(tat, 5000.0 + ms / 1000)
        if decision.allowed:
            tat = decision.new_tat
            allowed += 1
    assert allowed == 5 + 600


def test_gcra_idle_time_refills_the_burst_but_never_beyond_it() -> None:
    gcra = Gcra(rate=10.0, burst=5)
    _, tat = burst_from_idle(gcra, 0.0)
    assert burst_from_idle(gcra, 0.2, tat)[0] == 2  # two intervals refilled two requests
    assert burst_from_idle(gcra, 3600.0, tat)[0] == 5  # an hour idle: still only the burst


def test_gcra_past_tat_behaves_exactly_like_no_tat() -> None:
    gcra = Gcra(rate=10.0, burst=5)
    for stale in (999.0, 1000.0 - 1e-9, 1000.0):
        assert gcra.decide(stale, 1000.0) == gcra.decide(None, 1000.0)


# ---------------------------------------------------------------------------------------------
# Gcra: what a denial says and does


def test_gcra_denied_request_does_not_consume() -> None:
    gcra = Gcra(rate=10.0, burst=2)
    clock = FakeClock()
    _, tat = burst_from_idle(gcra, clock.now)
    assert tat is not None
    for _ in range(99):  # a client retrying every millisecond while limited
        denied = gcra.decide(tat, clock.advance(0.001))
        assert not denied.allowed
        assert denied.new_tat == tat
    # Retrying did not push the next slot back: it opens one interval after the burst.
    assert gcra.decide(tat, 1000.1).allowed


@pytest.mark.parametrize("now", CLOCKS)
@pytest.mark.parametrize(("rate", "burst", "cost"), [(10.0, 5, 1), (100 / 7, 3, 2), (0.5, 4, 4)])
def test_gcra_client_that_waits_exactly_retry_after_is_allowed(
    rate: float, burst: int, cost: int, now: float
) -> None:
    gcra = Gcra(rate, burst)
    _, tat = burst_from_idle(gcra, now)
    denied = gcra.decide(tat, now, cost)
    assert not denied.allowed
    assert denied.retry_after == pytest.approx(cost * gcra.interval, abs=1e-6)
    assert gcra.decide(tat, now + denied.retry_after, cost).allowed
    # ...and not a noticeable moment earlier (1% of an interval is well beyond the slack).
    assert not gcra.decide(tat, now + denied.retry_after - gcra.interval / 100, cost).allowed


def test_gcra_retry_after_is_zero_when_allowed() -> None:
    assert Gcra(rate=10.0, burst=5).decide(None, 0.0).retry_after == 0.0


def test_gcra_retry_after_counts_from_a_partly_refilled_state() -> None:
    gcra = Gcra(rate=10.0, burst=5)
    _, tat = burst_from_idle(gcra, 0.0)
    denied = gcra.decide(tat, 0.03)
    assert denied.retry_after == pytest.approx(0.07)
    assert gcra.decide(tat, 0.03 + denied.retry_after).allowed


# ---------------------------------------------------------------------------------------------
# Gcra: remaining and reset


def test_gcra_remaining_counts_down_from_burst_minus_one() -> None:
    gcra = Gcra(rate=10.0, burst=5)
    tat: float | None = None
    remaining = []
    for _ in range(7):
        decision = gcra.decide(tat, 50.0)
        remaining.append(decision.remaining)
        tat = decision.new_tat
    assert remaining == [4, 3, 2, 1, 0, 0, 0]


def test_gcra_remaining_comes_back_one_per_interval() -> None:
    gcra = Gcra(rate=10.0, burst=5)
    _, tat = burst_from_idle(gcra, 0.0)
    assert gcra.decide(tat, 0.25, cost=0).remaining == 2
    assert gcra.decide(tat, 0.5, cost=0).remaining == 5
    assert gcra.decide(tat, 9.0, cost=0).remaining == 5


def test_gcra_remaining_after_a_denial_is_what_a_cheaper_request_could_still_get() -> None:
    gcra = Gcra(rate=10.0, burst=5)
    first = gcra.decide(None, 0.0, cost=3)
    denied = gcra.decide(first.new_tat, 0.0, cost=3)
    assert not denied.allowed
    assert denied.remaining == 2


@pytest.mark.parametrize("now", CLOCKS)
def test_gcra_reset_after_is_when_the_full_burst_is_back(now: float) -> None:
    gcra = Gcra(rate=10.0, burst=5)
    tat: float | None = None
    for used in range(1, 4):
        decision = gcra.decide(tat, now)
        tat = decision.new_tat
        assert decision.reset_after == pytest.approx(used * 0.1)
    assert burst_from_idle(gcra, now + decision.reset_after, tat)[0] == 5


def test_gcra_reset_after_of_a_denial_is_the_current_state() -> None:
    gcra = Gcra(rate=10.0, burst=5)
    _, tat = burst_from_idle(gcra, 0.0)
    denied = gcra.decide(tat, 0.05)
    assert not denied.allowed
    assert denied.reset_after == pytest.approx(0.45)


# ---------------------------------------------------------------------------------------------
# Gcra: cost


def test_gcra_cost_consumes_that_many_requests() -> None:
    gcra = Gcra(rate=10.0, burst=5)
    heavy = gcra.decide(None, 0.0, cost=4)
    assert heavy.allowed
    assert heavy.remaining == 1
    assert not gcra.decide(heavy.new_tat, 0.0, cost=2).allowed
    assert gcra.decide(heavy.new_tat, 0.0, cost=1).allowed


def test_gcra_cost_zero_is_a_query_that_consumes_nothing() -> None:
    gcra = Gcra(rate=10.0, burst=5)
    _, tat = burst_from_idle(gcra, 0.0)
    query = gcra.decide(tat, 0.0, cost=0)
    assert query.allowed
    assert query.new_tat == tat
    assert query.remaining == 0


@pytest.mark.parametrize("cost", [-1, 6])
def test_gcra_rejects_a_cost_outside_zero_to_burst(cost: int) -> None:
    with pytest.raises(ValueError, match=r"cost must be from 0 to the burst \(5\)"):
        Gcra(rate=10.0, burst=5).decide(None, 0.0, cost)


def test_decision_is_a_frozen_slotted_record() -> None:
    decision = Gcra(rate=1.0, burst=1).decide(None, 0.0)
    assert decision == Decision(
        allowed=True, new_tat=1.0, retry_after=0.0, remaining=0, reset_after=1.0
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.allowed = False  # type: ignore[misc]
    assert not hasattr(decision, "__dict__")


# ---------------------------------------------------------------------------------------------
# RateLimiter


def test_rate_limiter_keeps_keys_independent() -> None:
    limiter = RateLimiter(rate=1.0, burst=2)
    assert [limiter.check(b"10.0.0.1", 0.0).allowed for _ in range(3)] == [True, True, False]
    assert [limiter.check(b"10.0.0.2", 0.0).allowed for _ in range(3)] == [True, True, False]
    assert limiter.check(b"10.0.0.3", 0.0).remaining == 1


def test_rate_limiter_applies_gcra_per_key_over_time() -> None:
    limiter = RateLimiter(rate=10.0, burst=3)
    clock = FakeClock()
    assert [limiter.check(b"k", clock.now).allowed for _ in range(4)] == [True] * 3 + [False]
    denied = limiter.check(b"k", clock.now)
    clock.advance(denied.retry_after)
    assert limiter.check(b"k", clock.now).allowed
    assert not limiter.check(b"k", clock.now).allowed


def test_rate_limiter_denied_request_does_not_consume() -> None:
    limiter = RateLimiter(rate=10.0, burst=1)
    limiter.check(b"k", 0.0)
    for ms in range(1, 100):
        assert not limiter.check(b"k", ms / 1000).allowed
    assert limiter.check(b"k", 0.1).allowed


def test_rate_limiter_expired_key_behaves_like_an_unknown_key() -> None:
    limiter = RateLimiter(rate=10.0, burst=5)
    for _ in range(5):
        limiter.check(b"old", 0.0)
    assert limiter.check(b"old", 0.5) == limiter.check(b"new", 0.5)


def test_rate_limiter_passes_cost_through() -> None:
    limiter = RateLimiter(rate=10.0, burst=5)
    assert limiter.check(b"k", 0.0, cost=5).remaining == 0
    assert not limiter.check(b"k", 0.0).allowed


@pytest.mark.parametrize("max_keys", [0, -1, True])
def test_rate_limiter_rejects_max_keys_below_one(max_keys: int) -> None:
    with pytest.raises(ValueError, match="max_keys must be"):
        RateLimiter(rate=1.0, burst=1, max_keys=max_keys)


def test_rate_limiter_sweeps_expired_keys_on_the_insertion_past_max_keys() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_keys=10)
    for i in range(10):
        limiter.check(b"old-%d" % i, 0.0)  # TAT 1.0
    assert (len(limiter), limiter.sweeps) == (10, 0)
    limiter.check(b"new", 5.0)  # TAT 6.0: the 11th key, and the only live one
    assert (len(limiter), limiter.sweeps, limiter.evicted) == (1, 1, 0)
    assert not limiter.check(b"new", 5.5).allowed


def test_rate_limiter_does_not_sweep_again_until_half_of_max_keys_more_are_added() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_keys=10)
    for i in range(11):
        limiter.check(b"live-%d" % i, 0.0)  # all live at 0.0: the sweep evicts one
    assert (len(limiter), limiter.sweeps, limiter.evicted) == (10, 1, 1)
    for i in range(5):
        limiter.check(b"more-%d" % i, 0.0)
    assert (len(limiter), limiter.sweeps) == (15, 1)
    limiter.check(b"one-more", 0.0)
    assert (len(limiter), limiter.sweeps, limiter.evicted) == (10, 2, 7)


def test_rate_limiter_full_of_live_keys_forgets_those_nearest_to_expiry() -> None:
    limiter = RateLimiter(rate=1.0, burst=10, max_keys=4)
    for _ in range(10):
        limiter.check(b"heavy", 0.0)  # TAT 10.0: a full burst's backlog
    clock = FakeClock(0.0)
    for i in range(100):  # a flood of one-request keys, each with TAT now + 1
        limiter.check(b"flood-%d" % i, clock.advance(0.001))
        assert len(limiter) <= 4 + 4 // 2
    assert limiter.evicted > 0
    # The heavy client's backlog survived the flood; the oldest flood keys were forgotten.
    assert not limiter.check(b"heavy", clock.now).allowed
    assert limiter.check(b"flood-0", clock.now).remaining == 9


def test_rate_limiter_holds_a_million_distinct_live_keys_to_its_bound_and_stays_fast() -> None:
    # 1M requests a second, each from a new key, each key live for 100 ms: the table is
    # always full of live keys, so every sweep must evict.
    max_keys = 1000
    limiter = RateLimiter(rate=10.0, burst=5, max_keys=max_keys)
    bound = max_keys + max_keys // 2
    largest = 0
    started = time.perf_counter()
    for i in range(1_000_000):
        assert limiter.check(b"%d" % i, i * 1e-6).allowed
        largest = max(largest, len(limiter))
    elapsed = time.perf_counter() - started
    assert largest == bound
    # Amortised: one sweep per max_keys/2 new keys, not a scan per request.
    assert limiter.sweeps <= 1_000_000 // (max_keys // 2) + 1
    assert limiter.evicted >= 1_000_000 - bound
    assert elapsed < 30.0  # about 2 s; a scan per request would take hours


def test_rate_limiter_with_keys_expiring_between_sweeps_evicts_nothing() -> None:
    max_keys = 1000
    limiter = RateLimiter(rate=1000.0, burst=1, max_keys=max_keys)  # each key live for 1 ms
    for i in range(200_000):
        limiter.check(b"%d" % i, i * 1e-4)  # ten new keys per millisecond
        assert len(limiter) <= max_keys
    assert limiter.sweeps > 0
    assert limiter.evicted == 0


# ---------------------------------------------------------------------------------------------
# parse_rate


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("100/s", 100.0),
        ("10/m", 10 / 60),
        ("5000/h", 5000 / 3600),
        ("2.5/s", 2.5),
        ("100", 100.0),
        ("0.5", 0.5),
        (".5/s", 0.5),
        ("600/M", 10.0),
        (" 100 / s ", 100.0),
    ],
)
def test_parse_rate_gives_requests_per_second(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


def test_parse_rate_names_the_text_and_the_form() -> None:
    message = '"ten/s" is not a rate: write a number per s, m or h, e.g. 100/s'
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_rate("ten/s")


@pytest.mark.parametrize(
    "bad",
    ["", "/s", "10/", "10/d", "10/sec", "10 per s", "-5/s", "+5/s", "1e3/s", "10//s", "inf", "nan"],
)
def test_parse_rate_rejects_what_is_not_a_rate(bad: str) -> None:
    with pytest.raises(ValueError, match=f'^"{re.escape(bad)}" is not a rate: write a number'):
        parse_rate(bad)


@pytest.mark.parametrize("zero", ["0", "0/s", "0.0/h"])
def test_parse_rate_rejects_zero(zero: str) -> None:
    with pytest.raises(ValueError, match="must be more than 0"):
        parse_rate(zero)


def test_parse_rate_rejects_a_number_too_large_to_be_finite() -> None:
    with pytest.raises(ValueError, match="too large"):
        parse_rate("9" * 400 + "/s")


# ---------------------------------------------------------------------------------------------
# ratelimit_headers


def allowed(remaining: int = 3, reset_after: float = 0.2) -> Decision:
    return Decision(True, 1.0, 0.0, remaining, reset_after)


def denied(retry_after: float, reset_after: float = 5.0) -> Decision:
    return Decision(False, 1.0, retry_after, 0, reset_after)


def test_headers_for_an_allowed_request_have_no_retry_after() -> None:
    assert ratelimit_headers(allowed(remaining=3, reset_after=0.2), 5, 60.0) == [
        (b"RateLimit-Limit", b"5"),
        (b"RateLimit-Remaining", b"3"),
        (b"RateLimit-Reset", b"1"),
        (b"RateLimit-Policy", b"5;w=60"),
    ]


def test_headers_for_a_denied_request_add_retry_after() -> None:
    headers = dict(ratelimit_headers(denied(retry_after=2.5, reset_after=12.5), 100, 60.0))
    assert headers[b"Retry-After"] == b"3"
    assert headers[b"RateLimit-Remaining"] == b"0"
    assert headers[b"RateLimit-Reset"] == b"13"


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [
        (0.001, b"1"),  # never "retry at once"
        (1.0, b"1"),
        (1.2, b"2"),
        (2.9999999999999996, b"3"),
        (7.000000000000001, b"7"),  # float noise is not another second
        (59.5, b"60"),
    ],
)
def test_retry_after_rounds_up_to_whole_seconds_and_is_at_least_one(
    retry_after: float, header: bytes
) -> None:
    assert dict(ratelimit_headers(denied(retry_after), 10, 1.0))[b"Retry-After"] == header


def test_reset_is_zero_when_the_bucket_is_full() -> None:
    assert dict(ratelimit_headers(allowed(reset_after=0.0), 5, 1.0))[b"RateLimit-Reset"] == b"0"


def test_remaining_is_capped_at_the_advertised_limit() -> None:
    headers = dict(ratelimit_headers(allowed(remaining=50), 10, 1.0))
    assert headers[b"RateLimit-Remaining"] == b"10"


def test_policy_window_is_whole_seconds_rounded_up_and_at_least_one() -> None:
    assert dict(ratelimit_headers(allowed(), 10, 0.1))[b"RateLimit-Policy"] == b"10;w=1"
    assert dict(ratelimit_headers(allowed(), 100, 60.0))[b"RateLimit-Policy"] == b"100;w=60"


@pytest.mark.parametrize("now", CLOCKS)
@pytest.mark.parametrize(("rate", "burst"), [(10.0, 5), (1 / 60, 1), (100 / 7, 3), (0.3, 2)])
def test_client_that_waits_exactly_the_retry_after_header_is_allowed(
    rate: float, burst: int, now: float
) -> None:
    limiter = RateLimiter(rate, burst)
    for _ in range(burst):
        limiter.check(b"client", now)
    refused = limiter.check(b"client", now)
    assert not refused.allowed
    window = limiter.gcra.window
    retry = int(dict(ratelimit_headers(refused, burst, window))[b"Retry-After"])
    assert retry == max(1, math.ceil(1 / rate - 1e-9))
    assert limiter.check(b"client", now + retry).allowed
