from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from portico.balancing import POLICIES, Policy, make_policy
from tests.unit.balancing.candidates import Node, nodes

NAMES = sorted(POLICIES)


def test_registry_has_the_config_names() -> None:
    assert set(POLICIES) == {
        "round_robin",
        "weighted_round_robin",
        "least_conn",
        "random",
        "p2c_ewma",
        "ip_hash",
        "consistent_hash",
    }


def test_make_policy_rejects_an_unknown_name_listing_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'leastconn'.*least_conn"):
        make_policy("leastconn")


def test_make_policy_gives_each_pool_its_own_instance() -> None:
    assert make_policy("round_robin") is not make_policy("round_robin")


def test_only_hashing_policies_need_a_key() -> None:
    needing = {name for name in NAMES if make_policy(name).needs_key}
    assert needing == {"ip_hash", "consistent_hash"}


@pytest.mark.parametrize("name", NAMES)
def test_every_policy_returns_none_without_candidates(name: str) -> None:
    policy = make_policy(name, random.Random(0))
    assert policy.pick((), b"k") is None
    assert policy.pick([], b"k") is None


@pytest.mark.parametrize("name", NAMES)
def test_every_policy_picks_from_the_current_set_as_it_changes(name: str) -> None:
    policy: Policy = make_policy(name, random.Random(0))
    a, b, c, d, e = nodes("a", "b", "c", "d", "e")
    sets: list[Sequence[Node]] = [(a, b, c), (a, b), (), (d,), (a, b, c, d, e), [e, a], (c,)]
    for candidates in sets * 3:
        for key in (b"client-1", b"client-2", b"client-3"):
            picked = policy.pick(candidates, key)
            assert picked in candidates if candidates else picked is None


@pytest.mark.parametrize("name", NAMES)
def test_every_policy_returns_the_objects_it_was_given_not_cached_ones(name: str) -> None:
    # A reload hands over fresh state objects with the same names and weights.
    policy = make_policy(name, random.Random(0))
    old = (Node("a", in_flight=1), Node("b", in_flight=1))
    new = (Node("a", in_flight=2), Node("b", in_flight=2))
    policy.pick(old, b"k")
    for _ in range(5):
        picked = policy.pick(new, b"k")
        assert any(picked is node for node in new)


@pytest.mark.parametrize("name", NAMES)
def test_every_policy_sees_a_list_changed_in_place(name: str) -> None:
    policy = make_policy(name, random.Random(0))
    candidates = [Node("a")]
    assert policy.pick(candidates, b"k") == Node("a")
    candidates[0] = Node("z")
    assert policy.pick(candidates, b"k") == Node("z")
