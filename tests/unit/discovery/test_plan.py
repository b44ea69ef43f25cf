"""What DNS answers mean for a pool, without DNS."""

from __future__ import annotations

from portico.discovery.plan import (
    Changes,
    Found,
    SrvRecord,
    address_servers,
    changes,
    next_lookup,
    srv_servers,
)


def test_srv_uses_the_lowest_priority_that_resolves_with_its_weights_and_ports() -> None:
    records = [
        SrvRecord(10, 5, 8001, "a."),
        SrvRecord(10, 0, 8002, "b."),
        SrvRecord(20, 1, 8003, "c."),
        SrvRecord(5, 1, 8004, "."),  # "no service here" (RFC 2782)
    ]
    addresses = {"a.": ["10.0.0.1"], "b.": ["10.0.0.2", "10.0.0.3"], "c.": ["10.0.0.4"]}
    assert srv_servers(records, addresses) == [
        Found("10.0.0.1", 8001, 5),
        Found("10.0.0.2", 8002, 1),  # weight 0: the smallest share
        Found("10.0.0.3", 8002, 1),
    ]
    # priority 10 resolves to nothing: the backups
    assert srv_servers(records, {"c.": ["10.0.0.4"]}) == [Found("10.0.0.4", 8003, 1)]
    assert srv_servers(records, {}) == []
    assert srv_servers([SrvRecord(1, 9999, 80, "a.")], addresses)[0].weight == 256


def test_addresses_are_one_server_each_named_by_address() -> None:
    found = address_servers(["10.0.0.2", "2001:db8::1", "10.0.0.2"], 8080, 3)
    assert [s.name for s in found] == ["10.0.0.2:8080", "[2001:db8::1]:8080"]
    assert {s.weight for s in found} == {3}


def test_next_lookup_follows_the_ttl_within_bounds_and_retries_after_a_failure() -> None:
    assert next_lookup(30.0, 1.0, 300.0) == 30.0
    assert next_lookup(0.0, 1.0, 300.0) == 1.0
    assert next_lookup(86400.0, 1.0, 300.0) == 300.0
    assert next_lookup(None, 0.0, 300.0) == 1.0  # a failure never loops hot
    assert next_lookup(None, 5.0, 300.0) == 5.0


def test_changes_add_remove_and_reweight() -> None:
    a, b, c = Found("10.0.0.1", 80), Found("10.0.0.2", 80), Found("10.0.0.3", 80)
    assert not changes([a, b], [b, a])
    change = changes([a, b], [Found("10.0.0.2", 80, 4), c])
    assert change == Changes(
        added=(c,), removed=("10.0.0.1:80",), reweighted=(Found("10.0.0.2", 80, 4),)
    )
