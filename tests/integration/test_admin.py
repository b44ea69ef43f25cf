"""The admin API and metrics end to end: the real `portico run` with an `admin:` section, in
front of real FakeBackends.

These tests need the admin listener wired into the supervisor and the stats into the workers
(see the wiring notes of the issue "Operating Portico"): the ready line ends with
``; admin http://HOST:PORT``, workers send a stats snapshot every second, and changes made
through the API reach the workers over the channel. Workers report once a second and hear of
changes asynchronously, so tests wait for what they expect to see, bounded, never for a fixed
time.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import simple_config
from fakes import FakeBackend, Load, Portico, Response, eventually, pool_yaml, request

MakeBackend = Callable[..., FakeBackend]
MakePortico = Callable[[str], Portico]

TOKEN = "test-admin-token"
ADMIN = f"admin:\n  bind: 127.0.0.1:0\n  token: {TOKEN}\n"
WAIT = 15.0  # a bound on waiting for a snapshot (sent every second) or a change to arrive


def admin_port(proxy: Portico) -> int:
    found = re.search(r"admin http://[\d.]+:(\d+)", proxy.ready_line)
    assert found, f"no admin address in the ready line: {proxy.ready_line!r}"
    return int(found.group(1))


def api(
    proxy: Portico,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
) -> Response:
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    data = b""
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    hdrs.setdefault("Content-Length", str(len(data)))
    return request(admin_port(proxy), method, path, headers=hdrs, body=data)


def payload(response: Response) -> Any:
    return json.loads(response.body)


def metrics(proxy: Portico) -> dict[str, list[Any]]:
    response = api(proxy, "GET", "/metrics", token=None)
    assert response.status == 200
    return {f.name: f.samples for f in text_string_to_metric_families(response.body.decode())}


def requests_by_backend(proxy: Portico) -> Counter[str]:
    out: Counter[str] = Counter()
    for sample in metrics(proxy).get("portico_requests", []):
        if sample.name == "portico_requests_total":
            out[sample.labels["backend"]] += int(sample.value)
    return out


def answered_by(proxy: Portico, count: int) -> list[str]:
    out = []
    for _ in range(count):
        response = request(proxy.port, target="/")
        assert response.status == 200
        out.append(response.header("X-Backend") or "")
    return out


@pytest.fixture
def two(backends: MakeBackend) -> list[FakeBackend]:
    return [backends("a"), backends("b")]


def test_the_ready_line_names_the_admin_listener_and_the_api_needs_the_token(
    two: list[FakeBackend], portico: MakePortico
) -> None:
    proxy = portico(simple_config(two, top=ADMIN))
    assert api(proxy, "GET", "/api/pools", token=None).status == 401
    assert api(proxy, "GET", "/api/pools", token="wrong").status == 403
    [web] = payload(api(proxy, "GET", "/api/listeners"))
    assert web["name"] == "web"
    assert web["address"] == f"127.0.0.1:{proxy.port}"
    [app] = payload(api(proxy, "GET", "/api/pools"))
    assert [s["name"] for s in app["servers"]] == ["a", "b"]
    assert all(s["state"] == "ready" for s in app["servers"])


def test_metrics_count_the_requests_each_server_answered(
    two: list[FakeBackend], portico: MakePortico
) -> None:
    proxy = portico(simple_config(two, top=ADMIN))
    served = Counter(answered_by(proxy, 10))
    eventually(lambda: requests_by_backend(proxy) == served, "the requests in /metrics")
    found = metrics(proxy)
    assert found["portico_workers"][0].value == 1
    count = [
        s.value
        for s in found["portico_request_duration_seconds"]
        if s.name == "portico_request_duration_seconds_count"
    ]
    assert sum(count) == 10
    up = {s.labels["backend"]: s.value for s in found["portico_backend_up"]}
    assert up == {"a": 1, "b": 1}
    pools = payload(api(proxy, "GET", "/api/pools/app"))
    assert {s["name"]: s["responses"].get("2xx", 0) for s in pools["servers"]} == dict(served)


def test_a_drained_server_gets_no_new_requests_and_comes_back_when_ready(
    two: list[FakeBackend], portico: MakePortico
) -> None:
    proxy = portico(simple_config(two, top=ADMIN))
    reply = api(proxy, "PUT", "/api/pools/app/servers/b/state", {"state": "drain"})
    assert reply.status == 200
    assert payload(reply)["state"] == "drain"
    # the worker hears of it over its channel: wait until b is out, then it stays out
    eventually(lambda: set(answered_by(proxy, 4)) == {"a"}, "b to be drained")
    assert set(answered_by(proxy, 10)) == {"a"}
    assert api(proxy, "PUT", "/api/pools/app/servers/b/state", {"state": "ready"}).status == 200
    eventually(lambda: "b" in answered_by(proxy, 4), "b to be back")


def test_weight_changes_show_in_the_pool(two: list[FakeBackend], portico: MakePortico) -> None:
    proxy = portico(simple_config(two, policy="weighted_round_robin", top=ADMIN))
    reply = api(proxy, "PUT", "/api/pools/app/servers/a/weight", {"weight": 3})
    assert reply.status == 200
    assert payload(reply)["weight"] == 3
    servers = payload(api(proxy, "GET", "/api/pools/app"))["servers"]
    assert {s["name"]: s["weight"] for s in servers} == {"a": 3, "b": 1}

    def weights_in_metrics() -> bool:
        found = metrics(proxy).get("portico_backend_weight", [])
        return {s.labels["backend"]: s.value for s in found} == {"a": 3, "b": 1}

    eventually(weights_in_metrics, "the worker to use the new weight")
    assert Counter(answered_by(proxy, 8)) == {"a": 6, "b": 2}


def test_servers_added_and_removed_at_run_time(
    backends: MakeBackend, two: list[FakeBackend], portico: MakePortico
) -> None:
    proxy = portico(simple_config(two, top=ADMIN))
    c = backends("c")
    reply = api(proxy, "POST", "/api/pools/app/servers", {"address": c.address, "name": "c"})
    assert reply.status == 201
    assert payload(reply)["name"] == "c"
    eventually(lambda: "c" in answered_by(proxy, 3), "c to get traffic")
    assert (
        api(proxy, "POST", "/api/pools/app/servers", {"address": c.address, "name": "c"}).status
        == 409
    )
    assert api(proxy, "DELETE", "/api/pools/app/servers/c").status == 200
    eventually(lambda: "c" not in answered_by(proxy, 6), "c to be gone")
    servers = payload(api(proxy, "GET", "/api/pools/app"))["servers"]
    assert [s["name"] for s in servers] == ["a", "b"]


def test_scale_out_then_in_under_load_fails_no_request(
    backends: MakeBackend, two: list[FakeBackend], portico: MakePortico
) -> None:
    proxy = portico(simple_config(two, top=ADMIN))
    load = Load(proxy.port)
    try:
        extra = [backends(f"x{i}") for i in range(2)]
        for backend in extra:
            added = {"address": backend.address, "name": backend.name}
            assert api(proxy, "POST", "/api/pools/app/servers", added).status == 201
        eventually(lambda: all(b.seen for b in extra), "the new servers to get traffic")
        for backend in extra:  # drain first, as an operator scaling in would
            path = f"/api/pools/app/servers/{backend.name}/state"
            assert api(proxy, "PUT", path, {"state": "drain"}).status == 200
        for backend in extra:
            assert api(proxy, "DELETE", f"/api/pools/app/servers/{backend.name}").status == 200
        served = load.ok
        eventually(lambda: load.ok > served + 20, "more requests after scaling in")
    finally:
        load.stop()
    assert load.failures == []


def test_reload_through_the_api_keeps_the_totals(
    two: list[FakeBackend], portico: MakePortico
) -> None:
    proxy = portico(simple_config(two, top=ADMIN))
    answered_by(proxy, 6)
    eventually(lambda: sum(requests_by_backend(proxy).values()) == 6, "6 requests in /metrics")
    reply = api(proxy, "POST", "/api/reload")
    assert reply.status == 200
    assert payload(reply)["reloaded"] is True
    assert payload(reply)["generation"] == 1
    # the old worker's counters outlive it: the total never goes down
    assert sum(requests_by_backend(proxy).values()) >= 6
    answered_by(proxy, 2)
    eventually(lambda: sum(requests_by_backend(proxy).values()) == 8, "8 requests in /metrics")


def test_a_bad_file_is_refused_by_the_api_and_the_old_config_stays(
    two: list[FakeBackend], portico: MakePortico
) -> None:
    proxy = portico(simple_config(two, top=ADMIN))
    proxy.path.write_text(simple_config(two, top=ADMIN, policy="no_such_policy"))
    reply = api(proxy, "POST", "/api/reload")
    assert reply.status == 422
    assert payload(reply)["error"] == "reload refused"
    assert "policy" in payload(reply)["detail"]
    assert set(answered_by(proxy, 4)) == {"a", "b"}


def test_changes_are_logged_with_the_client_address(
    two: list[FakeBackend], portico: MakePortico
) -> None:
    proxy = portico(simple_config(two, top=ADMIN))
    start = len(proxy.stderr_lines)
    api(proxy, "PUT", "/api/pools/app/servers/a/weight", {"weight": 2})
    assert proxy.wait_for_stderr("set the weight of server 'a' of pool 'app' to 2", start=start)
    line = next(line for line in proxy.stderr_lines[start:] if "set the weight" in line)
    assert "admin: 127.0.0.1:" in line


def test_the_admin_listener_is_off_without_an_admin_section(
    two: list[FakeBackend], portico: MakePortico
) -> None:
    proxy = portico(simple_config(two))
    assert "admin http://" not in proxy.ready_line


def test_a_token_from_the_environment(
    two: list[FakeBackend], portico: MakePortico, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTICO_TEST_ADMIN_TOKEN", "from-env")
    top = "admin:\n  bind: 127.0.0.1:0\n  token_env: PORTICO_TEST_ADMIN_TOKEN\n"
    proxy = portico(simple_config(two, top=top))
    assert api(proxy, "GET", "/api/pools", token="from-env").status == 200
    assert api(proxy, "GET", "/api/pools", token=TOKEN).status == 403


def test_the_pool_view_is_one_pool_of_many(backends: MakeBackend, portico: MakePortico) -> None:
    a, b = backends("a"), backends("b")
    config = simple_config([a], top=ADMIN) + "  other:\n    servers:\n" + pool_yaml([b])
    proxy = portico(config)
    names = [p["name"] for p in payload(api(proxy, "GET", "/api/pools"))]
    assert names == ["app", "other"]
    assert payload(api(proxy, "GET", "/api/pools/other"))["servers"][0]["name"] == "b"
    assert api(proxy, "GET", "/api/pools/none").status == 404
