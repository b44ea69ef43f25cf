"""Access and ban filters on plain request objects: no sockets, a fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from portico.config.access import AccessConfig, BanRule
from portico.filters.access import AccessFilter, BanFilter, ClientAddress, WindowCounter
from portico.security.access import AccessList, AccessPolicy, parse_network
from portico.security.bans import Ban, BanTable


@dataclass
class Client:
    client_ip: str


@dataclass
class Request:
    ip: str = "192.0.2.1"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    target: bytes = b"/"

    @property
    def client(self) -> Client:
        return Client(self.ip)


def req(**kwargs: Any) -> Any:
    return cast(Any, Request(**kwargs))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_route_filter_answers_the_configured_status() -> None:
    config = AccessConfig.model_validate({"allow": ["10.0.0.0/8"], "status": 404, "body": "no\n"})
    assert config.default_action() == "deny"  # an allow list alone: the rest is denied
    access = AccessList([parse_network(n) for n in config.allow], default=config.default_action())
    guard = AccessFilter(AccessPolicy("r", access, None), ClientAddress(None), 404, "no\n")
    assert guard.on_request(req(ip="10.1.1.1")) is None
    answer = guard.on_request(req(ip="192.0.2.1"))
    assert answer is not None
    assert (answer.status, answer.body) == (404, b"no\n")
    assert guard.denied == 1


def test_client_address_comes_from_trusted_proxies_only() -> None:
    address = ClientAddress(AccessList([parse_network("10.0.0.0/8")]), "forwarded")
    forwarded = [(b"Forwarded", b'for="[2001:db8::7]", for=10.0.0.9')]
    assert address(req(ip="10.0.0.1", headers=forwarded)) == "2001:db8::7"
    assert address(req(ip="192.0.2.1", headers=forwarded)) == "192.0.2.1"
    assert address(req(ip="10.0.0.1")) == "10.0.0.1"  # no header: the proxy itself


def test_window_counter_restarts_each_window_and_stays_bounded() -> None:
    counter = WindowCounter(10.0, max_keys=2)
    assert [counter.hit(b"a", t) for t in (0.0, 1.0, 9.9)] == [1, 2, 3]
    assert counter.hit(b"a", 10.0) == 1
    counter.hit(b"b", 10.0)
    counter.hit(b"c", 10.0)  # "a" is the least recently hit: forgotten
    assert counter.hit(b"a", 10.0) == 1


def rule(**kwargs: Any) -> BanRule:
    return BanRule.model_validate({"count": 2, "window": "10s", "duration": "1m", **kwargs})


def test_status_rule_bans_after_count_and_announces_once() -> None:
    clock, table, announced = Clock(), BanTable(), []
    bans = BanFilter(
        "web",
        [rule(name="auth", status=[401, "5xx"], key="header:X-User")],
        table,
        ClientAddress(None),
        announced.append,
        clock,
    )
    user = [(b"X-User", b"eve")]
    for status in (401, 200, 503):  # the 200 does not count
        assert bans.on_request(req(headers=user)) is None
        bans.on_done(req(headers=user), status)
    assert announced == []
    bans.on_done(req(headers=user), 401)  # the third counted answer: over the count of 2
    assert announced == [Ban("web", "eve", clock.now + 60.0, "auth")]
    refused = bans.on_request(req(headers=user))
    assert refused is not None
    assert refused.status == 403
    assert bans.on_request(req(headers=[(b"X-User", b"bob")])) is None
    bans.on_done(req(headers=user), 401)
    assert len(announced) == 1  # banned once
    clock.now += 61.0
    assert bans.on_request(req(headers=user)) is None  # lapsed


def test_a_ban_learnt_from_another_worker_is_not_banned_again_by_its_own_answers() -> None:
    """Worker B learns worker A's ban by relay, then answers the banned key's requests with the
    ban's 403, which the rule counts: those answers must not make B ban (and count) it again."""
    clock, table, announced = Clock(), BanTable(), []
    bans = BanFilter(
        "web",
        [rule(name="auth", status=[401, 403], key="header:X-User")],
        table,
        ClientAddress(None),
        announced.append,
        clock,
    )
    user = [(b"X-User", b"eve")]
    table.add(Ban("web", "eve", clock.now + 60.0, "auth"))  # relayed from worker A
    clock.now += 1.0
    for _ in range(5):
        refused = bans.on_request(req(headers=user))
        assert refused is not None
        assert refused.status == 403
        bans.on_done(req(headers=user), 403)
    assert announced == []
    assert bans.banned == {"auth": 0}


def test_request_rule_counts_requests_per_address() -> None:
    clock, table, announced = Clock(), BanTable(), []
    bans = BanFilter("web", [rule(answer=429)], table, ClientAddress(None), announced.append, clock)
    assert [bans.on_request(req()) is None for _ in range(3)] == [True, True, True]
    refused = bans.on_request(req())
    assert refused is not None
    assert refused.status == 429
    assert bans.on_request(req(ip="192.0.2.2")) is None
