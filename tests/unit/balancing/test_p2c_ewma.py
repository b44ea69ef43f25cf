from __future__ import annotations

import math
import random

import pytest

from portico.balancing.p2c_ewma import P2CEwma, PeakEwma
from tests.unit.balancing.candidates import Node, nodes, tally

# PeakEwma


def test_peak_ewma_starts_with_no_sample() -> None:
    assert PeakEwma().value(now=123.0) == 0.0


def test_peak_ewma_takes_a_higher_sample_at_once() -> None:
    ewma = PeakEwma(tau=10.0)
    ewma.observe(0.1, now=0.0)
    ewma.observe(2.0, now=0.001)
    assert ewma.value(now=0.001) == 2.0


def test_peak_ewma_blends_a_lower_sample_by_time_since_the_last_one() -> None:
    ewma = PeakEwma(tau=10.0)
    ewma.observe(1.0, now=0.0)
    ewma.observe(0.1, now=10.0)  # one time constant later: weight 1 - 1/e for the new sample
    assert ewma.value(now=10.0) == pytest.approx(math.exp(-1) + 0.1 * (1 - math.exp(-1)))


def test_peak_ewma_ignores_a_lower_sample_at_the_same_instant() -> None:
    ewma = PeakEwma()
    ewma.observe(1.0, now=5.0)
    ewma.observe(0.01, now=5.0)
    assert ewma.value(now=5.0) == 1.0


def test_peak_ewma_decays_to_lower_samples_with_time_constant_tau() -> None:
    ewma = PeakEwma(tau=10.0)
    ewma.observe(1.0, now=0.0)
    for second in range(1, 11):
        ewma.observe(0.1, now=float(second))
    # After one tau the excess over the new level has shrunk by 1/e.
    assert ewma.value(now=10.0) - 0.1 == pytest.approx(0.9 * math.exp(-1))
    for second in range(11, 101):
        ewma.observe(0.1, now=float(second))
    assert ewma.value(now=100.0) == pytest.approx(0.1, abs=1e-4)


def test_peak_ewma_decays_towards_zero_while_idle_and_reading_does_not_change_it() -> None:
    ewma = PeakEwma(tau=10.0)
    ewma.observe(1.0, now=0.0)
    for now in (1.0, 2.5, 7.0):
        ewma.value(now)
    assert ewma.value(now=10.0) == pytest.approx(math.exp(-1))
    assert ewma.value(now=200.0) < 1e-8


def test_peak_ewma_does_not_grow_when_the_clock_reads_earlier() -> None:
    ewma = PeakEwma()
    ewma.observe(0.5, now=10.0)
    assert ewma.value(now=9.0) == 0.5


@pytest.mark.parametrize("tau", [0.0, -1.0, math.nan])
def test_peak_ewma_rejects_a_non_positive_tau(tau: float) -> None:
    with pytest.raises(ValueError, match="tau"):
        PeakEwma(tau=tau)


# P2CEwma


def test_p2c_with_one_candidate_picks_it() -> None:
    only = Node("a", in_flight=100, latency=9.0)
    assert P2CEwma(random.Random(0)).pick((only,), b"") == only


def test_p2c_never_pairs_a_candidate_with_itself() -> None:
    # With two candidates every pair is {a, b}, so the slow one can never win.
    policy = P2CEwma(random.Random(5))
    candidates = (Node("fast", latency=0.01), Node("slow", latency=1.0))
    assert tally([policy.pick(candidates, b"") for _ in range(10_000)]) == {"fast": 10_000}


@pytest.mark.parametrize("draw", [0.0, 0.5, 1.0 - 2**-53])
def test_p2c_draws_two_distinct_candidates_even_at_the_edges_of_the_rng(draw: float) -> None:
    class Fixed(random.Random):
        def random(self) -> float:
            return draw

    # Whatever the draws, the pair is two different candidates: the dearest never wins.
    candidates = (Node("a", latency=0.1), Node("b", latency=0.2), Node("c", latency=0.3))
    for order in (candidates, candidates[::-1]):
        assert P2CEwma(Fixed()).pick(order, b"") != Node("c", latency=0.3)


def test_p2c_avoids_the_slow_backend() -> None:
    policy = P2CEwma(random.Random(11))
    candidates = (*(Node(f"n{i}", latency=0.02) for i in range(4)), Node("slow", latency=0.5))
    counts = tally([policy.pick(candidates, b"") for _ in range(10_000)])
    assert "slow" not in counts
    assert all(2_000 < count < 3_000 for count in counts.values()), counts


def test_p2c_avoids_the_loaded_backend() -> None:
    policy = P2CEwma(random.Random(12))
    candidates = (*(Node(f"n{i}", latency=0.05, in_flight=1) for i in range(4)),)
    loaded = Node("loaded", latency=0.05, in_flight=40)
    picked = [policy.pick((*candidates, loaded), b"") for _ in range(10_000)]
    assert loaded not in picked


def test_p2c_shares_follow_cost_rank() -> None:
    # Rank k of n (cheapest first) wins when drawn with a dearer one: 2(n-1-k) / (n(n-1)).
    policy = P2CEwma(random.Random(3))
    candidates = tuple(Node(name, latency=0.01 * (k + 1)) for k, name in enumerate("abcde"))
    n = 50_000
    counts = tally([policy.pick(candidates, b"") for _ in range(n)])
    for k, name in enumerate("abcde"):
        assert abs(counts[name] / n - 2 * (4 - k) / 20) < 0.01, counts


def test_p2c_divides_cost_by_weight() -> None:
    # Same latency and load: the backend with twice the weight is half the cost.
    policy = P2CEwma(random.Random(4))
    candidates = (Node("small", latency=0.1, in_flight=3), Node("big", 2, 3, 0.1))
    assert {policy.pick(candidates, b"") for _ in range(100)} == {candidates[1]}


def test_p2c_breaks_a_cost_tie_towards_the_less_loaded() -> None:
    # a: 0.1 * 2 / 1 = 0.2 and b: 0.1 * 4 / 2 = 0.2; a has 1 per weight, b has 1.5.
    policy = P2CEwma(random.Random(8))
    candidates = (Node("a", 1, 1, 0.1), Node("b", 2, 3, 0.1))
    for order in (candidates, candidates[::-1]):
        assert {policy.pick(order, b"") for _ in range(100)} == {candidates[0]}


def test_p2c_spreads_over_backends_with_no_sample_yet() -> None:
    policy = P2CEwma(random.Random(21))
    counts = tally([policy.pick(nodes("a", "b", "c", "d"), b"") for _ in range(8_000)])
    assert all(1_700 < count < 2_300 for count in counts.values()), counts


def test_p2c_penalises_a_backend_with_requests_out_but_no_sample_yet() -> None:
    # Cost 0 would make a new backend that hangs win every pair until it first answers.
    policy = P2CEwma(random.Random(2))
    hanging = Node("new", in_flight=2, latency=0.0)
    candidates = (Node("a", in_flight=5, latency=0.3), hanging)
    assert {policy.pick(candidates, b"") for _ in range(100)} == {candidates[0]}
    assert policy.pick((Node("a", in_flight=5, latency=0.3), Node("new")), b"") == Node("new")
