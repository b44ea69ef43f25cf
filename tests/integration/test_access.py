"""IP access lists end to end: a listener's deny closes the connection at accept (before any
byte, TLS included), a route's answers 403 (or its own status), the client address behind
trusted proxies is the right-most untrusted one, run-time entries through the admin API reach
every worker and lapse, files are re-read on reload, and `max_conns` pauses accepting."""

from __future__ import annotations

import json
import re
import select
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from fakes import Portico, Reply, Response, ResponseReader, Seen, pool_yaml
from redis_server import RedisServer, redis_server_binary

TOKEN = "s3cret-token-for-tests"
WAIT = 10.0


def ask(
    port: int,
    target: str = "/",
    *,
    source: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
    method: str = "GET",
    body: bytes = b"",
) -> Response | None:
    """One request from the loopback address `source`; None when the connection was closed
    without an answer (refused at accept)."""
    sock = socket.socket()
    sock.settimeout(5)
    try:
        sock.bind((source, 0))
        hdrs = {"Host": "test.local", **(headers or {})}
        if body:
            hdrs["Content-Length"] = str(len(body))
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(head.encode() + b"\r\n" + body)
            return ResponseReader(sock).read()
        except (ConnectionError, OSError, AssertionError):
            return None
    finally:
        sock.close()


def status(port: int, target: str = "/", **kwargs: Any) -> int | None:
    answer = ask(port, target, **kwargs)
    return None if answer is None else answer.status


def admin(proxy: Portico, method: str, path: str, body: Any = None) -> Response:
    port = int(re.findall(r"admin https?://[\d.]+:(\d+)", proxy.ready_line)[0])
    data = json.dumps(body).encode() if body is not None else b""
    headers = {"Host": "127.0.0.1", "Authorization": f"Bearer {TOKEN}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    answer = ask(port, path, method=method, headers=headers, body=data)
    assert answer is not None
    return answer


def until(condition: Any, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def metric(proxy: Portico, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = admin(proxy, "GET", "/metrics").body.decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def test_listener_and_route_access_lists(backends, portico, tmp_path: Path) -> None:
    blocked = tmp_path / "blocked.txt"
    blocked.write_text("# abusers\n127.0.0.3   # one address\n\n127.0.9.0/24\n")
    ca = trustme.CA()
    cert = ca.issue_cert("test.local")
    pem = tmp_path / "cert.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    pool = [backends("b")]
    proxy = portico(
        "workers: 1\n"
        "listeners:\n"
        "  - name: web\n"
        "    bind: 127.0.0.1:0\n"
        "    default_pool: app\n"
        "    access:\n"
        "      deny: [127.0.0.2]\n"
        f"      deny_files: [{blocked}]\n"
        "    routes:\n"
        "      - match: {path: /private/}\n"
        "        pool: app\n"
        "        access: {allow: [127.0.0.4/32, '::1'], status: 451, body: \"not here\\n\"}\n"
        "  - name: tls\n"
        "    bind: 127.0.0.1:0\n"
        "    protocol: https\n"
        "    default_pool: app\n"
        f"    tls: {{certificates: [{{cert: {pem}, key: {pem}}}]}}\n"
        "    access: {allow: [127.0.0.1]}\n"
        "  - name: behind\n"
        "    bind: 127.0.0.1:0\n"
        "    default_pool: app\n"
        "    trusted_proxies: [127.0.0.1/32, 10.0.0.0/8]\n"
        "    access: {deny: [198.51.100.7]}\n"
        "  - name: relay\n"
        "    bind: 127.0.0.1:0\n"
        "    protocol: tcp\n"
        "    default_pool: app\n"
        "    proxy_protocol: {trusted: [127.0.0.1/32]}\n"
        "    access: {deny: [198.51.100.7]}\n"
        f"admin: {{bind: 127.0.0.1:0, token: {TOKEN}}}\n"
        "pools:\n  app:\n    servers:\n" + pool_yaml(pool)
    )
    web, tls, behind, relay = proxy.ports[:4]
    assert status(web) == 200
    assert status(web, source="127.0.0.2") is None  # closed at accept
    assert status(web, source="127.0.0.3") is None  # from the file
    assert status(web, source="127.0.9.77") is None
    private = ask(web, "/private/x")
    assert private is not None
    assert (private.status, private.body) == (451, b"not here\n")
    assert status(web, "/private/x", source="127.0.0.4") == 200
    # https: a denied peer never gets a handshake
    context = ssl.create_default_context(cafile=None)
    ca.configure_trust(context)
    for source, allowed in (("127.0.0.1", True), ("127.0.0.5", False)):
        raw = socket.socket()
        raw.settimeout(5)
        raw.bind((source, 0))
        try:
            raw.connect(("127.0.0.1", tls))
            with context.wrap_socket(raw, server_hostname="test.local") as conn:
                conn.sendall(b"GET / HTTP/1.1\r\nHost: test.local\r\n\r\n")
                assert conn.recv(12) == b"HTTP/1.1 200"
                handshaken = True
        except (ssl.SSLError, ConnectionError, OSError):
            handshaken = False
        finally:
            raw.close()
        assert handshaken is allowed
    assert len(pool[0].seen) == 3  # only the allowed requests reached the server so far
    until(lambda: metric(proxy, "portico_access_denied_total", where="accept") >= 4, "metrics")

    # behind trusted proxies: the right-most untrusted address of X-Forwarded-For
    xff = "X-Forwarded-For"
    assert status(behind, headers={xff: "198.51.100.7"}) == 403
    assert status(behind, headers={xff: "198.51.100.7, 10.1.1.1"}) == 403  # a trusted hop
    # the left-most entry is the client's to write: only the right-most untrusted one counts
    assert status(behind, headers={xff: "198.51.100.7, 203.0.113.1"}) == 200
    assert status(behind) == 200
    # an untrusted peer is judged by its own address, whatever it claims
    assert status(behind, source="127.0.0.2", headers={xff: "198.51.100.7"}) == 200

    # a TCP listener behind a PROXY-protocol balancer: the client the header names is judged
    for client, answered in (("203.0.113.1", True), ("198.51.100.7", False)):
        with socket.create_connection(("127.0.0.1", relay), timeout=5) as sock:
            sock.sendall(
                f"PROXY TCP4 {client} 127.0.0.1 40000 80\r\n".encode()
                + b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )
            try:
                got = sock.recv(12)
            except ConnectionError:
                got = b""
        assert got.startswith(b"HTTP/1.1 200") is answered, (client, got)

    # the file is read again on reload
    blocked.write_text("127.0.0.6\n")
    assert admin(proxy, "POST", "/api/reload").status == 200
    assert status(web, source="127.0.0.3") == 200
    assert status(web, source="127.0.0.6") is None


def test_runtime_entries_bans_and_max_conns(backends, portico) -> None:
    """One instance of two workers: run-time entries through the admin API reach both workers
    and lapse; a ban rule bans a key on both, visibly and reversibly; max_conns pauses accepting."""

    def handler(seen: Seen) -> Reply:
        return Reply(status=401 if seen.target.startswith("/login") else 200, body=b"x")

    proxy = portico(
        "workers: 2\n"
        "listeners:\n"
        "  - name: web\n"
        "    bind: 127.0.0.1:0\n"
        "    default_pool: app\n"
        "    bans:\n"
        "      - {name: guessing, key: 'header:X-User', status: [401, 403], count: 3, window: 1m,"
        " duration: 1h}\n"
        "  - name: capped\n"
        "    bind: 127.0.0.1:0\n"
        "    default_pool: app\n"
        "    max_conns: 2\n"
        f"admin: {{bind: 127.0.0.1:0, token: {TOKEN}}}\n"
        "pools:\n  app:\n    servers:\n" + pool_yaml([backends("b", handler)])
    )
    web, capped = proxy.ports[0], proxy.ports[1]
    added = admin(proxy, "POST", "/api/access", {"address": "127.0.0.2", "listener": "web"})
    assert added.status == 201, added.body
    until(lambda: all(status(web, source="127.0.0.2") is None for _ in range(8)), "deny")
    assert status(web) == 200
    assert status(capped, source="127.0.0.2") == 200  # another listener's entry
    listed = json.loads(admin(proxy, "GET", "/api/access").body)
    assert [(e["network"], e["listener"], e["action"]) for e in listed] == [
        ("127.0.0.2/32", "web", "deny")
    ]
    removed = admin(proxy, "DELETE", "/api/access/web/127.0.0.2%2F32")
    assert removed.status == 200, removed.body
    until(lambda: all(status(web, source="127.0.0.2") == 200 for _ in range(8)), "allow")
    # with a TTL, on every listener: gone by itself, in every worker
    body = {"address": "127.0.0.0/24", "ttl": "1s"}
    assert admin(proxy, "POST", "/api/access", body).status == 201
    until(lambda: status(capped, source="127.0.0.3") is None, "deny with ttl")
    until(lambda: all(status(web, source="127.0.0.3") == 200 for _ in range(8)), "lapse")
    assert json.loads(admin(proxy, "GET", "/api/access").body) == []
    assert admin(proxy, "POST", "/api/access", {"address": "10.0.0.300"}).status == 422

    # bans: the 4th 401 for one X-User (counted by one worker without Redis) bans that user on
    # both workers (fresh connections are spread over them); another user is not affected
    mallory = {"X-User": "mallory"}
    assert statuses_on_one_connection(web, "/login", mallory, 4) == [401] * 4  # one worker
    until(lambda: all(status(web, headers=mallory) == 403 for _ in range(8)), "the ban")
    assert status(web, headers={"X-User": "alice"}) == 200
    bans = json.loads(admin(proxy, "GET", "/api/bans").body)
    assert [(b["listener"], b["key"], b["rule"]) for b in bans] == [("web", "mallory", "guessing")]
    assert 3500 < bans[0]["expires_in"] <= 3600
    until(lambda: metric(proxy, "portico_bans_total", rule="guessing") == 1, "ban metric")
    assert admin(proxy, "DELETE", "/api/bans/web/mallory").status == 200
    until(lambda: all(status(web, headers=mallory) == 200 for _ in range(8)), "the ban lifted")

    # max_conns: 2 open connections in a worker; the next waits in the backlog, not reset
    check_max_conns(capped, workers=2)
    until(lambda: metric(proxy, "portico_accept_paused_total") >= 1, "the pause is counted")


def statuses_on_one_connection(
    port: int, target: str, headers: dict[str, str], n: int
) -> list[int]:
    head = f"GET {target} HTTP/1.1\r\nHost: t\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = ResponseReader(sock)
        for _ in range(n):
            sock.sendall(head.encode() + b"\r\n")
            out.append(reader.read().status)
    return out


def check_max_conns(port: int, workers: int) -> None:
    """Each worker accepts on its own socket (SO_REUSEPORT): connections fill the workers in
    the order the kernel's hash gives them, and one that reaches a worker at max_conns (2)
    waits in that worker's backlog. Once every worker is full the next one must wait, so a
    waiting connection comes after at most 2 * workers answered ones."""
    request = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
    held = []
    waiting = None
    for _ in range(2 * workers + 1):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(request)
        if not select.select([sock], [], [], 5.0)[0]:
            waiting = sock  # not accepted, not reset: in the backlog
            break
        assert ResponseReader(sock).read().status == 200
        held.append(sock)  # open, idle: holds a slot
    assert waiting is not None, f"{len(held)} connections answered past max_conns"
    for sock in held:
        sock.close()
    waiting.settimeout(10)
    assert ResponseReader(waiting).read().status == 200  # accepted once a slot freed
    waiting.close()


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


def test_redis_shares_entries_and_ban_counts_between_instances(backends, redis, tmp_path) -> None:
    """One call denies an address on every instance; a ban rule counts across instances."""

    def handler(seen: Seen) -> Reply:
        return Reply(status=429 if seen.target.startswith("/api") else 200)

    config = (
        "workers: 1\n"
        f"state: {{redis: '{redis.url}', timeout: 200ms}}\n"
        "listeners:\n"
        "  - name: web\n"
        "    bind: 127.0.0.1:0\n"
        "    default_pool: app\n"
        "    bans: [{key: client_ip, status: 4xx, count: 2, window: 1m, duration: 10m}]\n"
        f"admin: {{bind: 127.0.0.1:0, token: {TOKEN}}}\n"
        "pools:\n  app:\n    servers:\n" + pool_yaml([backends("b", handler)])
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with Portico(config, tmp_path / "a") as a, Portico(config, tmp_path / "b") as b:
        assert admin(a, "POST", "/api/access", {"address": "127.0.0.2"}).status == 201
        until(lambda: status(b.port, source="127.0.0.2") is None, "the entry on instance b")
        assert admin(b, "DELETE", "/api/access/*/127.0.0.2%2F32").status == 200
        until(lambda: status(a.port, source="127.0.0.2") == 200, "the removal on instance a")
        # 3 answers of 4xx to 127.0.0.3, spread over both instances: banned on both
        got = [status(port, "/api", source="127.0.0.3") for port in (a.port, b.port, a.port)]
        assert got == [429, 429, 429]
        for port in (a.port, b.port):
            until(lambda port=port: status(port, source="127.0.0.3") is None, "the ban")
        assert status(a.port, source="127.0.0.4") == 200
        bans = json.loads(admin(b, "GET", "/api/bans").body)
        assert [(x["listener"], x["key"]) for x in bans] == [("web", "127.0.0.3")]
