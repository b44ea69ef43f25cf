from __future__ import annotations

from portico.balancing.base import CandidateSetCache, Signature
from tests.unit.balancing.candidates import Node, nodes


def counting_cache() -> tuple[CandidateSetCache[Signature], list[Signature]]:
    builds: list[Signature] = []

    def build(signature: Signature) -> Signature:
        builds.append(signature)
        return signature

    return CandidateSetCache(build), builds


def test_cache_builds_once_for_the_same_tuple() -> None:
    cache, builds = counting_cache()
    abc = nodes("a", "b", "c")
    for _ in range(100):
        assert cache.get(abc) == (("a", 1), ("b", 1), ("c", 1))
    assert len(builds) == 1


def test_cache_keeps_its_value_for_fresh_objects_with_the_same_names_and_weights() -> None:
    cache, builds = counting_cache()
    cache.get(nodes("a", "b"))
    cache.get((Node("a", in_flight=4, latency=0.2), Node("b", in_flight=1)))
    assert len(builds) == 1


def test_cache_rebuilds_when_membership_weight_or_order_changes() -> None:
    cache, builds = counting_cache()
    cache.get(nodes("a", "b"))
    cache.get(nodes("a", "b", "c"))
    cache.get((Node("a"), Node("b", weight=2), Node("c")))
    cache.get((Node("c"), Node("a"), Node("b", weight=2)))
    assert len(builds) == 4


def test_cache_checks_a_list_by_contents_every_time() -> None:
    cache, builds = counting_cache()
    candidates = [Node("a")]
    cache.get(candidates)
    cache.get(candidates)
    candidates.append(Node("b"))
    assert cache.get(candidates) == (("a", 1), ("b", 1))
    assert len(builds) == 2
