from __future__ import annotations

from portico.balancing.least_conn import LeastConn
from tests.unit.balancing.candidates import Node, names, nodes, tally


def test_least_conn_prefers_the_idle_backend() -> None:
    candidates = (Node("a", in_flight=3), Node("b"), Node("c", in_flight=2))
    assert LeastConn().pick(candidates, b"") == Node("b")


def test_least_conn_prefers_the_least_loaded_when_none_is_idle() -> None:
    candidates = (Node("a", in_flight=3), Node("b", in_flight=5), Node("c", in_flight=2))
    assert LeastConn().pick(candidates, b"") == Node("c", in_flight=2)


def test_least_conn_divides_load_by_weight() -> None:
    # a: 2/1 = 2, b: 3/2 = 1.5: b is less loaded for its size although it has more requests.
    candidates = (Node("a", in_flight=2), Node("b", weight=2, in_flight=3))
    assert LeastConn().pick(candidates, b"") == candidates[1]


def test_least_conn_spreads_idle_traffic_evenly_instead_of_hitting_the_first() -> None:
    policy = LeastConn()
    abc = nodes("a", "b", "c")
    picked = [policy.pick(abc, b"") for _ in range(300)]
    assert names(picked[:6]) == "abcabc"
    assert tally(picked) == {"a": 100, "b": 100, "c": 100}


def test_least_conn_rotates_among_tied_backends_only() -> None:
    policy = LeastConn()
    candidates = (Node("a", in_flight=1), Node("b"), Node("c", in_flight=1), Node("d"))
    assert names([policy.pick(candidates, b"") for _ in range(6)]) == "bdbdbd"


def test_least_conn_rotates_among_tied_busy_backends() -> None:
    policy = LeastConn()
    candidates = (Node("a", in_flight=2), Node("b", in_flight=4), Node("c", in_flight=2))
    assert names([policy.pick(candidates, b"") for _ in range(4)]) == "acac"


def test_least_conn_follows_a_shrinking_set() -> None:
    policy = LeastConn()
    abcd = nodes("a", "b", "c", "d")
    assert names([policy.pick(abcd, b"") for _ in range(4)]) == "abcd"
    assert names([policy.pick(abcd[:2], b"") for _ in range(3)]) == "aba"
