"""End-to-end HTTP semantics a proxy must get right (RFC 9110 §7.6, RFC 9112, RFC 7239).

The real `portico run` in front of FakeBackends; every request is written byte by byte on a
plain socket so that framing, hop-by-hop headers and connection reuse are what is tested.
"""

from __future__ import annotations

import os
import socket

from conftest import simple_config
from fakes import FakeBackend, Reply, ResponseReader, Seen, connect, pool_yaml, read_until_closed

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"}
FORWARDING = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"}
SOCKET_TIMEOUT = 5.0

Headers = list[tuple[str, str]]


def open_client(port: int) -> socket.socket:
    return connect(port, timeout=SOCKET_TIMEOUT)


def get(target: str = "/", *, host: str = "app.example", extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def parse_head(data: bytes) -> tuple[int, Headers, bytes]:
    """Status, headers and the bytes after the head of a raw response."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data[:300]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return status, headers, rest


def read_head(sock: socket.socket) -> tuple[int, Headers, bytes]:
    """Read one response head only (for HEAD, whose head a generic parser cannot frame)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed inside a response head: {data!r}")
        data += chunk
    return parse_head(data)


def names(headers: Headers) -> set[str]:
    return {name.lower() for name, _ in headers}


def value(headers: Headers, name: str) -> str | None:
    for key, val in headers:
        if key.lower() == name.lower():
            return val
    return None


def only(headers: Headers, wanted: set[str]) -> Headers:
    """The fields named in `wanted` (lower-case), in their order."""
    return [(k, v) for k, v in headers if k.lower() in wanted]


def echo_target(seen: Seen) -> Reply:
    return Reply(body=seen.target.encode())


def assert_usable(sock: socket.socket, reader: ResponseReader, target: str = "/next") -> None:
    """The client connection still carries a request and its response."""
    sock.sendall(get(target))
    response = reader.read()
    assert response.status == 200
    assert response.body == target.encode()


# -- hop-by-hop and end-to-end headers ---------------------------------------------------------


def test_hop_by_hop_request_headers_never_reach_the_backend(backends, portico) -> None:
    b = backends("b", echo_target)
    proxy = portico(simple_config([b]))
    with open_client(proxy.port) as sock:
        sock.sendall(
            get(
                "/hop",
                extra=(
                    "Connection: keep-alive, X-Secret, x-other\r\n"
                    "X-Secret: s\r\n"
                    "Keep-Alive: timeout=5\r\n"
                    "Proxy-Connection: keep-alive\r\n"
                    "TE: trailers\r\n"
                    "Trailer: X-Checksum\r\n"
                    "X-Other: o\r\n"
                    "X-Kept: k\r\n"
                ),
            )
        )
        reader = ResponseReader(sock)
        assert reader.read().status == 200
        assert_usable(sock, reader)
    seen = b.seen[0]
    assert not names(seen.headers) & (HOP_BY_HOP | {"x-secret", "x-other"})
    assert seen.header("X-Kept") == "k"


def test_end_to_end_request_headers_reach_the_backend_unchanged_in_order(backends, portico) -> None:
    b = backends("b", echo_target)
    proxy = portico(simple_config([b]))
    sent = [
        ("Host", "app.example"),
        ("X-A", "1"),
        ("X-Dup", "one"),
        ("accept", "*/*"),
        ("X-Dup", "two"),
        ("Cookie", "a=1"),
        ("User-Agent", "test/1.0 (x; y)"),
        ("Cookie", "b=2"),
        ("X-Empty", ""),
    ]
    head = "GET /p/a%20b?q=1&r=two HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in sent)
    with open_client(proxy.port) as sock:
        sock.sendall(head.encode() + b"\r\n")
        assert ResponseReader(sock).read().status == 200
    seen = b.seen[0]
    assert (seen.method, seen.target, seen.version) == ("GET", "/p/a%20b?q=1&r=two", "1.1")
    assert [(k, v) for k, v in seen.headers if k.lower() not in FORWARDING] == sent


def test_hop_by_hop_response_headers_never_reach_the_client(backends, portico) -> None:
    def handler(seen: Seen) -> Reply:
        return Reply(
            body=seen.target.encode(),
            headers=[
                ("Connection", "X-Private, x-internal"),
                ("X-Private", "secret"),
                ("Keep-Alive", "timeout=5, max=100"),
                ("Proxy-Connection", "keep-alive"),
                ("Trailer", "X-Checksum"),
                ("Upgrade", "h2c"),
                ("TE", "trailers"),
                ("X-Internal", "i"),
                ("X-Kept", "k"),
            ],
        )

    b = backends("b", handler)
    proxy = portico(simple_config([b]))
    with open_client(proxy.port) as sock:
        sock.sendall(get("/first"))
        reader = ResponseReader(sock)
        response = reader.read()
        assert response.status == 200
        assert response.body == b"/first"
        assert not names(response.headers) & (HOP_BY_HOP | {"x-private", "x-internal"})
        assert response.header("X-Kept") == "k"
        assert_usable(sock, reader)


def test_end_to_end_response_headers_reach_the_client_unchanged_in_order(backends, portico) -> None:
    sent = [
        ("Set-Cookie", "a=1; Path=/"),
        ("cache-control", "no-store"),
        ("X-Dup", "one"),
        ("Set-Cookie", "b=2; HttpOnly"),
        ("X-Dup", "two"),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("ETag", '"v1"'),
    ]
    b = backends("b", lambda seen: Reply(body=b"hello", headers=sent))
    proxy = portico(simple_config([b]))
    with open_client(proxy.port) as sock:
        sock.sendall(get())
        response = ResponseReader(sock).read()
    assert response.status == 200
    assert response.body == b"hello"
    assert only(response.headers, {k.lower() for k, _ in sent}) == sent
    assert response.header("X-Backend") == "b"


def test_backend_connection_close_is_not_passed_to_the_client(backends, portico) -> None:
    b = backends("b", lambda seen: Reply(body=seen.target.encode(), keep_alive=False))
    proxy = portico(simple_config([b]))
    with open_client(proxy.port) as sock:
        sock.sendall(get("/one"))
        reader = ResponseReader(sock)
        response = reader.read()
        assert response.body == b"/one"
        assert response.header("Connection") is None
        assert_usable(sock, reader)
    assert b.connections == 2  # the closed backend connection was not reused


def test_http_1_1_client_connection_close_is_honoured(backends, portico) -> None:
    b = backends("b", echo_target)
    proxy = portico(simple_config([b]))
    with open_client(proxy.port) as sock:
        sock.sendall(get("/bye", extra="Connection: close\r\n"))
        status, headers, body = parse_head(read_until_closed(sock))
    assert status == 200
    assert body == b"/bye"
    assert (value(headers, "Connection") or "").lower() == "close"
    assert b.seen[0].header("Connection") is None


# -- forwarding headers ------------------------------------------------------------------------


def test_forwarding_headers_tell_the_backend_about_the_client(backends, portico) -> None:
    b = backends("b")
    proxy = portico(simple_config([b]))
    with open_client(proxy.port) as sock:
        sock.sendall(get(host="app.example"))
        assert ResponseReader(sock).read().status == 200
    seen = b.seen[0]
    assert seen.all("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.all("X-Forwarded-Proto") == ["http"]
    assert seen.all("X-Forwarded-Host") == ["app.example"]
    assert seen.all("Forwarded") == ["for=127.0.0.1;proto=http;host=app.example"]


def test_this_hop_is_appended_to_the_clients_forwarding_lists(backends, portico) -> None:
    b = backends("b")
    proxy = portico(simple_config([b]))
    with open_client(proxy.port) as sock:
        sock.sendall(
            get(
                extra=(
                    "X-Forwarded-For: 203.0.113.7\r\n"
                    "Forwarded: for=198.51.100.1\r\n"
                    "X-Forwarded-For: 198.51.100.2\r\n"
                )
            )
        )
        assert ResponseReader(sock).read().status == 200
    seen = b.seen[0]
    assert seen.all("X-Forwarded-For") == ["203.0.113.7, 198.51.100.2, 127.0.0.1"]
    assert seen.all("Forwarded") == ["for=198.51.100.1, for=127.0.0.1;proto=http;host=app.example"]


def test_client_claimed_proto_and_host_are_replaced_not_passed(backends, portico) -> None:
    b = backends("b")
    proxy = portico(simple_config([b]))
    with open_client(proxy.port) as sock:
        sock.sendall(
            get(
                host="app.example",
                extra="X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n",
            )
        )
        assert ResponseReader(sock).read().status == 200
    seen = b.seen[0]
    assert seen.all("X-Forwarded-Proto") == ["http"]
    assert seen.all("X-Forwarded-Host") == ["app.example"]


def test_forwarded_host_with_a_port_is_a_quoted_string(backends, portico) -> None:
    b = backends("b")
    proxy = portico(simple_config([b]))
    with open_client(proxy.port) as sock:
        sock.sendall(get(host="app.example:8080"))
        assert ResponseReader(sock).read().status == 200
    seen = b.seen[0]
    assert seen.all("Forwarded") == ['for=127.0.0.1;proto=http;host="app.example:8080"']
    assert seen.all("X-Forwarded-Host") == ["app.example:8080"]


def test_forwarding_off_passes_the_clients_headers_untouched_and_adds_none(
    backends, portico
) -> None:
    b = backends("b")
    proxy = portico(
        simple_config([b], extra_listener="    forwarded: {x_forwarded: false, forwarded: false}\n")
    )
    claimed = [
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("Forwarded", "for=198.51.100.1;proto=https"),
    ]
    with open_client(proxy.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(get(extra="".join(f"{k}: {v}\r\n" for k, v in claimed)))
        assert reader.read().status == 200
        sock.sendall(get("/plain"))
        assert reader.read().status == 200
    with_claims, plain = b.seen
    assert only(with_claims.headers, FORWARDING) == claimed
    assert only(plain.headers, FORWARDING) == []


# -- hide_headers ------------------------------------------------------------------------------


def test_hide_headers_removes_them_from_responses_case_insensitively(backends, portico) -> None:
    reply = Reply(
        body=b"ok",
        headers=[
            ("server", "fake/1.0"),
            ("X-POWERED-BY", "php/8"),
            ("Server", "again"),
            ("X-Powered-By-Other", "kept"),
            ("Content-Type", "text/plain"),
        ],
    )
    b = backends("b", lambda seen: reply)
    proxy = portico(simple_config([b], extra_pool="    hide_headers: [Server, X-Powered-By]\n"))
    with open_client(proxy.port) as sock:
        sock.sendall(get())
        response = ResponseReader(sock).read()
    assert response.body == b"ok"
    assert not names(response.headers) & {"server", "x-powered-by"}
    assert response.header("X-Powered-By-Other") == "kept"
    assert response.header("Content-Type") == "text/plain"


# -- responses without a body ------------------------------------------------------------------


def test_head_response_has_content_length_but_no_body_and_keeps_the_connection(
    backends, portico
) -> None:
    body = b"x" * 1234
    b = backends(
        "b", lambda seen: Reply(body=body if seen.method == "HEAD" else seen.target.encode())
    )
    proxy = portico(simple_config([b]))
    with open_client(proxy.port) as sock:
        sock.sendall(b"HEAD /h HTTP/1.1\r\nHost: app.example\r\n\r\n")
        status, headers, rest = read_head(sock)
        assert status == 200
        assert value(headers, "Content-Length") == "1234"
        assert value(headers, "Transfer-Encoding") is None
        assert rest == b""
        # any body bytes sent after the head would be read as the start of the next response
        reader = ResponseReader(sock)
        assert_usable(sock, reader)
    assert [s.method for s in b.seen] == ["HEAD", "GET"]


def test_head_answered_by_portico_itself_has_no_body_and_keeps_the_connection(
    backends, portico
) -> None:
    # Portico's own answers (here a 502) follow HEAD's rule too: the length, never the body
    b = backends("b", echo_target)
    with socket.socket() as refusing:  # bound, never listening: a connect to it is refused
        refusing.bind(("127.0.0.1", 0))
        config = (
            "workers: 1\nlisteners:\n  - name: web\n    bind: 127.0.0.1:0\n"
            "    default_pool: app\n    routes:\n      - name: gone\n"
            "        match: {path_prefix: /gone/}\n        pool: gone\n"
            "pools:\n  app:\n    servers:\n" + pool_yaml([b]) + "  gone:\n    retries: 0\n"
            f"    servers:\n      - address: 127.0.0.1:{refusing.getsockname()[1]}\n"
        )
        proxy = portico(config)
        with open_client(proxy.port) as sock:
            sock.sendall(b"HEAD /gone/x HTTP/1.1\r\nHost: app.example\r\n\r\n")
            status, headers, rest = read_head(sock)
            assert status == 502
            assert int(value(headers, "Content-Length") or 0) > 0
            assert rest == b""
            assert_usable(sock, ResponseReader(sock))


def test_head_to_a_chunked_backend_response_has_no_body_and_keeps_the_connection(
    backends, portico
) -> None:
    b = backends("b", lambda seen: Reply(body=seen.target.encode(), framing="chunked"))
    proxy = portico(simple_config([b]))
    with open_client(proxy.port) as sock:
        sock.sendall(b"HEAD /h HTTP/1.1\r\nHost: app.example\r\n\r\n")
        status, _, rest = read_head(sock)
        assert status == 200
        assert rest == b""
        assert_usable(sock, ResponseReader(sock))


def test_204_has_no_body_and_the_connection_stays_usable(backends, portico) -> None:
    def handler(seen: Seen) -> Reply:
        if seen.target == "/empty":
            return Reply(status=204, reason="No Content", framing="none")
        return echo_target(seen)

    b = backends("b", handler)
    proxy = portico(simple_config([b]))
    with open_client(proxy.port) as sock:
        sock.sendall(get("/empty"))
        reader = ResponseReader(sock)
        response = reader.read()
        assert response.status == 204
        assert response.body == b""
        assert response.header("Transfer-Encoding") is None
        assert response.header("Connection") is None
        assert_usable(sock, reader)
    assert b.connections == 1


def test_204_response_carries_no_content_length(backends, portico) -> None:
    # RFC 9110 §8.6: no Content-Length in a 204, even when the server wrongly sent one
    def handler(seen: Seen) -> Reply:
        if seen.target == "/empty":
            return Reply(status=204, reason="No Content")  # FakeBackend adds Content-Length: 0
        return echo_target(seen)

    b = backends("b", handler)
    proxy = portico(simple_config([b]))
    with open_client(proxy.port) as sock:
        sock.sendall(get("/empty"))
        reader = ResponseReader(sock)
        response = reader.read()
        assert response.status == 204
        assert response.header("Content-Length") is None
        assert_usable(sock, reader)


def test_304_has_no_body_and_the_connection_stays_usable(backends, portico) -> None:
    def handler(seen: Seen) -> Reply:
        if seen.target == "/cached":
            # Content-Length: 50 describes the selected representation; no body follows
            return Reply(
                status=304, reason="Not Modified", body=b"x" * 50, headers=[("ETag", '"v1"')]
            )
        return echo_target(seen)

    b = backends("b", handler)
    proxy = portico(simple_config([b]))
    with open_client(proxy.port) as sock:
        sock.sendall(get("/cached", extra='If-None-Match: "v1"\r\n'))
        reader = ResponseReader(sock)
        response = reader.read()
        assert response.status == 304
        assert response.body == b""
        assert response.header("ETag") == '"v1"'
        assert response.header("Transfer-Encoding") is None
        assert response.header("Content-Length") in (None, "50")
        assert_usable(sock, reader)
    assert b.connections == 1


# -- Expect: 100-continue ----------------------------------------------------------------------


def echo_body(seen: Seen) -> Reply:
    """The body's size for a request with a body; the target for a GET."""
    if seen.method == "GET":
        return echo_target(seen)
    return Reply(body=b"got %d" % len(seen.body))


def test_expect_100_continue_relays_the_backends_100_before_the_body(backends, portico) -> None:
    b = backends("b", echo_body)
    b.continue_on_expect = True
    proxy = portico(simple_config([b]))
    body = os.urandom(100_000)
    with open_client(proxy.port) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: app.example\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        reader = ResponseReader(sock)
        interim = reader.read()  # nothing of the body has been sent yet
        assert interim.status == 100
        assert b.seen == []
        sock.sendall(body)
        final = reader.read()
        assert final.status == 200
        assert final.body == b"got %d" % len(body)
        assert_usable(sock, reader)
    assert b.seen[0].body == body


def test_interim_responses_are_not_sent_to_http_1_0_clients(backends, portico) -> None:
    # RFC 9110 §15.2: a server must not send a 1xx response to an HTTP/1.0 client
    b = backends("b", echo_body)
    b.continue_on_expect = True
    proxy = portico(simple_config([b]))
    with open_client(proxy.port) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.0\r\nHost: app.example\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5\r\n\r\nhello"
        )
        data = read_until_closed(sock)
    status, _, body = parse_head(data)
    assert status == 200
    assert body == b"got 5"
    assert b"100 Continue" not in data


# -- HTTP/1.0 clients --------------------------------------------------------------------------


def test_http_1_0_client_connection_is_closed_after_the_response(backends, portico) -> None:
    b = backends("b", echo_target)
    proxy = portico(simple_config([b]))
    with open_client(proxy.port) as sock:
        sock.sendall(b"GET /old HTTP/1.0\r\nHost: app.example\r\n\r\n")
        data = read_until_closed(sock)  # returns only once the proxy closed the connection
    status, headers, body = parse_head(data)
    assert status == 200
    assert body == b"/old"
    assert (value(headers, "Connection") or "close").lower() == "close"
    assert b.seen[0].version == "1.1"
    assert b.seen[0].header("Connection") is None


def test_http_1_0_request_without_host_reaches_the_backend_with_a_host(backends, portico) -> None:
    # the proxy speaks HTTP/1.1 to the backend, which requires Host (RFC 9112 §3.2)
    b = backends("b", echo_target)
    proxy = portico(simple_config([b]))
    with open_client(proxy.port) as sock:
        sock.sendall(b"GET /nohost HTTP/1.0\r\n\r\n")
        status, _, body = parse_head(read_until_closed(sock))
    assert status == 200
    assert body == b"/nohost"
    assert len(b.seen[0].all("Host")) == 1


def test_http_1_0_keep_alive_is_honoured_for_a_length_delimited_response(backends, portico) -> None:
    b = backends("b", echo_target)
    proxy = portico(simple_config([b]))
    with open_client(proxy.port) as sock:
        reader = ResponseReader(sock)
        for target in ("/a", "/b"):
            head = f"GET {target} HTTP/1.0\r\nHost: app.example\r\nConnection: keep-alive\r\n"
            sock.sendall(head.encode() + b"\r\n")
            response = reader.read()
            assert response.status == 200
            assert response.body == target.encode()
            assert response.header("Content-Length") == str(len(target))
            assert (response.header("Connection") or "").lower() == "keep-alive"
    assert [s.target for s in b.seen] == ["/a", "/b"]
    assert b.seen[0].header("Connection") is None


def test_http_1_0_keep_alive_is_announced_on_portico_s_own_answers(backends, portico) -> None:
    # an HTTP/1.0 client keeps a connection only when the answer says keep-alive (RFC 9112
    # §9.3): a route's fixed answer on a kept connection must say so, as a server's does
    b = backends("b", echo_target)
    config = (
        "workers: 1\nlisteners:\n  - name: web\n    bind: 127.0.0.1:0\n"
        "    default_pool: app\n    routes:\n      - match: {path_prefix: /down/}\n"
        "        respond: {status: 503, body: 'back soon'}\n"
        "pools:\n  app:\n    servers:\n" + pool_yaml([b])
    )
    proxy = portico(config)
    with open_client(proxy.port) as sock:
        reader = ResponseReader(sock)
        for target in ("/down/a", "/down/b", "/up"):
            head = f"GET {target} HTTP/1.0\r\nHost: app.example\r\nConnection: keep-alive\r\n"
            sock.sendall(head.encode() + b"\r\n")
            response = reader.read()
            assert response.status == (200 if target == "/up" else 503)
            assert (response.header("Connection") or "").lower() == "keep-alive"


def test_chunked_backend_response_reaches_an_http_1_0_client_de_chunked_and_close_delimited(
    backends, portico
) -> None:
    chunks = [b"hello ", b"chunked ", os.urandom(70_000), b" world"]
    b = backends("b", lambda seen: Reply(body=chunks, framing="chunked"))
    proxy = portico(simple_config([b]))
    with open_client(proxy.port) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: app.example\r\nConnection: keep-alive\r\n\r\n")
        data = read_until_closed(sock)  # the body ends only when the proxy closes
    status, headers, body = parse_head(data)
    assert status == 200
    assert value(headers, "Transfer-Encoding") is None
    assert value(headers, "Content-Length") is None
    assert (value(headers, "Connection") or "").lower() == "close"
    assert body == b"".join(chunks)


# -- re-framing responses for HTTP/1.1 clients -------------------------------------------------


def test_chunked_backend_response_reaches_the_client_chunked_intact_with_its_trailers(
    backends, portico
) -> None:
    chunks = [b"first ", os.urandom(100_000), b"", b" last"]
    chunks = [c for c in chunks if c]  # an empty chunk would end the body

    def handler(seen: Seen) -> Reply:
        if seen.target == "/next":
            return echo_target(seen)
        return Reply(
            body=chunks,
            framing="chunked",
            headers=[("Trailer", "X-Checksum")],
            trailers=[("X-Checksum", "abc123"), ("Set-Cookie", "smuggled=1")],
        )

    b = backends("b", handler)
    proxy = portico(simple_config([b]))
    with open_client(proxy.port) as sock:
        sock.sendall(get("/stream"))
        reader = ResponseReader(sock)
        response = reader.read()  # strict llhttp: the chunked framing must be valid
        assert response.status == 200
        assert response.header("Transfer-Encoding") == "chunked"
        assert response.header("Content-Length") is None
        assert response.body == b"".join(chunks)
        # trailer fields are parsed into the header list after the body: the checksum came
        # through; a field a trailer may not carry (RFC 9110 §6.5.1) did not
        assert response.header("X-Checksum") == "abc123"
        assert response.header("Set-Cookie") is None
        assert response.header("Trailer") is None  # hop-by-hop, as the head's other framing
        assert_usable(sock, reader)


def test_close_delimited_backend_response_reaches_the_client_chunked_on_a_kept_connection(
    backends, portico
) -> None:
    payload = [b"no length ", os.urandom(50_000), b" until close"]

    def handler(seen: Seen) -> Reply:
        if seen.target == "/next":
            return echo_target(seen)
        return Reply(body=payload, framing="close")

    b = backends("b", handler)
    proxy = portico(simple_config([b]))
    with open_client(proxy.port) as sock:
        sock.sendall(get("/close-delimited"))
        reader = ResponseReader(sock)
        response = reader.read()
        assert response.status == 200
        assert response.header("Transfer-Encoding") == "chunked"
        assert response.header("Content-Length") is None
        assert response.header("Connection") is None
        assert response.body == b"".join(payload)
        assert_usable(sock, reader)


# -- request bodies ----------------------------------------------------------------------------


def test_content_length_request_body_arrives_intact_with_the_same_length(backends, portico) -> None:
    b = backends("b", echo_body)
    proxy = portico(simple_config([b]))
    small, large = b"name=value&x=1", os.urandom(1 << 20)
    with open_client(proxy.port) as sock:
        reader = ResponseReader(sock)
        for body in (small, large):
            sock.sendall(
                b"POST /form HTTP/1.1\r\nHost: app.example\r\nContent-Length: %d\r\n\r\n"
                % len(body)
                + body
            )
            response = reader.read()
            assert response.status == 200
            assert response.body == b"got %d" % len(body)
    for seen, body in zip(b.seen, (small, large), strict=True):
        assert seen.body == body
        assert seen.all("Content-Length") == [str(len(body))]
        assert seen.header("Transfer-Encoding") is None


def test_chunked_request_body_arrives_intact_and_chunked(backends, portico) -> None:
    b = backends("b", echo_body)
    proxy = portico(simple_config([b]))
    big = os.urandom(200_000)
    wire = [
        b"5;name=value\r\nhello\r\n",
        b"1;ext\r\n \r\n",
        b"A\r\n0123456789\r\n",
        b'%X;q="quoted"\r\n%s\r\n' % (len(big), big),
        b"0\r\n\r\n",
    ]
    expected = b"hello 0123456789" + big
    with open_client(proxy.port) as sock:
        sock.sendall(
            b"POST /chunks HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for piece in wire:
            sock.sendall(piece)
        reader = ResponseReader(sock)
        response = reader.read()
        assert response.status == 200
        assert response.body == b"got %d" % len(expected)
        sock.sendall(get("/next"))  # the chunked body ended where the client said
        assert reader.read().status == 200
    seen = b.seen[0]
    assert seen.body == expected
    assert seen.header("Transfer-Encoding") == "chunked"
    assert seen.header("Content-Length") is None
    assert [s.target for s in b.seen] == ["/chunks", "/next"]


# -- pipelining --------------------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order_each_by_its_own_response(
    backends, portico
) -> None:
    def slow_by(delay: float):  # type: ignore[no-untyped-def]
        def handler(seen: Seen) -> Reply:
            return Reply(body=f"{seen.target}:{seen.body.decode()}".encode(), delay=delay)

        return handler

    # round robin: /0 and /3 go to the slowest backend, /2 and /5... to the fastest
    pool = [
        backends("slow", slow_by(0.2)),
        backends("mid", slow_by(0.05)),
        backends("fast", slow_by(0)),
    ]
    proxy = portico(simple_config(pool))
    requests = [
        get("/0"),
        get("/1"),
        b"POST /2 HTTP/1.1\r\nHost: app.example\r\nContent-Length: 3\r\n\r\nabc",
        get("/3"),
        get("/4"),
    ]
    with open_client(proxy.port) as sock:
        sock.sendall(b"".join(requests))  # all five in one write
        reader = ResponseReader(sock)
        bodies = [reader.read().body for _ in requests]
    assert bodies == [b"/0:", b"/1:", b"/2:abc", b"/3:", b"/4:"]
    answered = {s.target: b.name for b in pool for s in b.seen}
    assert answered == {"/0": "slow", "/1": "mid", "/2": "fast", "/3": "slow", "/4": "mid"}


# -- keep-alive towards backends ---------------------------------------------------------------


def test_sequential_requests_reuse_one_backend_connection(backends, portico) -> None:
    b = backends("b", echo_target)
    proxy = portico(simple_config([b]))
    for i in range(10):
        with open_client(proxy.port) as sock:  # a new client connection each time
            sock.sendall(get(f"/{i}"))
            assert ResponseReader(sock).read().body == f"/{i}".encode()
    assert len(b.seen) == 10
    assert b.connections == 1


def test_max_idle_0_opens_a_backend_connection_per_request(backends, portico) -> None:
    b = backends("b", echo_target)
    proxy = portico(simple_config([b], extra_pool="    keepalive: {max_idle: 0}\n"))
    with open_client(proxy.port) as sock:
        reader = ResponseReader(sock)
        for i in range(5):
            sock.sendall(get(f"/{i}"))
            assert reader.read().body == f"/{i}".encode()
    assert b.connections == 5
    assert [s.connection for s in b.seen] == [1, 2, 3, 4, 5]


def test_max_requests_3_caps_the_requests_per_backend_connection(backends, portico) -> None:
    b = backends("b", echo_target)
    proxy = portico(simple_config([b], extra_pool="    keepalive: {max_requests: 3}\n"))
    with open_client(proxy.port) as sock:
        reader = ResponseReader(sock)
        for i in range(7):
            sock.sendall(get(f"/{i}"))
            assert reader.read().body == f"/{i}".encode()
    assert [s.connection for s in b.seen] == [1, 1, 1, 2, 2, 2, 3]


# -- balancing policies end to end -------------------------------------------------------------


def weighted_config(weighted: list[tuple[FakeBackend, int]], policy: str) -> str:
    servers = "".join(
        f"      - address: {b.address}\n        name: {b.name}\n        weight: {w}\n"
        for b, w in weighted
    )
    return simple_config([], policy=policy) + servers


def test_weighted_round_robin_5_1_1_gives_a_a_b_a_c_a_a(backends, portico) -> None:
    a, b, c = backends("a"), backends("b"), backends("c")
    proxy = portico(weighted_config([(a, 5), (b, 1), (c, 1)], "weighted_round_robin"))
    with open_client(proxy.port) as sock:
        reader = ResponseReader(sock)
        order = []
        for _ in range(14):
            sock.sendall(get())
            order.append(reader.read().header("X-Backend"))
    assert "".join(order) == "aabacaa" * 2


def test_consistent_hash_on_a_header_sends_each_user_to_one_backend(backends, portico) -> None:
    pool = [backends(f"b{i}") for i in range(3)]
    proxy = portico(
        simple_config(pool, policy="consistent_hash", extra_pool="    hash_key: header:X-User\n")
    )
    users = [f"user-{i}" for i in range(12)]
    chosen: dict[str, set[str]] = {user: set() for user in users}
    for _ in range(3):
        with open_client(proxy.port) as sock:
            reader = ResponseReader(sock)
            for user in users:
                sock.sendall(get(f"/{user}", extra=f"X-User: {user}\r\n"))
                chosen[user].add(reader.read().header("X-Backend") or "")
    assert all(len(backends_of) == 1 for backends_of in chosen.values()), chosen
    assert len(set().union(*chosen.values())) >= 2  # users are spread, not all on one backend


def test_ip_hash_sends_every_request_from_one_address_to_one_backend(backends, portico) -> None:
    pool = [backends(f"b{i}") for i in range(3)]
    proxy = portico(simple_config(pool, policy="ip_hash"))
    answered = set()
    for i in range(9):
        with open_client(proxy.port) as sock:
            sock.sendall(get(f"/{i}", extra=f"X-User: user-{i}\r\n"))
            answered.add(ResponseReader(sock).read().header("X-Backend"))
    assert len(answered) == 1
    assert sum(len(b.seen) for b in pool) == 9
