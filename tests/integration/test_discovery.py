"""Servers from DNS, end to end: the real `portico run` resolving `dns:` and `srv:` entries on
a real DNS server (dnsmasq, on loopback, TTL 1 s) whose records the tests change, with
requests flowing all along: traffic follows the records within the TTL and no request fails;
a failed lookup keeps the last good set."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from dns_server import Dnsmasq, dnsmasq_binary
from fakes import Load, Portico, eventually, request


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    binary = dnsmasq_binary()
    if binary is None:
        pytest.skip("dnsmasq is not installed: scripts/test installs it when run as root")
    server = Dnsmasq(tmp_path / "dns", binary)
    yield server
    server.stop()


def admin_port(proxy: Portico) -> int:
    found = re.search(r"admin http://[\d.]+:(\d+)", proxy.ready_line)
    assert found, proxy.ready_line
    return int(found.group(1))


def pool_servers(proxy: Portico) -> dict[str, dict[str, object]]:
    answer = request(admin_port(proxy), "GET", "/api/pools/app", headers={"Host": "127.0.0.1"})
    assert answer.status == 200, answer.body
    return {s["name"]: s for s in json.loads(answer.body)["servers"]}


def config(nameserver: str, servers: str, policy: str = "round_robin") -> str:
    return (
        "workers: 1\n"
        "shutdown_grace: 5s\n"
        "admin: {bind: 127.0.0.1:0}\n"
        f"resolver: {{nameservers: ['{nameserver}'], min_ttl: 0s, max_ttl: 10s, timeout: 500ms,"
        " drain_timeout: 5s}\n"
        "listeners:\n"
        "  - {name: web, bind: 127.0.0.1:0, default_pool: app}\n"
        "pools:\n"
        "  app:\n"
        f"    policy: {policy}\n"
        "    slow_start: 2s\n"
        f"    servers:\n{servers}"
    )


def metric(proxy: Portico, name: str) -> float:
    body = request(admin_port(proxy), "GET", "/metrics", headers={"Host": "127.0.0.1"}).body
    found = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", body.decode(), re.M)
    return float(found.group(1)) if found else 0.0


def test_traffic_follows_a_records_within_the_ttl_and_no_request_fails(
    portico, backends, dnsmasq: Dnsmasq
) -> None:
    old = backends("old", host="127.0.0.2")
    new = backends("new", host="127.0.0.3", port=old.port)
    dnsmasq.start(hosts=["127.0.0.2 app.internal"])
    proxy = portico(config(dnsmasq.nameserver, f"      - dns: app.internal:{old.port}\n"))
    assert set(pool_servers(proxy)) == {old.address}  # resolved before the first worker started
    load = Load(proxy.port, limit=60_000)  # bounded; a fast machine runs ~1000/s
    try:
        eventually(lambda: load.ok >= 20, "requests flowing")
        dnsmasq.hosts(["127.0.0.3 app.internal"])
        eventually(lambda: new.seen, "traffic on the new address", timeout=5.0)
        moved = load.ok
        # the old server drained and was removed; nothing goes there any more
        eventually(lambda: set(pool_servers(proxy)) == {new.address}, "the old one removed")
        before = len(old.seen)
        eventually(lambda: load.ok >= moved + 30, "more requests")
        assert len(old.seen) == before

        # DNS down: the last good set stays, and the failures are counted
        dnsmasq.stop()
        eventually(lambda: metric(proxy, "portico_discovery_failures_total") >= 2, "failed lookups")
        served = load.ok
        eventually(lambda: load.ok >= served + 30, "requests still served")
        assert set(pool_servers(proxy)) == {new.address}
    finally:
        load.stop()
    assert load.failures == []
    assert proxy.wait_for_stderr("keeping the last good set (1 server(s))") is not None


def test_srv_records_give_ports_weights_and_priorities(portico, backends, dnsmasq: Dnsmasq) -> None:
    heavy, light, backup = backends("heavy"), backends("light"), backends("backup")
    dnsmasq.start(
        srv=[
            f"_http._tcp.app.internal,s1.app.internal,{heavy.port},10,5",
            f"_http._tcp.app.internal,s2.app.internal,{light.port},10,1",
            f"_http._tcp.app.internal,s3.app.internal,{backup.port},20,1",
        ],
        hosts=["127.0.0.1 s1.app.internal s2.app.internal s3.app.internal"],
    )
    servers = "      - srv: _http._tcp.app.internal\n"
    proxy = portico(config(dnsmasq.nameserver, servers, policy="weighted_round_robin"))
    found = pool_servers(proxy)
    assert {name: s["weight"] for name, s in found.items()} == {
        heavy.address: 5,
        light.address: 1,
    }  # priority 20 is a backup: not used while priority 10 resolves
    answered = [request(proxy.port).header("X-Backend") for _ in range(24)]
    assert answered.count("heavy") == 20
    assert answered.count("light") == 4

    # priority 10's targets stop resolving: the backup takes over, with no failed request
    load = Load(proxy.port, limit=60_000)  # bounded; a fast machine runs ~1000/s
    try:
        eventually(lambda: load.ok >= 20, "requests flowing")
        dnsmasq.hosts(["127.0.0.1 s3.app.internal"])
        eventually(lambda: set(pool_servers(proxy)) == {backup.address}, "only the backup left")
        served = load.ok
        eventually(lambda: load.ok >= served + 30, "more requests")
    finally:
        load.stop()
    assert load.failures == []
    assert load.answered_by[-20:] == ["backup"] * 20


def test_a_reload_keeps_discovered_servers_without_a_gap(
    portico, backends, dnsmasq: Dnsmasq
) -> None:
    app = backends("app", host="127.0.0.2")
    dnsmasq.start(hosts=["127.0.0.2 app.internal"])
    proxy = portico(config(dnsmasq.nameserver, f"      - dns: app.internal:{app.port}\n"))
    dnsmasq.stop()  # the reload's new workers cannot look it up: they get the last good set
    load = Load(proxy.port, limit=60_000)  # bounded; a fast machine runs ~1000/s
    try:
        eventually(lambda: load.ok >= 20, "requests flowing")
        proxy.proc.send_signal(1)  # SIGHUP
        proxy.wait_stdout("portico: reloaded")
        served = load.ok
        eventually(lambda: load.ok >= served + 30, "requests after the reload")
    finally:
        load.stop()
    assert load.failures == []
    assert set(pool_servers(proxy)) == {app.address}
