from __future__ import annotations

import random

from portico.balancing.round_robin import Random, RoundRobin, SmoothWeightedRoundRobin
from tests.unit.balancing.candidates import Node, names, nodes, tally

# RoundRobin


def test_round_robin_takes_each_candidate_in_turn() -> None:
    policy = RoundRobin()
    abc = nodes("a", "b", "c")
    assert names([policy.pick(abc, b"") for _ in range(7)]) == "abcabca"


def test_round_robin_spreads_evenly_and_ignores_weights() -> None:
    policy = RoundRobin()
    candidates = (Node("a", weight=10), Node("b"), Node("c", weight=3))
    counts = tally([policy.pick(candidates, b"") for _ in range(3000)])
    assert counts == {"a": 1000, "b": 1000, "c": 1000}


def test_round_robin_restarts_when_the_set_shrinks_below_its_cursor() -> None:
    policy = RoundRobin()
    abcd = nodes("a", "b", "c", "d")
    assert names([policy.pick(abcd, b"") for _ in range(3)]) == "abc"
    assert names([policy.pick(abcd[:2], b"") for _ in range(3)]) == "aba"


# SmoothWeightedRoundRobin


def test_smooth_wrr_5_1_1_gives_aabacaa() -> None:
    policy = SmoothWeightedRoundRobin()
    candidates = (Node("a", weight=5), Node("b"), Node("c"))
    assert names([policy.pick(candidates, b"") for _ in range(21)]) == "aabacaa" * 3


def test_smooth_wrr_interleaves_instead_of_bursting() -> None:
    policy = SmoothWeightedRoundRobin()
    candidates = (Node("a", weight=2), Node("b", weight=2), Node("c"))
    assert names([policy.pick(candidates, b"") for _ in range(10)]) == "abcab" * 2


def test_smooth_wrr_gives_exact_proportions_over_many_picks() -> None:
    policy = SmoothWeightedRoundRobin()
    candidates = (Node("a", weight=3), Node("b", weight=2), Node("c"), Node("d", weight=4))
    counts = tally([policy.pick(candidates, b"") for _ in range(10_000)])
    assert counts == {"a": 3000, "b": 2000, "c": 1000, "d": 4000}


def test_smooth_wrr_keeps_proportions_after_a_backend_leaves() -> None:
    policy = SmoothWeightedRoundRobin()
    abc = (Node("a", weight=5), Node("b"), Node("c"))
    for _ in range(3):  # leave the cycle mid-way, with non-zero current weights
        policy.pick(abc, b"")
    counts = tally([policy.pick(abc[:2], b"") for _ in range(600)])
    assert abs(counts["a"] - 500) <= 1
    assert abs(counts["b"] - 100) <= 1


def test_smooth_wrr_follows_a_weight_change_in_a_new_tuple() -> None:
    policy = SmoothWeightedRoundRobin()
    policy.pick((Node("a", weight=5), Node("b")), b"")
    reweighted = (Node("a"), Node("b", weight=3))
    counts = tally([policy.pick(reweighted, b"") for _ in range(400)])
    assert abs(counts["a"] - 100) <= 1
    assert abs(counts["b"] - 300) <= 1


# Random


def test_random_follows_weights_within_tolerance() -> None:
    policy = Random(random.Random(1234))
    candidates = (Node("a"), Node("b", weight=2), Node("c", weight=7))
    n = 100_000
    counts = tally([policy.pick(candidates, b"") for _ in range(n)])
    for name, share in {"a": 0.1, "b": 0.2, "c": 0.7}.items():
        assert abs(counts[name] / n - share) < 0.01, (name, counts)


def test_random_with_equal_weights_is_uniform() -> None:
    policy = Random(random.Random(99))
    candidates = tuple(Node(name, weight=3) for name in "abcd")
    n = 40_000
    counts = tally([policy.pick(candidates, b"") for _ in range(n)])
    assert set(counts) == set("abcd")
    for count in counts.values():
        assert abs(count / n - 0.25) < 0.01, counts


def test_random_is_reproducible_from_its_seed() -> None:
    candidates = (Node("a"), Node("b", weight=2), Node("c", weight=3))
    first, second = Random(random.Random(7)), Random(random.Random(7))
    assert names([first.pick(candidates, b"") for _ in range(50)]) == names(
        [second.pick(candidates, b"") for _ in range(50)]
    )


def test_random_never_picks_past_the_last_candidate_at_the_top_of_the_range() -> None:
    class Top(random.Random):
        def random(self) -> float:
            return 1.0 - 2**-53  # the largest value random() can return

    candidates = (Node("a"), Node("b", weight=1_000_003))
    assert Random(Top()).pick(candidates, b"") == candidates[1]
    assert Random(Top()).pick(nodes("a", "b", "c"), b"") == Node("c")
