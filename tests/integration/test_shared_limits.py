"""A rate limit shared by two Portico instances through a real Redis, and what happens when
Redis goes away and comes back."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes import FakeBackend, Portico, pool_yaml, request
from redis_server import RedisServer, redis_server_binary


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
    shutil.rmtree(tmp_path / "redis", ignore_errors=True)


def _config(url: str, pool: list[FakeBackend], fallback: str = "local") -> str:
    return (
        "workers: 1\n"
        f"state: {{redis: '{url}', timeout: 200ms, rate_limit_fallback: {fallback}}}\n"
        "listeners:\n"
        "  - name: web\n"
        "    bind: 127.0.0.1:0\n"
        "    default_pool: app\n"
        "    rate_limit: {rate: 10/m, burst: 5, key: 'header:X-Api-Key'}\n"
        "pools:\n"
        "  app:\n"
        "    servers:\n" + pool_yaml(pool)
    )


def _statuses(ports: list[int], count: int, key: str) -> list[int]:
    return [request(ports[i % len(ports)], headers={"X-Api-Key": key}).status for i in range(count)]


def test_two_instances_share_one_limit(backends, redis, tmp_path) -> None:
    pool = [backends("b")]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config = _config(redis.url, pool)
    with Portico(config, tmp_path / "a") as a, Portico(config, tmp_path / "b") as b:
        got = _statuses([a.port, b.port], 20, "client-1")
        # burst 5 in all, not 5 per instance (10/m refills far too slowly to matter here)
        assert got.count(200) == 5
        assert got.count(429) == 15
        assert _statuses([a.port, b.port], 2, "client-2") == [200, 200]  # others unaffected


def test_redis_down_falls_back_to_the_local_limiter_and_recovers(backends, redis, portico) -> None:
    proxy = portico("admin: {bind: 127.0.0.1:0}\n" + _config(redis.url, [backends("b")]))
    assert _statuses([proxy.port], 6, "k") == [200] * 5 + [429]
    redis.stop()
    # Redis is gone: this worker's own limiter takes over (a fresh key there: its own burst)
    local = _statuses([proxy.port], 7, "k")
    assert local == [200] * 5 + [429] * 2
    _wait_for_metric(proxy, "portico_ratelimit_fallbacks_total", 7)  # each one is counted
    _wait_for_metric(proxy, "portico_store_errors_total", 1)
    redis.start()  # an empty Redis: the shared counts start over
    deadline_ok = False
    for _ in range(50):  # bounded: the store reconnects on its own within its fail-fast window
        if request(proxy.port, headers={"X-Api-Key": "fresh"}).status == 200:
            deadline_ok = True
            break
    assert deadline_ok


def test_redis_down_with_fallback_closed_refuses(backends, redis, portico) -> None:
    proxy = portico(_config(redis.url, [backends("b")], fallback="closed"))
    assert _statuses([proxy.port], 1, "k") == [200]
    redis.stop()
    answer = request(proxy.port, headers={"X-Api-Key": "k2"})
    assert answer.status == 429
    assert answer.header("Retry-After") == "1"


def _wait_for_metric(proxy: Portico, name: str, at_least: float) -> None:
    """Poll /metrics (workers report every second) until `name` reaches `at_least`."""
    import re
    import time

    from prometheus_client.parser import text_string_to_metric_families

    port = int(re.findall(r"admin http://[\d.]+:(\d+)", proxy.ready_line)[0])
    deadline = time.monotonic() + 10
    while True:
        text = request(port, target="/metrics", headers={"Host": "127.0.0.1"}).body.decode()
        total = sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        )
        if total >= at_least:
            return
        assert time.monotonic() < deadline, f"{name} stayed at {total}"


def _stick_config(url: str | None, pool: list[FakeBackend]) -> str:
    state = f"state: {{redis: '{url}', timeout: 200ms}}\n" if url else ""
    return (
        "workers: 1\n"
        f"{state}"
        "listeners:\n"
        "  - name: web\n"
        "    bind: 127.0.0.1:0\n"
        "    default_pool: app\n"
        "pools:\n"
        "  app:\n"
        "    stick: {key: 'cookie:JSESSIONID', ttl: 10m}\n"
        "    servers:\n" + pool_yaml(pool)
    )


def _sessions(name: str):  # type: ignore[no-untyped-def]
    from fakes import Reply

    def handler(seen):  # type: ignore[no-untyped-def]
        if "JSESSIONID" not in (seen.header("Cookie") or ""):
            return Reply(
                body=name.encode(), headers=[("Set-Cookie", f"JSESSIONID=s-{name}; Path=/")]
            )
        return Reply(body=name.encode())

    return handler


def _wait_for_a_stick_entry(url: str) -> None:
    import time

    import redis as redis_client

    client = redis_client.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 5
        while not any(True for _ in client.scan_iter(match="*st*")):
            assert time.monotonic() < deadline, "no stick-table entry was written"
    finally:
        client.close()


def test_a_session_learnt_by_one_instance_sticks_through_the_other(
    backends, redis, tmp_path
) -> None:
    pool = [backends(f"b{i}", _sessions(f"b{i}")) for i in range(3)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config = _stick_config(redis.url, pool)
    with Portico(config, tmp_path / "a") as a, Portico(config, tmp_path / "b") as b:
        first = request(a.port)
        server = first.header("X-Backend")
        cookie = (first.header("Set-Cookie") or "").split(";")[0]
        assert cookie == f"JSESSIONID=s-{server}"  # the application's cookie, untouched
        _wait_for_a_stick_entry(redis.url)  # A learns after answering, without delaying it
        answered = set()
        for i in range(40):  # learnt in Redis by A: B follows
            proxy = b if i % 2 == 0 else a
            answered.add(request(proxy.port, headers={"Cookie": cookie}).header("X-Backend"))
        assert answered == {server}


def test_a_stick_table_without_redis_works_per_worker_and_redis_down_falls_back(
    backends, redis, portico
) -> None:
    pool = [backends(f"b{i}", _sessions(f"b{i}")) for i in range(3)]
    proxy = portico(_stick_config(redis.url, pool))
    first = request(proxy.port)
    cookie = (first.header("Set-Cookie") or "").split(";")[0]
    _wait_for_a_stick_entry(redis.url)  # learnt after answering: the next request must find it
    assert request(proxy.port, headers={"Cookie": cookie}).header("X-Backend") == first.header(
        "X-Backend"
    )
    redis.stop()
    # Redis is gone: lookups answer nothing within the timeout, the policy picks: still 200s
    for _ in range(5):
        assert request(proxy.port, headers={"Cookie": cookie}).status == 200
