"""The HTTP cache end to end (RFC 9111 as a shared cache; RFC 5861; RFC 9211): the real
`portico run` with a route's `cache:` in front of a scripted origin, over HTTP/1.1 and h2c.

One Portico and one origin serve the whole module (starting Portico is most of a test's
time); each test uses its own paths, and the origin's script answers by path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fakes import (
    FakeBackend,
    Portico,
    Reply,
    Response,
    Seen,
    connect,
    eventually,
    pool_yaml,
    request,
)
from h2client import H2Client

Script = Callable[[Seen], Reply]


class Origin:
    """A FakeBackend whose answers the tests script per path (the path without its query)."""

    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.lock = threading.Lock()
        self.backend = FakeBackend("origin", self._answer)

    def _answer(self, seen: Seen) -> Reply:
        script = self.scripts.get(seen.target.split("?", 1)[0])
        if script is None:
            return Reply(404, body=b"no script\n")
        return script(seen)

    def script(self, path: str, script: Script) -> str:
        self.scripts[path] = script
        return path

    def seen(self, path: str) -> list[Seen]:
        return [s for s in list(self.backend.seen) if s.target.split("?", 1)[0] == path]


def _config(origin: FakeBackend) -> str:
    return (
        "workers: 1\n"
        "cache: {memory_size: 8MiB, max_entry_size: 1MiB}\n"
        "listeners:\n"
        "  - name: web\n"
        "    bind: 127.0.0.1:0\n"
        "    default_pool: app\n"
        "    http2: true\n"
        "    routes:\n"
        "      - name: keyed\n"
        "        match: {path_prefix: /keyed/}\n"
        "        pool: app\n"
        "        cache: {ignore_query: [utm_source], key_headers: [X-Tenant]}\n"
        "      - name: nocollapse\n"
        "        match: {path_prefix: /nocollapse/}\n"
        "        pool: app\n"
        "        cache: {collapse: false}\n"
        "      - name: cached\n"
        "        match: {path_prefix: /}\n"
        "        pool: app\n"
        "        cache: {}\n"
        "pools:\n"
        "  app:\n"
        "    retries: 0\n"
        "    servers:\n" + pool_yaml([origin])
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Origin, Portico]]:
    origin = Origin()
    proxy = Portico(_config(origin.backend), Path(tmp_path_factory.mktemp("cache")))
    try:
        yield origin, proxy
    finally:
        proxy.stop()
        origin.backend.stop()


def counted(body: bytes = b"", *headers: tuple[str, str], status: int = 200) -> Script:
    """Answers numbered by how many requests the script has had: body + b"#n"."""
    calls = [0]

    def answer(seen: Seen) -> Reply:
        calls[0] += 1
        return Reply(status, list(headers), body + b"#%d" % calls[0])

    return answer


class Site:
    """The module's origin and Portico as one protocol's client sees them: HTTP/1.1, or
    HTTP/2 (h2c); paths are made distinct per protocol (`script` gives the one to use)."""

    def __init__(self, origin: Origin, proxy: Portico, proto: str) -> None:
        self.origin = origin
        self.proxy = proxy
        self.proto = proto
        self.port = proxy.port
        self.scripts = origin.scripts

    def script(self, path: str, script: Script) -> str:
        return self.origin.script(path if self.proto == "http/1.1" else path + "-h2", script)

    def seen(self, path: str) -> list[Seen]:
        return self.origin.seen(path)

    def send(self, method: str, path: str, body: bytes = b"", **headers: str) -> Response:
        if self.proto == "http/1.1":
            return request(self.port, method, path, headers=headers, body=body)
        with H2Client(connect(self.port)) as client:
            stream = client.request(method, path, list(headers.items()), body or None)
            got = client.response(stream)
            fields = [(k.decode(), v.decode("latin-1")) for k, v in got.headers if k[:1] != b":"]
            return Response(got.status, fields, bytes(got.body), "2")


@pytest.fixture(params=["http/1.1", "h2"])
def site(setup: tuple[Origin, Portico], request: pytest.FixtureRequest) -> Site:
    return Site(setup[0], setup[1], request.param)


def get(where: Site | Portico, path: str, **headers: str) -> Response:
    if isinstance(where, Site):
        return where.send("GET", path, **headers)
    return request(where.port, "GET", path, headers=headers)


def test_miss_then_hit_with_age_and_cache_status(site) -> None:  # type: ignore[no-untyped-def]
    """RFC 9111 §4 (reuse), §5.1 (Age on every reuse); RFC 9211 (Cache-Status)."""
    origin = proxy = site
    path = origin.script("/hit", counted(b"a", ("Cache-Control", "max-age=100"), ("Age", "30")))
    first = get(proxy, path)
    assert first.status == 200
    assert first.body == b"a#1"
    assert "fwd=uri-miss" in (first.header("Cache-Status") or "")
    assert "stored" in (first.header("Cache-Status") or "")
    second = get(proxy, path)
    assert second.body == b"a#1"
    assert int(second.header("Age") or "0") >= 30
    status = second.header("Cache-Status") or ""
    assert status.startswith("portico; hit")
    assert "ttl=" in status
    assert second.header("Content-Length") == "3"
    assert len(origin.seen(path)) == 1


def test_hit_over_http2(setup) -> None:  # type: ignore[no-untyped-def]
    """A response stored for an HTTP/1.1 client is reused for an HTTP/2 one, and back."""
    origin, proxy = setup
    path = origin.script("/h2", counted(b"h", ("Cache-Control", "max-age=100")))
    assert get(proxy, path).body == b"h#1"
    with H2Client(connect(proxy.port)) as client:
        response = client.get(path)
        assert response.status == 200
        assert bytes(response.body) == b"h#1"
        assert (response.header("cache-status") or "").startswith("portico; hit")
        assert response.header("age") is not None
        other = origin.script("/h2-first", counted(b"g", ("Cache-Control", "max-age=100")))
        assert bytes(client.get(other).body) == b"g#1"
        assert "fwd=uri-miss" in (client.get(other + "x").header("cache-status") or "")
    with H2Client(connect(proxy.port)) as client:
        assert bytes(client.get(other).body) == b"g#1"
    assert len(origin.seen(other)) == 1


def test_not_stored_when_forbidden(site) -> None:  # type: ignore[no-untyped-def]
    """§3: no-store, private, Authorization without public; §5.2.1.5 request no-store."""
    origin = proxy = site
    cases = {
        "/nostore": [("Cache-Control", "no-store, max-age=100")],
        "/private": [("Cache-Control", "private, max-age=100")],
    }
    for name, headers in cases.items():
        path = origin.script(name, counted(b"x", *headers))
        get(proxy, path)
        assert get(proxy, path).body == b"x#2", path
    path = origin.script("/auth", counted(b"x", ("Cache-Control", "max-age=100")))
    get(proxy, path, Authorization="Bearer t")
    assert get(proxy, path).body == b"x#2"
    path = origin.script("/auth-public", counted(b"x", ("Cache-Control", "public, max-age=100")))
    get(proxy, path, Authorization="Bearer t")
    assert get(proxy, path).body == b"x#1"
    path = origin.script("/req-nostore", counted(b"x", ("Cache-Control", "max-age=100")))
    get(proxy, path, **{"Cache-Control": "no-store"})
    assert get(proxy, path).body == b"x#2"


def test_vary(site) -> None:  # type: ignore[no-untyped-def]
    """§4.1: a stored response is reused only for the same selecting header values
    (normalised: whitespace between list members does not matter); Vary: * never."""
    origin = proxy = site

    def by_language(seen: Seen) -> Reply:
        lang = seen.header("Accept-Language") or "none"
        headers = [("Cache-Control", "max-age=100"), ("Vary", "Accept-Language")]
        return Reply(200, headers, f"{lang}#{len(origin.seen(path))}".encode())

    path = origin.script("/vary", by_language)
    assert get(proxy, path, **{"Accept-Language": "en, fr"}).body == b"en, fr#1"
    assert get(proxy, path, **{"Accept-Language": "en,fr"}).body == b"en, fr#1"
    de = get(proxy, path, **{"Accept-Language": "de"})
    assert de.body == b"de#2"
    assert "fwd=vary-miss" in (de.header("Cache-Status") or "")
    assert get(proxy, path).body == b"none#3"
    assert get(proxy, path, **{"Accept-Language": "de"}).body == b"de#2"
    star = origin.script(
        "/vary-star", counted(b"s", ("Cache-Control", "max-age=100"), ("Vary", "*"))
    )
    get(proxy, star)
    assert get(proxy, star).body == b"s#2"


def test_revalidation_with_304_updates_the_stored_headers(site) -> None:  # type: ignore[no-untyped-def]
    """§4.3.1 (conditional request with the stored validators), §4.3.3/§4.3.4 and §3.2 (a 304
    refreshes the stored headers, the stored body is served)."""
    origin = proxy = site
    calls = [0]

    def validating(seen: Seen) -> Reply:
        calls[0] += 1
        if seen.header("If-None-Match") == '"v1"':
            return Reply(
                304, [("ETag", '"v1"'), ("X-Round", str(calls[0])), ("Cache-Control", "max-age=0")]
            )
        return Reply(
            200, [("ETag", '"v1"'), ("X-Round", "1"), ("Cache-Control", "max-age=0")], b"body"
        )

    path = origin.script("/validate", validating)
    assert get(proxy, path).body == b"body"
    second = get(proxy, path)
    assert second.status == 200
    assert second.body == b"body"
    assert second.header("X-Round") == "2"
    assert second.header("Cache-Status") == (
        f'portico; fwd=stale; fwd-status=304; ttl=0; key="http://test.local{path}"'
    )
    seen = origin.seen(path)
    assert len(seen) == 2
    assert seen[1].header("If-None-Match") == '"v1"'
    # the client's own precondition is answered from the refreshed entry
    third = get(proxy, path, **{"If-None-Match": '"v1"'})
    assert third.status == 304
    assert third.header("X-Round") is None or third.header("ETag") == '"v1"'


def test_only_if_cached(site) -> None:  # type: ignore[no-untyped-def]
    """§5.2.1.7: nothing stored (or only a stale one) -> 504, and no origin request."""
    origin = proxy = site
    path = origin.script("/oic", counted(b"o", ("Cache-Control", "max-age=100")))
    assert get(proxy, path, **{"Cache-Control": "only-if-cached"}).status == 504
    assert not origin.seen(path)
    get(proxy, path)
    hit = get(proxy, path, **{"Cache-Control": "only-if-cached"})
    assert hit.status == 200
    assert hit.body == b"o#1"


def test_stale_if_error(site) -> None:  # type: ignore[no-untyped-def]
    """RFC 5861 §4: a stale response stands in for a 5xx within the window; without the
    directive the error goes through (RFC 9111 §4.2.4)."""
    origin = proxy = site
    state = {"fail": False}

    def flaky(seen: Seen) -> Reply:
        if state["fail"]:
            return Reply(503, [], b"down")
        headers = [
            ("Cache-Control", "max-age=1, stale-if-error=600"),
            ("Age", "5"),
            ("ETag", '"s"'),
        ]
        return Reply(200, headers, b"good")

    path = origin.script("/sie", flaky)
    assert get(proxy, path).body == b"good"
    state["fail"] = True
    stale = get(proxy, path)
    assert stale.status == 200
    assert stale.body == b"good"
    assert "stale-if-error" in (stale.header("Cache-Status") or "")

    def no_window(seen: Seen) -> Reply:
        if len(origin.seen(path)) > 1:
            return Reply(503, [], b"down")
        return Reply(200, [("Cache-Control", "max-age=1"), ("Age", "5"), ("ETag", '"s"')], b"good")

    path = origin.script("/sie-none", no_window)
    get(proxy, path)
    assert get(proxy, path).status == 503


def test_stale_while_the_origin_is_unreachable(site) -> None:  # type: ignore[no-untyped-def]
    """RFC 9111 §4.2.4: when the origin cannot be reached (here: it drops the connection), a
    stale response stands in (`stale_if_unreachable`, 1 day by default), unless it said
    must-revalidate; an error status from a reachable origin is passed on."""
    origin = proxy = site
    state = {"down": False}

    def flaky(cache_control: str):  # type: ignore[no-untyped-def]
        def answer(seen: Seen) -> Reply:
            if state["down"]:
                return Reply(action="close")
            return Reply(200, [("Cache-Control", cache_control), ("Age", "5")], b"kept")

        return answer

    plain = origin.script("/unreachable", flaky("max-age=1"))
    strict = origin.script("/unreachable-strict", flaky("max-age=1, must-revalidate"))
    for path in (plain, strict):
        assert get(proxy, path).body == b"kept"
    state["down"] = True
    stale = get(proxy, plain)
    assert stale.status == 200
    assert stale.body == b"kept"
    assert "fwd=stale" in (stale.header("Cache-Status") or "")
    assert "detail=origin-unreachable" in (stale.header("Cache-Status") or "")
    assert get(proxy, strict).status == 502


def test_fresh_hit_survives_a_dead_origin(site) -> None:  # type: ignore[no-untyped-def]
    """A failing origin never turns a fresh hit into an error (no origin request at all)."""
    origin = proxy = site
    state = {"fail": False}

    def dies(seen: Seen) -> Reply:
        if state["fail"]:
            return Reply(action="close")
        return Reply(200, [("Cache-Control", "max-age=100")], b"alive")

    path = origin.script("/dead", dies)
    get(proxy, path)
    state["fail"] = True
    assert get(proxy, path).body == b"alive"


def test_invalidation_by_unsafe_methods(site) -> None:  # type: ignore[no-untyped-def]
    """§4.4: a non-error answer to an unsafe method invalidates the target URI and the
    same-origin Location / Content-Location; an error answer does not."""
    origin = proxy = site
    target = origin.script("/inv", counted(b"t", ("Cache-Control", "max-age=100")))
    other = origin.script("/inv-other", counted(b"o", ("Cache-Control", "max-age=100")))
    for path in (target, other):
        get(proxy, path)
        assert get(proxy, path).body.endswith(b"#1")

    def post(seen: Seen) -> Reply:
        if seen.method == "GET":
            return Reply(
                200, [("Cache-Control", "max-age=100")], b"t#%d" % len(origin.seen(target))
            )
        return Reply(201, [("Location", other)], b"made")

    origin.scripts[target] = post
    posted = site.send("POST", target, b"x")
    assert posted.status == 201
    assert posted.header("Cache-Status") == "portico; fwd=method"
    assert get(proxy, target).body == b"t#3"  # the first GET, the POST, this GET
    assert get(proxy, other).body == b"o#2"
    origin.scripts[target] = lambda seen: Reply(500, [("Location", other)], b"no")
    assert site.send("DELETE", target).status == 500
    assert get(proxy, other).body == b"o#2"  # an error answer invalidates nothing


def test_head_from_a_stored_get(site) -> None:  # type: ignore[no-untyped-def]
    """RFC 9110 §9.3.2: a HEAD is answered from the stored GET, with its fields."""
    origin = proxy = site
    path = origin.script("/head", counted(b"abcdef", ("Cache-Control", "max-age=100")))
    get(proxy, path)
    if site.proto == "h2":
        head = site.send("HEAD", path)
        assert head.status == 200
        assert head.header("content-length") == "8"
        assert (head.header("cache-status") or "").startswith("portico; hit")
        assert head.body == b""
    else:
        with connect(site.port) as sock:
            sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: test.local\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(4096)
        text = data.decode("latin-1").lower()
        assert text.startswith("http/1.1 200")
        assert "content-length: 8" in text
        assert "cache-status: portico; hit" in text
        assert data.endswith(b"\r\n\r\n")
    assert len(origin.seen(path)) == 1


def test_range_from_a_stored_full_response(site) -> None:  # type: ignore[no-untyped-def]
    """RFC 9110 §14: a single range of a stored 200 -> 206 with Content-Range; unsatisfiable
    -> 416; If-Range with another validator -> the whole response."""
    origin = proxy = site
    path = origin.script(
        "/range",
        lambda s: Reply(200, [("Cache-Control", "max-age=100"), ("ETag", '"r"')], b"0123456789"),
    )
    get(proxy, path)
    part = get(proxy, path, Range="bytes=2-4")
    assert part.status == 206
    assert part.body == b"234"
    assert part.header("Content-Range") == "bytes 2-4/10"
    assert get(proxy, path, Range="bytes=-3").body == b"789"
    assert get(proxy, path, Range="bytes=20-").status == 416
    whole = get(proxy, path, Range="bytes=2-4", **{"If-Range": '"other"'})
    assert whole.status == 200
    assert whole.body == b"0123456789"
    assert len(origin.seen(path)) == 1


def test_cache_key_rules(site) -> None:  # type: ignore[no-untyped-def]
    """A route's key: ignored query parameters share an entry, key headers split them."""
    origin = proxy = site
    path = origin.script("/keyed/a", counted(b"k", ("Cache-Control", "max-age=100")))
    assert get(proxy, path + "?utm_source=x&id=1").body == b"k#1"
    assert get(proxy, path + "?id=1&utm_source=y").body == b"k#1"
    assert get(proxy, path + "?id=2&utm_source=y").body == b"k#2"
    assert get(proxy, path + "?id=1", **{"X-Tenant": "b"}).body == b"k#3"
    assert get(proxy, path + "?id=1", **{"X-Tenant": "b"}).body == b"k#3"
    assert get(proxy, path + "?id=1").body == b"k#1"


def _burst(port: int, path: str, count: int) -> list[bytes]:
    async def one() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n".encode()
        )
        data = await reader.read()
        writer.close()
        return data

    async def run() -> list[bytes]:
        return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), 30)

    return asyncio.run(run())


def _burst_h2(port: int, path: str, count: int) -> list[tuple[int, bytes]]:
    clients = [H2Client(connect(port)) for _ in range(2)]
    try:
        streams = [(c, c.request("GET", path)) for c in clients for _ in range(count // 2)]
        return [(got.status, bytes(got.body)) for got in (c.response(s) for c, s in streams)]
    finally:
        for client in clients:
            client.close()


def test_collapsed_forwarding(site) -> None:  # type: ignore[no-untyped-def]
    """200 concurrent requests for one cold key: exactly one origin request; every client gets
    the body. A route with `collapse: false` sends them all."""
    origin = site

    def slow(seen: Seen) -> Reply:
        return Reply(200, [("Cache-Control", "max-age=100")], b"one", delay=0.3)

    path = origin.script("/collapse", slow)
    if site.proto == "h2":  # two connections of 100 streams each (the stream limit)
        assert _burst_h2(site.port, path, 200) == [(200, b"one")] * 200
    else:
        answers = _burst(site.port, path, 200)
        assert all(a.startswith(b"HTTP/1.1 200") and a.endswith(b"one") for a in answers)
        # RFC 9211: those that waited say so
        assert any(b"; collapsed" in a for a in answers)
    assert len(origin.seen(path)) == 1
    path = origin.script("/nocollapse/x", slow)
    if site.proto == "h2":
        _burst_h2(site.port, path, 6)
        assert len(origin.seen(path)) == 6
    else:
        _burst(site.port, path, 5)
        assert len(origin.seen(path)) == 5


TOKEN = "cache-admin-token"


def _admin(proxy: Portico, method: str, path: str, body: object = None):  # type: ignore[no-untyped-def]
    found = re.search(r"admin http://[\d.]+:(\d+)", proxy.ready_line)
    assert found, proxy.ready_line
    data = json.dumps(body).encode() if body is not None else b""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    return request(int(found.group(1)), method, path, headers=headers, body=data)


def _metrics(proxy: Portico) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = _admin(proxy, "GET", "/metrics").body.decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _metric(proxy: Portico, name: str, **labels: str) -> float:
    return _metrics(proxy).get((name, tuple(sorted(labels.items()))), 0.0)


def test_purge_on_every_worker_and_metrics(backends, portico) -> None:  # type: ignore[no-untyped-def]
    """Purge by URL and by tag through the admin API reaches every worker (the cache's entry
    count, summed over both workers, drops to 0), and so does an unsafe request's
    invalidation; the cache's counters and gauges are in /metrics."""
    state = {"n": 0}

    def answer(seen: Seen) -> Reply:
        state["n"] += 1
        path = seen.target.split("?", 1)[0]
        if path.startswith("/big"):
            return Reply(200, [("Cache-Control", "max-age=100")], b"b" * 30_000)
        if path == "/stale":
            headers = [("Cache-Control", "max-age=1"), ("Age", "5"), ("ETag", '"e"')]
            if seen.header("If-None-Match") == '"e"':
                return Reply(304, headers)
            return Reply(200, headers, b"s")
        tags = [("Cache-Tag", "red, blue"), ("Surrogate-Key", "green")] if "tagged" in path else []
        return Reply(200, [("Cache-Control", "max-age=100"), *tags], b"x%d" % state["n"])

    origin = backends("origin", answer)
    proxy = portico(
        "workers: 2\n"
        f"admin:\n  bind: 127.0.0.1:0\n  token: {TOKEN}\n"
        "cache: {memory_size: 64KiB, max_entry_size: 40KiB}\n"
        "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    default_pool: app\n"
        "    routes:\n      - name: all\n        match: {path_prefix: /}\n        pool: app\n"
        "        cache: {}\n"
        "pools:\n  app:\n    servers:\n" + pool_yaml([origin])
    )
    entries = ("portico_cache_entries", (("tier", "memory"),))

    def fill(path: str) -> None:
        # new connections until both workers hold `path` (each stores it on its first miss)
        def both() -> bool:
            get(proxy, path)
            return sum(1 for s in origin.seen if s.target == path) >= 2

        eventually(both, f"both workers to store {path}", timeout=20)

    fill("/page")
    fill("/tagged")
    eventually(lambda: _metrics(proxy).get(entries) == 4, "4 entries in /metrics")
    purged = _admin(proxy, "POST", "/api/cache/purge", {"url": "http://test.local/page"})
    assert purged.status == 202
    assert json.loads(purged.body)["workers"] == 2
    eventually(lambda: _metrics(proxy).get(entries) == 2, "the URL purged from both workers")
    assert _admin(proxy, "POST", "/api/cache/purge", {"tag": "green"}).status == 202
    eventually(lambda: _metrics(proxy).get(entries) == 0, "the tag purged from both workers")
    # an unsafe request through one worker invalidates the other's copy too (RFC 9111 §4.4)
    fill("/written")
    eventually(lambda: _metrics(proxy).get(entries) == 2, "/written in both workers")
    assert request(proxy.port, "POST", "/written", body=b"x").status == 200
    eventually(lambda: _metrics(proxy).get(entries) == 0, "/written invalidated in both")
    assert _admin(proxy, "POST", "/api/cache/purge", {}).status == 422
    assert _admin(proxy, "POST", "/api/cache/purge", {"url": "/relative"}).status == 422

    # counters: misses and hits, stale (revalidated with a 304), evictions, bytes
    for path in ("/big1", "/big2", "/big3"):
        fill(path)
    for _ in range(4):
        get(proxy, "/big3")  # both workers hold it: hits
    for _ in range(3):  # one of the two workers gets two of them: a revalidation (304)
        get(proxy, "/stale")
    route = {"listener": "web", "route": "all"}

    def counted() -> bool:
        m = _metrics(proxy)

        def value(name: str, **labels: str) -> float:
            return m.get((name, tuple(sorted(labels.items()))), 0.0)

        return (
            value("portico_cache_misses_total", **route) >= 10
            and value("portico_cache_hits_total", **route) >= 4
            and value("portico_cache_revalidations_total", **route) >= 1
            and value("portico_cache_stored_total", **route) >= 10
            and value("portico_cache_evictions_total", tier="memory") >= 2
            and 30_000 < value("portico_cache_bytes", tier="memory") <= 2 * 64 * 1024
        )

    try:
        eventually(counted, "the cache counters in /metrics")
    except AssertionError:
        print({k: v for k, v in _metrics(proxy).items() if "cache" in k[0]})
        raise


def test_stale_while_revalidate(site) -> None:  # type: ignore[no-untyped-def]
    """RFC 5861 §3: within the window the stale response is served at once and one
    conditional request refreshes it in the background; a 304 keeps the body, a 200 replaces
    it."""
    origin = proxy = site
    version = {"body": b"old"}

    def answer(seen: Seen) -> Reply:
        headers = [
            ("Cache-Control", "max-age=1, stale-while-revalidate=600"),
            ("Age", "5"),
            ("ETag", f'"{version["body"].decode()}"'),
        ]
        if seen.header("If-None-Match") == headers[2][1]:
            return Reply(304, headers)
        return Reply(200, headers, version["body"])

    path = origin.script("/swr", answer)
    assert get(proxy, path).body == b"old"
    stale = get(proxy, path)
    assert stale.body == b"old"
    assert "detail=stale" in (stale.header("Cache-Status") or "")
    eventually(lambda: len(origin.seen(path)) == 2, "the background revalidation")
    assert origin.seen(path)[1].header("If-None-Match") == '"old"'
    version["body"] = b"new"
    eventually(lambda: get(proxy, path).body == b"new", "the refreshed body")


def _disk_config(origin: FakeBackend, disk: Path) -> str:
    return (
        "workers: 1\n"
        "cache: {memory_size: 1MiB, max_entry_size: 64KiB,"
        f" disk_path: {disk}, disk_size: 64MiB}}\n"
        "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    default_pool: app\n"
        "    http2: true\n"
        "    routes:\n      - name: all\n        match: {path_prefix: /}\n        pool: app\n"
        "        cache: {}\n"
        "        response_headers: {set: {X-Served-By: portico}}\n"
        "pools:\n  app:\n    retries: 0\n    servers:\n" + pool_yaml([origin])
    )


BIG = 3 * 1024 * 1024


def _big_body(path: str) -> bytes:
    seed = hashlib.sha256(path.encode()).digest()
    return (seed * (BIG // len(seed) + 1))[:BIG]


def test_disk_tier_survives_a_restart_and_a_killed_worker(backends, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The disk tier: an entry stored before a restart is served after it (no origin request);
    a worker SIGKILLed while large responses stream into the cache leaves no half entry: after
    the restart every response served is complete."""
    release = threading.Event()

    def answer(seen: Seen) -> Reply:
        path = seen.target
        if path.startswith("/big"):
            body = _big_body(path)
            pieces = [body[i : i + 256 * 1024] for i in range(0, len(body), 256 * 1024)]
            return Reply(200, [("Cache-Control", "max-age=600")], pieces, hold_last=release)
        return Reply(200, [("Cache-Control", "max-age=600")], b"small " + path.encode())

    origin = backends("origin", answer)
    disk = tmp_path / "disk"
    config = _disk_config(origin, disk)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Portico(config, tmp_path / "a")
    try:
        assert get(first, "/small").body == b"small /small"
        assert (get(first, "/small").header("Cache-Status") or "").startswith("portico; hit")
        # large responses in flight (their last piece held back), then the worker is killed
        results: list[bytes] = []

        def fetch(path: str) -> None:
            with contextlib.suppress(OSError, EOFError):
                results.append(get(first, path).body)

        threads = [threading.Thread(target=fetch, args=(f"/big{i}",)) for i in range(3)]
        for thread in threads:
            thread.start()
        eventually(
            lambda: origin.body_bytes_sent >= 3 * (BIG - 256 * 1024),
            "the large bodies to be mostly sent",
        )
        eventually(lambda: len(list((disk / "tmp").iterdir())) == 3, "three entries being stored")
        for pid in first.worker_pids():
            os.kill(pid, signal.SIGKILL)
        release.set()
        for thread in threads:
            thread.join(10)
        assert all(len(body) < BIG for body in results)  # cut, never presented as whole
    finally:
        first.stop()
    second = Portico(config, tmp_path / "b")
    try:
        before = len(origin.seen)
        small = get(second, "/small")
        assert small.body == b"small /small"
        assert (small.header("Cache-Status") or "").startswith("portico; hit")
        assert len(origin.seen) == before  # from the disk, stored before the restart
        assert not list((disk / "tmp").iterdir())  # the killed worker's files were removed
        for i in range(3):
            path = f"/big{i}"
            for _ in range(2):  # a miss (stored now), then a hit from the disk
                response = get(second, path)
                assert response.body == _big_body(path)
                assert response.header("X-Served-By") == "portico"  # the route's edits
            assert (response.header("Cache-Status") or "").startswith("portico; hit")
        part = get(second, "/big1", Range="bytes=1000000-1000099")  # streamed from the file
        assert part.status == 206
        assert part.body == _big_body("/big1")[1_000_000:1_000_100]
        with H2Client(connect(second.port)) as client:  # and over HTTP/2
            got = client.get("/big2")
            assert (got.header("cache-status") or "").startswith("portico; hit")
            assert bytes(got.body) == _big_body("/big2")
    finally:
        second.stop()


def test_disk_tier_keeps_every_vary_variant(backends, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A response that varies by Accept-Encoding, stored on disk for two codings, is served
    after a restart (memory empty) to each client from its own variant: no origin request,
    no client given the other's body."""

    def answer(seen: Seen) -> Reply:
        coding = seen.header("Accept-Encoding") or "identity"
        return Reply(
            200,
            [("Cache-Control", "max-age=600"), ("Vary", "Accept-Encoding")],
            f"body for {coding}".encode(),
        )

    origin = backends("origin", answer)
    disk = tmp_path / "disk"
    config = _disk_config(origin, disk)
    codings = ("gzip", "br", "identity")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Portico(config, tmp_path / "a")
    try:
        for coding in codings:
            assert (
                get(first, "/v", **{"Accept-Encoding": coding}).body
                == f"body for {coding}".encode()
            )
    finally:
        first.stop()
    assert len(origin.seen) == 3
    second = Portico(config, tmp_path / "b")
    try:
        for coding in codings:
            response = get(second, "/v", **{"Accept-Encoding": coding})
            assert response.body == f"body for {coding}".encode()
            assert (response.header("Cache-Status") or "").startswith("portico; hit")
        assert len(origin.seen) == 3  # every variant from the disk
    finally:
        second.stop()
