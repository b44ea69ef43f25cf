"""Layer 7 routing end to end: rules pick the pool, actions rewrite, redirect or answer."""

from __future__ import annotations

import subprocess
import sys

from fakes import FakeBackend, Reply, ResponseReader, connect, pool_yaml, request


def _config(app: FakeBackend, video: FakeBackend, billing: FakeBackend, routes: str) -> str:
    return (
        "workers: 1\n"
        "listeners:\n"
        "  - name: web\n"
        "    bind: 127.0.0.1:0\n"
        "    default_pool: app\n"
        "    routes:\n" + routes + "pools:\n"
        "  app:\n    servers:\n" + pool_yaml([app]) + "  video:\n    servers:\n"
        "" + pool_yaml([video]) + "  billing:\n    servers:\n" + pool_yaml([billing])
    )


EXAMPLE = """\
      - name: video-path
        match: {path: /video/}
        pool: video
      - name: video-host
        match: {host: video.example.com}
        pool: video
      - name: billing
        match: {path_prefix: /billing/}
        pool: billing
        strip_prefix: /billing
        request_headers: {set: {X-Route: billing}, remove: [X-Drop]}
        response_headers: {set: {X-Served-By: portico}, remove: [X-Backend]}
      - name: old
        match: {path_exact: /old}
        redirect: {status: 308, to: "https://{host}/new{query}"}
      - name: maintenance
        match: {path_prefix: /down/, method: [GET, HEAD]}
        respond: {status: 503, body: "down for maintenance\\n"}
      - name: canary
        match: {headers: {X-Canary: "1"}, cookies: {beta: "yes"}}
        pool: billing
"""


def test_the_issue_example_routes_video_billing_and_the_rest(backends, portico) -> None:
    app, video, billing = backends("app"), backends("video"), backends("billing")
    proxy = portico(_config(app, video, billing, EXAMPLE))
    assert request(proxy.port, target="/video/clip.mp4").header("X-Backend") == "video"
    host = {"Host": "video.example.com:8080"}
    assert request(proxy.port, target="/", headers=host).header("X-Backend") == "video"
    assert request(proxy.port, target="/videos").header("X-Backend") == "app"
    assert request(proxy.port, target="/").header("X-Backend") == "app"
    billed = request(proxy.port, target="/billing/invoice?id=7", headers={"X-Drop": "1"})
    assert billed.status == 200
    assert billed.header("X-Backend") is None  # removed by the route's response edits
    assert billed.header("X-Served-By") == "portico"
    seen = billing.seen[-1]
    assert seen.target == "/invoice?id=7"  # prefix stripped, query kept
    assert seen.header("X-Route") == "billing"
    assert seen.header("X-Drop") is None


def test_redirect_and_fixed_response_routes_answer_without_a_backend(backends, portico) -> None:
    app, video, billing = backends("app"), backends("video"), backends("billing")
    proxy = portico(_config(app, video, billing, EXAMPLE))
    with connect(proxy.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(b"GET /old?x=1 HTTP/1.1\r\nHost: shop.example.com\r\n\r\n")
        moved = reader.read()
        sock.sendall(b"GET /down/page HTTP/1.1\r\nHost: shop.example.com\r\n\r\n")
        down = reader.read()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: shop.example.com\r\n\r\n")
        after = reader.read()  # the keep-alive connection is still usable
    assert moved.status == 308
    assert moved.header("Location") == "https://shop.example.com/new?x=1"
    assert down.status == 503
    assert down.body == b"down for maintenance\n"
    assert after.status == 200
    assert [s.target for s in app.seen] == ["/"]
    assert video.seen == []
    assert billing.seen == []


def test_all_conditions_of_a_rule_must_hold(backends, portico) -> None:
    app, video, billing = backends("app"), backends("video"), backends("billing")
    proxy = portico(_config(app, video, billing, EXAMPLE))
    both = {"X-Canary": "1", "Cookie": "a=b; beta=yes"}
    assert request(proxy.port, headers=both).header("X-Backend") == "billing"
    assert request(proxy.port, headers={"X-Canary": "1"}).header("X-Backend") == "app"
    assert request(proxy.port, headers={"Cookie": "beta=yes"}).header("X-Backend") == "app"


def test_a_route_timeout_overrides_the_pool_timeout(backends, portico) -> None:
    slow = backends("slow", lambda seen: Reply(body=b"late", delay=1.0))
    fast_route = """\
      - match: {path_prefix: /quick/}
        pool: video
        timeouts: {read: 200ms}
"""
    proxy = portico(_config(backends("app"), slow, backends("billing"), fast_route))
    assert request(proxy.port, target="/quick/x").status == 504


def test_a_rule_that_cannot_compile_is_a_config_error_with_its_key_path(tmp_path) -> None:
    path = tmp_path / "portico.yaml"
    path.write_text(
        "listeners:\n"
        "  - name: web\n"
        "    bind: 127.0.0.1:0\n"
        "    default_pool: app\n"
        "    routes:\n"
        "      - match: {path_regex: '^/v[0-9+/'}\n"
        "        pool: app\n"
        "      - match: {path: /x/}\n"
        "        pool: nowhere\n"
        "pools:\n"
        "  app:\n"
        "    servers:\n"
        "      - address: 127.0.0.1:9\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "portico", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "listeners[0].routes[0].match.path_regex" in done.stderr
    assert "not a valid regex" in done.stderr


def test_proxy_header_from_a_trusted_peer_gives_the_real_client_address(backends, portico) -> None:
    from conftest import simple_config
    from fakes import read_until_closed

    b = backends("b")
    proxy = portico(
        simple_config([b], extra_listener="    proxy_protocol: {trusted: [127.0.0.0/8]}\n")
    )
    with connect(proxy.port) as sock:
        sock.sendall(
            b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 80\r\nGET /real HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert ResponseReader(sock).read().status == 200
    assert b.seen[0].header("X-Forwarded-For") == "203.0.113.7"
    with connect(proxy.port) as sock:  # a malformed header: dropped, nothing forwarded
        sock.sendall(b"PROXY TCP4 999.0.0.1 x\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_until_closed(sock) == b""
    assert len(b.seen) == 1


def test_proxy_header_from_an_untrusted_peer_is_refused(backends, portico) -> None:
    from conftest import simple_config
    from fakes import read_until_closed

    b = backends("b")
    proxy = portico(simple_config([b]))  # no trusted peers
    with connect(proxy.port) as sock:
        sock.sendall(
            b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 80\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b.seen == []


def test_http_pool_sends_a_proxy_header_on_connections_of_their_own(portico) -> None:
    import socket
    import threading

    heads: list[bytes] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def serve() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data.split(b"\r\n", 1)[-1]:
                    data += conn.recv(4096)
                heads.append(data)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                conn.recv(1)  # until Portico closes it: the connection is never reused

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    proxy = portico(
        "workers: 1\nlisteners:\n  - name: web\n    bind: 127.0.0.1:0\n    default_pool: app\n"
        "pools:\n  app:\n    proxy_protocol: v1\n    servers:\n"
        f"      - address: 127.0.0.1:{port}\n"
    )
    with connect(proxy.port) as sock:
        reader = ResponseReader(sock)
        for _ in range(2):  # one client connection, two requests: two server connections
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert reader.read().status == 200
    thread.join(10)
    server.close()
    assert len(heads) == 2
    for head in heads:
        assert head.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 ")
        assert b"\r\nGET / HTTP/1.1\r\n" in head
