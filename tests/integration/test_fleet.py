"""A fleet that acts as one, end to end: instances of the real `portico run` sharing a real
redis-server. A change made through one instance's admin API with `fleet` reaches the others
within a second, an instance started later replays it, a reload keeps it, a reset undoes it
everywhere, and each change says who made it."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes import Portico, eventually, pool_yaml, request
from redis_server import RedisServer, redis_server_binary

TOKEN = "fleet-test-token"
ALICE = "alice-test-token"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("redis-server is not installed: scripts/test installs it when run as root")
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", binary)
    server.start()
    yield server
    server.stop()


def admin(proxy: Portico, method: str, path: str, body: object = None, **headers: str):  # type: ignore[no-untyped-def]
    found = re.search(r"admin http://[\d.]+:(\d+)", proxy.ready_line)
    assert found, proxy.ready_line
    data = json.dumps(body).encode() if body is not None else b""
    hdrs = {"Authorization": f"Bearer {TOKEN}", "Host": "127.0.0.1", **headers}
    if data:
        hdrs["Content-Type"] = "application/json"
    return request(int(found.group(1)), method, path, headers=hdrs, body=data)


def servers(proxy: Portico) -> dict[str, dict[str, object]]:
    answer = admin(proxy, "GET", "/api/pools/app")
    assert answer.status == 200, answer.body
    return {s["name"]: s for s in json.loads(answer.body)["servers"]}


def start(portico, tmp_path: Path, name: str, redis: RedisServer, backends_yaml: str) -> Portico:  # type: ignore[no-untyped-def]
    config = (
        "workers: 1\n"
        f"admin: {{bind: 127.0.0.1:0, token: {TOKEN}, users: [{{name: alice, token: {ALICE}}}]}}\n"
        f"state: {{redis: '{redis.url}', instance: {name}}}\n"
        "listeners:\n  - {name: web, bind: 127.0.0.1:0, default_pool: app}\n"
        "pools:\n  app:\n    servers:\n" + backends_yaml
    )
    return portico(config, filename=f"{name}.yaml")


def test_fleet_wide_changes_converge_replay_survive_reloads_and_reset(
    portico, backends, redis: RedisServer, tmp_path: Path
) -> None:
    a_backend, b_backend = backends("a"), backends("b")
    yaml = pool_yaml([a_backend, b_backend])
    one = start(portico, tmp_path, "one", redis, yaml)
    two = start(portico, tmp_path, "two", redis, yaml)
    target = "a"  # pool_yaml names servers after their backends

    # per instance: only the one asked
    assert admin(one, "PUT", f"/api/pools/app/servers/{target}/weight", {"weight": 3}).status == 200
    assert servers(one)[target]["weight"] == 3
    assert servers(two)[target]["weight"] == 1

    # fleet-wide: the other instance follows within a second, and says who asked
    asked = time.monotonic()
    answer = admin(
        one,
        "PUT",
        f"/api/pools/app/servers/{target}/state",
        {"state": "drain", "fleet": True},
        Authorization=f"Bearer {ALICE}",
        **{"X-Portico-User": "alice.smith@example.com"},
    )
    assert answer.status == 200, answer.body
    assert json.loads(answer.body)["state"] == "drain"  # applied here before the answer
    eventually(lambda: servers(two)[target]["state"] == "drain", "drained on two", timeout=1.0)
    converged = time.monotonic() - asked
    assert converged < 1.0
    assert {request(two.port).header("X-Backend") for _ in range(6)} == {"b"}

    # the query flag does the same; a server added fleet-wide reaches both
    added = backends("c")
    answer = admin(
        two, "POST", "/api/pools/app/servers?fleet=true", {"address": added.address, "name": "c"}
    )
    assert answer.status == 201, answer.body
    eventually(lambda: "c" in servers(one), "c added on one", timeout=1.0)

    # an instance started later replays the log
    three = start(portico, tmp_path, "three", redis, yaml)
    found = servers(three)
    assert found[target]["state"] == "drain"
    assert "c" in found
    assert found[target]["weight"] == 1  # the per-instance weight stayed on one

    # a reload does not undo the fleet's changes
    one.proc.send_signal(1)  # SIGHUP
    one.wait_stdout("portico: reloaded")
    assert servers(one)[target]["state"] == "drain"
    assert "c" in servers(one)

    # who is live, and who did what
    fleet = json.loads(admin(two, "GET", "/api/fleet").body)
    assert fleet["instance"] == "two"
    assert {i["instance"] for i in fleet["instances"]} == {"one", "two", "three"}
    latest, earlier = fleet["changes"][0], fleet["changes"][1]
    assert latest["kind"] == "add_server"
    assert latest["by"]["instance"] == "two"
    assert latest["by"]["user"] == "admin"  # admin.token's name
    assert earlier == {
        **earlier,
        "kind": "state",
        "server": target,
        "state": "drain",
        "by": {
            **earlier["by"],
            "instance": "one",
            "user": "alice",
            "on_behalf_of": "alice.smith@example.com",
        },
    }

    # a stopped instance leaves the list
    three.stop()
    eventually(
        lambda: (
            {i["instance"] for i in json.loads(admin(two, "GET", "/api/fleet").body)["instances"]}
            == {"one", "two"}
        ),
        "three gone",
        timeout=5.0,
    )

    # reset: every instance goes back to its file
    assert admin(one, "POST", "/api/fleet/reset").status == 200
    for proxy in (one, two):
        eventually(
            lambda proxy=proxy: (
                servers(proxy)[target]["state"] == "ready" and "c" not in servers(proxy)
            ),
            "back to the file",
        )


def test_fleet_changes_need_redis(portico, backends) -> None:  # type: ignore[no-untyped-def]
    app = backends("a")
    config = (
        "workers: 1\n"
        f"admin: {{bind: 127.0.0.1:0, token: {TOKEN}}}\n"
        "listeners:\n  - {name: web, bind: 127.0.0.1:0, default_pool: app}\n"
        "pools:\n  app:\n    servers:\n" + pool_yaml([app])
    )
    proxy = portico(config)
    answer = admin(proxy, "PUT", "/api/pools/app/servers/a/state?fleet", {"state": "drain"})
    assert answer.status == 400
    assert json.loads(answer.body)["error"] == "no fleet"
    assert servers(proxy)["a"]["state"] == "ready"
