"""HTTP/2 to clients end to end: the real `portico run` with `http2` on its listeners, real
HTTP/2 clients (the `h2` library over plain and TLS sockets, and curl), real HTTP/1.1
FakeBackends.

What a user of an HTTP/2 listener would notice: ALPN and h2c prior knowledge pick HTTP/2 while
HTTP/1.1 still works on the same port; many streams on one connection reach every server as
plain HTTP/1.1 requests; bodies arrive whole both ways; one stalled stream does not stall the
others; a reset stream cancels its server request; Portico's own answers (errors, redirects)
arrive as HTTP/2 responses; abusive clients are cut off while others are served; a reload
drains an HTTP/2 connection with a GOAWAY and lets its streams finish; config mistakes are
reported at their key path.

Most tests share one Portico (per test worker) with several listeners, each test using its own
paths: starting Portico costs more than the tests themselves.
"""

from __future__ import annotations

import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from prometheus_client.parser import text_string_to_metric_families

from fakes import (
    FakeBackend,
    Portico,
    Reply,
    ResponseReader,
    Seen,
    connect,
    eventually,
    pool_yaml,
    request,
)
from h2client import (
    H2Client,
    goaway_of,
    read_frames_until_closed,
    send_all_quietly,
    tls_client_socket,
)

MakeBackend = Callable[..., FakeBackend]
MakePortico = Callable[[str], Portico]

SITE = "a.example.com"
TOKEN = "test-admin-token"
WAIT = 15.0
MiB = 1024 * 1024
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 §3.4


# -- certificates, clients, helpers ------------------------------------------------------------


def make_pki(directory: Path) -> dict[str, Any]:
    """A CA and one site certificate, as files Portico reads (as test_https.py's `pki`)."""
    ca = trustme.CA()
    cert = ca.issue_cert(SITE)
    chain, key, ca_file = directory / "a.pem", directory / "a.key", directory / "ca.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    ca_file.write_bytes(ca.cert_pem.bytes())
    return {"ca": ca, "chain": chain, "key": key, "ca_file": ca_file}


def tls_context(pki: dict[str, Any], alpn: list[str] | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    pki["ca"].configure_trust(context)
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    return context


def h2c(port: int, **options: Any) -> H2Client:
    """An h2c connection with prior knowledge."""
    return H2Client(connect(port), **options)


def h2s(port: int, pki: dict[str, Any], **options: Any) -> H2Client:
    """An HTTP/2 connection over TLS, after ALPN chose "h2"."""
    sock = tls_client_socket(port, tls_context(pki, ["h2", "http/1.1"]), SITE)
    assert sock.selected_alpn_protocol() == "h2"
    return H2Client(sock, scheme="https", authority=SITE, **options)


def pattern(size: int) -> bytes:
    """`size` bytes that are not all alike, the same every time for a size."""
    return random.Random(size).randbytes(size)


def seen_at(backend: FakeBackend, target: str) -> Seen:
    seen: Seen = eventually(
        lambda: next((s for s in backend.seen if s.target == target), None),
        f"{target} at {backend.name}",
    )
    return seen


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def special(seen: Seen) -> Reply:
    """The `special` server: /special/big?size=N answers N patterned bytes; a few paths
    answer in special ways; anything else is answered with the request body's length."""
    path, _, query = seen.target.partition("?")
    if path == "/special/big":
        return Reply(body=pattern(int(query.split("=")[1])))
    if path == "/special/early":
        return Reply(interim=[103], body=b"after hints")
    if path == "/special/trailers":
        trailers = [("Server-Timing", "db;dur=53"), ("X-Checksum", "abcdef")]
        return Reply(framing="chunked", body=[b"abc", b"def"], trailers=trailers)
    if path == "/special/forbidden-trailers":
        trailers = [("Set-Cookie", "late=1"), ("Cache-Control", "no-store")]
        return Reply(framing="chunked", body=[b"abc"], trailers=trailers)
    if path == "/special/empty":
        return Reply(status=204)
    return Reply(body=b"%d" % len(seen.body))


# -- the shared Portico ------------------------------------------------------------------------


@dataclass
class Shared:
    proxy: Portico
    ports: dict[str, int]  # listener name -> port
    admin: int
    app: list[FakeBackend]  # pool "app", round robin
    special: FakeBackend  # pool "special", under /special/
    hang: FakeBackend  # pool "hang", under /hang/: never answers
    pki: dict[str, Any]


def shared_config(
    app: list[FakeBackend], special: FakeBackend, hang: FakeBackend, pki: dict[str, Any]
) -> str:
    routes = (
        "    routes:\n"
        "      - match: {path_prefix: /special/}\n"
        "        pool: special\n"
        "      - match: {path_prefix: /hang/}\n"
        "        pool: hang\n"
        "      - match: {path_prefix: /gone/}\n"
        "        pool: gone\n"
        "      - match: {path_exact: /old}\n"
        '        redirect: {status: 308, to: "https://{host}/new{query}"}\n'
        "      - match: {path_prefix: /down/}\n"
        '        respond: {status: 503, body: "down for maintenance\\n"}\n'
        '      - match: {path_prefix: /beta/, cookies: {beta: "yes"}}\n'
        "        pool: special\n"
    )
    tls = (
        "    protocol: https\n"
        "    tls:\n"
        f"      certificates:\n        - {{cert: {pki['chain']}, key: {pki['key']}}}\n"
    )
    return (
        "workers: 1\n"
        f"admin:\n  bind: 127.0.0.1:0\n  token: {TOKEN}\n"
        "listeners:\n"
        # h2c with prior knowledge and HTTP/1.1 on one plain port
        "  - name: web\n    bind: 127.0.0.1:0\n    default_pool: app\n    http2: true\n"
        + routes
        # HTTP/2 over TLS (ALPN)
        + "  - name: secure\n    bind: 127.0.0.1:0\n    default_pool: app\n    http2: true\n"
        + routes
        + tls
        # TLS without HTTP/2, and with it switched off
        + "  - name: plain-tls\n    bind: 127.0.0.1:0\n    default_pool: app\n"
        + tls
        + "  - name: off-tls\n    bind: 127.0.0.1:0\n    default_pool: app\n"
        "    http2: {enabled: false}\n"
        + tls
        # tight limits
        + "  - name: strict\n    bind: 127.0.0.1:0\n    default_pool: special\n"
        "    http2: {max_concurrent_streams: 5}\n"
        "    limits: {max_body_size: 1KiB, max_headers: 10, max_request_line: 200}\n"
        # idle connections closed soon
        "  - name: idle\n    bind: 127.0.0.1:0\n    default_pool: special\n    http2: true\n"
        "    timeouts: {keepalive: 300ms}\n"
        # only the metric test's attack happens here
        "  - name: watched\n    bind: 127.0.0.1:0\n    default_pool: special\n    http2: true\n"
        "pools:\n"
        "  app:\n    policy: round_robin\n    servers:\n"
        + pool_yaml(app)
        + "  special:\n    servers:\n"
        + pool_yaml([special])
        + "  hang:\n    servers:\n"
        + pool_yaml([hang])
        + "  gone:\n    servers:\n"
        + f"      - address: 127.0.0.1:{free_port()}\n        name: gone\n"
    )


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    directory = tmp_path_factory.mktemp("h2shared")
    pki = make_pki(directory)
    app = [FakeBackend(name) for name in ("a", "b", "c")]
    spec = FakeBackend("special", special)
    hang = FakeBackend("hang", lambda seen: Reply(action="hang"))
    backends = [*app, spec, hang]
    try:
        proxy = Portico(shared_config(app, spec, hang, pki), directory)
    except BaseException:
        for backend in backends:
            backend.stop()
        raise
    listening = proxy.ready_line.split("; admin ")
    ports = {
        name: int(port) for name, port in re.findall(r"(\S+) https?://[\d.]+:(\d+)", listening[0])
    }
    admin = int(listening[1].rsplit(":", 1)[1])
    try:
        yield Shared(proxy, ports, admin, app, spec, hang, pki)
    finally:
        proxy.stop()
        for backend in backends:
            backend.stop()


# -- protocol selection ----------------------------------------------------------------------


def test_alpn_chooses_h2_and_http11_still_works_on_the_same_listener(shared: Shared) -> None:
    port, pki = shared.ports["secure"], shared.pki
    with h2s(port, pki) as client:
        response = client.get("/special/alpn-h2")
    assert response.status == 200
    assert response.header("x-backend") == "special"
    for offered, chosen, target in (
        (["http/1.1"], "http/1.1", "/special/alpn-h1"),
        (None, None, "/special/alpn-none"),
    ):
        with tls_client_socket(port, tls_context(pki, offered), SITE) as tls:
            assert tls.selected_alpn_protocol() == chosen
            tls.sendall(f"GET {target} HTTP/1.1\r\nHost: {SITE}\r\n\r\n".encode())
            answer = ResponseReader(tls).read()
            assert (answer.status, answer.version) == (200, "1.1")
    seen = seen_at(shared.special, "/special/alpn-h2")
    assert seen.version == "1.1"
    assert seen.header("X-Forwarded-Proto") == "https"
    assert seen.header("Host") == SITE


@pytest.mark.parametrize("listener", ["plain-tls", "off-tls"])
def test_without_http2_alpn_never_chooses_h2(shared: Shared, listener: str) -> None:
    port, pki = shared.ports[listener], shared.pki
    with tls_client_socket(port, tls_context(pki, ["h2", "http/1.1"]), SITE) as tls:
        assert tls.selected_alpn_protocol() == "http/1.1"
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {SITE}\r\n\r\n".encode())
        assert ResponseReader(tls).read().status == 200
    with tls_client_socket(port, tls_context(pki, ["h2"]), SITE) as tls:
        assert tls.selected_alpn_protocol() is None


def test_h2c_prior_knowledge_and_http11_on_the_same_plain_port(shared: Shared) -> None:
    port = shared.ports["web"]
    with h2c(port) as client:
        first = client.get("/special/h2c-1")
        second = client.get("/special/h2c-2")  # the connection stays open for more streams
    assert (first.status, second.status) == (200, 200)
    plain = request(port, target="/special/h2c-h1")
    assert (plain.status, plain.version) == (200, "1.1")
    seen = seen_at(shared.special, "/special/h2c-1")
    assert seen.version == "1.1"
    assert seen.header("X-Forwarded-Proto") == "http"
    assert seen.header("Host") == "test.local"
    seen_at(shared.special, "/special/h2c-h1")


class _SplitPrefaceClient(H2Client):
    """An H2Client whose connection preface goes out in three writes (which the server may
    read as they were written, or together)."""

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data.startswith(b"PRI * HTTP/2.0"):
            for piece in (data[:3], data[3:17]):
                self.sock.sendall(piece)
            data = data[17:]
        if data:
            self.sock.sendall(data)


def test_h2c_preface_in_pieces_is_still_http2(shared: Shared) -> None:
    sock = connect(shared.ports["web"])
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with _SplitPrefaceClient(sock) as client:
        assert client.get("/special/split").status == 200


def test_an_http11_request_that_starts_like_the_preface_is_still_http11(shared: Shared) -> None:
    # "PRI" is a method name to HTTP/1.1; anything but the whole preface is HTTP/1.x
    with connect(shared.ports["web"]) as sock:
        sock.sendall(b"PRI /special/pri HTTP/1.1\r\nHost: test.local\r\n\r\n")
        answer = ResponseReader(sock).read()
    assert answer.version == "1.1"


# -- many streams, headers as servers see them ---------------------------------------------


def test_an_http2_only_listener_answers_anything_else_with_goaway_protocol_error(
    backends: MakeBackend, portico: MakePortico, tmp_path: Path
) -> None:
    # RFC 9113 §3.4: an invalid connection preface is a connection error of type
    # PROTOCOL_ERROR; an HTTP/2 client can read a GOAWAY, not an HTTP/1.1 400
    pki = make_pki(tmp_path)
    app = backends("app")
    proxy = portico(
        "workers: 1\nlisteners:\n"
        "  - name: h2c\n    bind: 127.0.0.1:0\n    default_pool: app\n"
        "    http2: {only: true}\n"
        "  - name: h2s\n    bind: 127.0.0.1:0\n    default_pool: app\n"
        "    http2: {only: true}\n    protocol: https\n    tls:\n"
        f"      certificates:\n        - {{cert: {pki['chain']}, key: {pki['key']}}}\n"
        "pools:\n  app:\n    servers:\n" + pool_yaml([app])
    )
    plain, secure = proxy.ports
    with h2c(plain) as client:
        assert client.get("/prior-knowledge").header("x-backend") == "app"
    with h2s(secure, pki) as client:  # it offered h2 and http/1.1: h2 was chosen
        assert client.get("/alpn").header("x-backend") == "app"
    broken = [
        b"GET / HTTP/1.1\r\nHost: test.local\r\n\r\n",  # an HTTP/1.1 client
        PREFACE[:-4] + b"XX\r\n",  # a broken preface
    ]
    for data in broken:
        with connect(plain) as sock:
            sock.sendall(data)
            frames, _ = read_frames_until_closed(sock)
        goaway = goaway_of(frames)
        assert goaway is not None, frames
        assert goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    # over TLS, ALPN offers h2 alone: a client that wants only http/1.1 gets no protocol
    with tls_client_socket(secure, tls_context(pki, ["http/1.1"]), SITE) as tls:
        assert tls.selected_alpn_protocol() is None
        tls.sendall(broken[0])
        frames, _ = read_frames_until_closed(tls)
    goaway = goaway_of(frames)
    assert goaway is not None
    assert goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert [seen.target for seen in app.seen] == ["/prior-knowledge", "/alpn"]


def test_fifty_concurrent_streams_are_answered_and_spread_over_three_servers(
    shared: Shared,
) -> None:
    run = uuid.uuid4().hex
    with h2s(shared.ports["secure"], shared.pki) as client:
        ids = [
            client.request(
                "GET",
                f"/many/{index}?run={run}",
                headers=[("cookie", "a=1"), ("accept", "*/*"), ("cookie", f"n={index}")],
            )
            for index in range(50)
        ]
        responses = [client.response(stream_id) for stream_id in ids]
    assert [r.status for r in responses] == [200] * 50
    answered = Counter(r.header("x-backend") for r in responses)
    assert set(answered) == {"a", "b", "c"}
    assert max(answered.values()) - min(answered.values()) <= 1  # round robin
    for response in responses:  # each body is its server's name
        assert bytes(response.body) == (response.header("x-backend") or "").encode()
    mine = [s for b in shared.app for s in b.seen if s.target.endswith(f"?run={run}")]
    assert len(mine) == 50
    for seen in mine:
        index = seen.target.split("/")[2].split("?")[0]
        assert seen.version == "1.1"
        assert seen.all("Host") == [SITE]
        assert seen.header("X-Forwarded-Proto") == "https"
        assert seen.all("Cookie") == [f"a=1; n={index}"]
        assert seen.header("Accept") == "*/*"


def test_cookie_crumbs_are_joined_before_routing(shared: Shared) -> None:
    with h2c(shared.ports["web"]) as client:
        # h2 sends "Cookie: a=b; beta=yes" as two crumbs (RFC 9113 §8.2.3)
        routed = client.get("/beta/x", headers=[("cookie", "a=b; beta=yes")])
        other = client.get("/beta/y", headers=[("cookie", "a=b")])
    assert routed.header("x-backend") == "special"
    assert other.header("x-backend") in {"a", "b", "c"}
    assert seen_at(shared.special, "/beta/x").all("Cookie") == ["a=b; beta=yes"]


def test_an_interim_103_reaches_the_client_before_the_response(shared: Shared) -> None:
    with h2c(shared.ports["web"]) as client:
        response = client.get("/special/early")
    assert [dict(fields)[b":status"] for fields in response.interim] == [b"103"]
    assert (response.status, bytes(response.body)) == (200, b"after hints")


def test_response_trailers_are_forwarded_less_the_forbidden_ones(shared: Shared) -> None:
    with h2c(shared.ports["web"]) as client:
        sent = client.get("/special/trailers")
        kept_out = client.get("/special/forbidden-trailers")
    assert (sent.status, bytes(sent.body)) == (200, b"abcdef")
    assert sent.header("content-length") is None  # the server streamed it
    assert sent.trailers == [(b"server-timing", b"db;dur=53"), (b"x-checksum", b"abcdef")]
    # none may be passed on (RFC 9110 §6.5.1): the stream just ends after the body
    assert (kept_out.status, bytes(kept_out.body), kept_out.reset) == (200, b"abc", None)
    assert kept_out.ended
    assert kept_out.trailers == []
    assert kept_out.header("set-cookie") is None


def test_a_204_has_no_body(shared: Shared) -> None:
    with h2c(shared.ports["web"]) as client:
        response = client.get("/special/empty")
    assert (response.status, bytes(response.body), response.ended) == (204, b"", True)


# -- bodies ----------------------------------------------------------------------------------


def test_a_request_body_with_content_length_arrives_as_sent(shared: Shared) -> None:
    body = b"name=portico&proto=h2"
    with h2c(shared.ports["web"]) as client:
        stream_id = client.request(
            "POST", "/special/form", headers=[("content-length", str(len(body)))], body=body
        )
        response = client.response(stream_id)
    assert (response.status, bytes(response.body)) == (200, b"%d" % len(body))
    seen = seen_at(shared.special, "/special/form")
    assert seen.method == "POST"
    assert seen.header("Content-Length") == str(len(body))
    assert seen.header("Transfer-Encoding") is None
    assert seen.body == body


def test_a_request_body_without_length_reaches_the_server_chunked(shared: Shared) -> None:
    with h2c(shared.ports["web"]) as client:
        stream_id = client.request("PUT", "/special/stream", end=False)
        for part in (b"first,", b"second,", b"third"):
            client.send(stream_id, part, end=False)
        client.send(stream_id, b"", end=True)
        response = client.response(stream_id)
    assert response.status == 200
    seen = seen_at(shared.special, "/special/stream")
    assert seen.header("Transfer-Encoding") == "chunked"
    assert seen.header("Content-Length") is None
    assert seen.body == b"first,second,third"
    assert b"Transfer-Encoding: chunked" in seen.raw_head or b"transfer-encoding" in (
        seen.raw_head.lower()
    )


def test_request_trailers_end_the_body(shared: Shared) -> None:
    with h2c(shared.ports["web"]) as client:
        stream_id = client.request("POST", "/special/request-trailers", end=False)
        client.send(stream_id, b"payload", end=False)
        client.conn.send_headers(stream_id, [(b"x-digest", b"1")], end_stream=True)
        client.flush()
        response = client.response(stream_id)
    assert (response.status, bytes(response.body)) == (200, b"7")
    assert seen_at(shared.special, "/special/request-trailers").body == b"payload"


@pytest.mark.parametrize("with_length", [True, False])
def test_a_multi_mib_upload_arrives_byte_exact(shared: Shared, with_length: bool) -> None:
    body = pattern(5 * MiB + 7)
    target = f"/special/upload-{with_length}"
    headers = [("content-length", str(len(body)))] if with_length else []
    with h2c(shared.ports["web"]) as client:
        response = client.response(client.request("POST", target, headers=headers, body=body))
    assert (response.status, bytes(response.body)) == (200, b"%d" % len(body))
    assert seen_at(shared.special, target).body == body


def test_a_multi_mib_response_arrives_byte_exact(shared: Shared) -> None:
    size = 6 * MiB + 3
    with h2s(shared.ports["secure"], shared.pki) as client:
        response = client.get(f"/special/big?size={size}")
    assert response.status == 200
    assert response.header("content-length") == str(size)
    assert bytes(response.body) == pattern(size)


def test_a_stream_the_client_does_not_read_does_not_stall_another(shared: Shared) -> None:
    small_window = 16 * 1024
    with h2c(shared.ports["web"], initial_window=small_window) as client:
        stalled = client.request("GET", f"/special/big?size={4 * MiB}")
        client.hold.add(stalled)  # never gives this stream its window back
        flowing = client.request("GET", f"/special/big?size={2 * MiB + 1}")
        done = client.response(flowing)
        assert (done.status, bytes(done.body)) == (200, pattern(2 * MiB + 1))
        held = client.streams[stalled]
        assert held.status == 200
        assert not held.done
        assert len(held.body) <= small_window
        # the held stream's window stays shut, and the connection is still useful
        client.reset(stalled)
        assert client.get("/special/after-stall").status == 200


def test_a_stream_reset_by_the_client_cancels_its_server_request(shared: Shared) -> None:
    hang = shared.hang
    with h2c(shared.ports["web"]) as client:
        stream_id = client.request("GET", "/hang/forever")
        eventually(lambda: any(s.target == "/hang/forever" for s in hang.heads), "the request")
        assert hang.open_connections == 1
        client.reset(stream_id)
        # Portico gives up the server request: the server sees its connection closed
        eventually(lambda: hang.open_connections == 0, "the server connection to close")
        assert client.get("/special/after-reset").status == 200  # the connection goes on
        assert client.streams[stream_id].headers == []


# -- Portico's own answers over HTTP/2 --------------------------------------------------------


def test_a_server_that_is_down_is_a_502_or_503(shared: Shared) -> None:
    with h2c(shared.ports["web"]) as client:
        response = client.get("/gone/x")
        assert response.status in (502, 503)
        assert response.header("content-type") == "text/plain; charset=utf-8"
        assert response.header("connection") is None
        assert bytes(response.body).startswith(b"%d " % response.status)
        assert client.get("/special/after-502").status == 200  # the connection goes on


def test_a_body_over_the_limit_is_413_with_or_without_a_length(shared: Shared) -> None:
    port = shared.ports["strict"]
    with h2c(port) as client:
        declared = client.request(
            "POST", "/declared", headers=[("content-length", "4096")], end=False
        )
        assert client.response(declared).status == 413
        streamed = client.request("POST", "/streamed", end=False)
        client.send(streamed, b"x" * 4096)
        assert client.response(streamed).status == 413
        small = client.request("POST", "/small", body=b"x" * 100)
        assert client.response(small).status == 200  # the connection goes on
    assert all(s.target not in ("/declared", "/streamed") for s in shared.special.seen)


def test_too_many_or_too_large_headers_are_431_and_a_long_path_414(shared: Shared) -> None:
    with h2c(shared.ports["strict"]) as client:
        many = client.get("/many-headers", headers=[(f"x-h{i}", "v") for i in range(20)])
        # past max_header_size (32 KiB), within the decoder's slack: this stream only
        large = client.get("/large-header", headers=[("x-big", "v" * 40_000)])
        long = client.get("/" + "p" * 300)
        fine = client.get("/fine", headers=[(f"x-h{i}", "v") for i in range(5)])
    assert many.status == 431
    assert large.status == 431
    assert long.status == 414
    assert fine.status == 200
    assert {s.target for s in shared.special.seen} & {"/many-headers", "/large-header"} == set()


def test_redirect_and_fixed_response_routes_answer_over_h2(shared: Shared) -> None:
    with h2c(shared.ports["web"]) as client:
        moved = client.get("/old?x=1", authority="shop.example.com")
        down = client.get("/down/page")
    assert moved.status == 308
    assert moved.header("location") == "https://shop.example.com/new?x=1"
    assert down.status == 503
    assert bytes(down.body) == b"down for maintenance\n"
    assert down.header("content-length") == str(len(b"down for maintenance\n"))


def test_head_has_no_body_but_the_get_length(shared: Shared) -> None:
    with h2c(shared.ports["web"]) as client:
        response = client.response(client.request("HEAD", f"/special/big?size={1000}"))
    assert response.status == 200
    assert response.ended
    assert response.header("content-length") == "1000"
    assert bytes(response.body) == b""


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        # an ordinary CONNECT, as RFC 9113 §8.5 shapes it: no :scheme, no :path
        ([(b":method", b"CONNECT"), (b":authority", b"example.com:443")], 405),
        (
            [
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", b"user@example.com"),
                (b":path", b"/"),
            ],
            400,
        ),
        pytest.param(
            [
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", b"example.com"),
                (b":path", b"/"),
                (b"host", b"other.example.com"),
            ],
            400,
            marks=pytest.mark.xfail(
                strict=True,
                reason="h2 (validate_inbound_headers) makes a malformed request a connection "
                "error: GOAWAY PROTOCOL_ERROR ends every stream; RFC 9113 §8.1.1 asks for a "
                "stream error, and map_request's own 400 is never reached",
            ),
        ),
    ],
    ids=["connect", "userinfo", "host-mismatch"],
)
def test_refused_request_heads(
    shared: Shared, fields: list[tuple[bytes, bytes]], status: int
) -> None:
    with h2c(shared.ports["web"]) as client:
        refused = client.response(client.request(fields=fields))
        assert refused.status == status
        assert client.get("/special/after-refusal").status == 200


def test_an_idle_connection_gets_a_goaway_and_is_closed(shared: Shared) -> None:
    with h2c(shared.ports["idle"]) as client:
        assert client.get("/special/before-idle").status == 200
        goaway = client.wait_goaway()  # the listener's keepalive timeout: 300ms
        assert goaway.error_code == ErrorCodes.NO_ERROR
        assert goaway.last_stream_id == 1
        client.read_until_eof()


# -- attacks -----------------------------------------------------------------------------------


def _fields(path: str, method: str = "GET") -> list[tuple[bytes, bytes]]:
    return [
        (b":method", method.encode()),
        (b":scheme", b"http"),
        (b":authority", b"test.local"),
        (b":path", path.encode()),
    ]


def rapid_reset(client: H2Client) -> bytes:
    conn = client.conn
    for _ in range(500):
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, _fields("/special/rapid"), end_stream=True)
        conn.reset_stream(stream_id, ErrorCodes.CANCEL)
    return conn.data_to_send()


def continuation_flood(client: H2Client) -> bytes:
    block = Encoder().encode(_fields("/special/continued"))
    frames: list[Frame] = [HeadersFrame(1, data=block[:4])]  # no END_HEADERS: more follows
    frames += [ContinuationFrame(1, data=b"\x00" * 64) for _ in range(100)]  # h2 takes 64
    return b"".join(f.serialize() for f in frames)


def ping_flood(client: H2Client, count: int = 1500) -> bytes:
    pings = (PingFrame(0, opaque_data=i.to_bytes(8, "big")) for i in range(count))
    return b"".join(ping.serialize() for ping in pings)


def large_ping_flood(client: H2Client) -> bytes:
    return ping_flood(client, 5000)  # 85 KB: more than the server takes in one read


def settings_flood(client: H2Client) -> bytes:
    frame = SettingsFrame(0, settings={SettingCodes.ENABLE_PUSH: 0}).serialize()
    return frame * 1500


def window_update_flood(client: H2Client) -> bytes:
    return WindowUpdateFrame(0, window_increment=1).serialize() * 1500


def empty_data_flood(client: H2Client) -> bytes:
    conn = client.conn
    conn.send_headers(1, _fields("/special/empty", "POST"), end_stream=False)
    return conn.data_to_send() + DataFrame(1, data=b"").serialize() * 1500


def oversized_header_block(client: H2Client) -> bytes:
    # past max_header_size plus the decoder's 16 KiB slack
    fields = [*_fields("/special/oversized"), (b"x-big", b"v" * 60_000)]
    client.conn.send_headers(1, fields, end_stream=True)
    return client.conn.data_to_send()


def too_many_streams(client: H2Client) -> bytes:
    conn = client.conn  # it has not read the server's SETTINGS: it does not know the limit
    for _ in range(10):
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, _fields("/streams", "POST"), end_stream=False)
    return conn.data_to_send()


CALM = ErrorCodes.ENHANCE_YOUR_CALM
PROTOCOL = ErrorCodes.PROTOCOL_ERROR
# name: (listener, the attack's frames, the GOAWAY's error code, what the log says)
ATTACKS: dict[str, tuple[str, Callable[[H2Client], bytes], ErrorCodes, str]] = {
    "rapid-reset": ("web", rapid_reset, CALM, "rapid reset"),
    "continuation-flood": ("web", continuation_flood, PROTOCOL, "CONTINUATION flood"),
    "ping-flood": ("web", ping_flood, CALM, "PingReceived flood"),
    "large-ping-flood": ("web", large_ping_flood, CALM, "PingReceived flood"),
    "settings-flood": ("web", settings_flood, CALM, "SETTINGS flood"),
    "window-update-flood": ("web", window_update_flood, CALM, "WINDOW_UPDATE flood"),
    "empty-data-flood": ("web", empty_data_flood, CALM, "empty DATA frames flood"),
    "oversized-header-block": ("web", oversized_header_block, CALM, "Oversized header block"),
    "too-many-streams": ("strict", too_many_streams, PROTOCOL, "Max inbound streams is 5"),
}


def attack(port: int, build: Callable[[H2Client], bytes]) -> int | None:
    """Open a connection, send the attack's frames in one go, and read what the server says
    until it closes the connection; the GOAWAY's error code, or None.

    The server must not lose its GOAWAY by closing on attack bytes it has not read (TCP would
    reset the connection): it lingers, discarding them, which the large PING flood checks.
    """
    with connect(port) as sock:
        client = H2Client(sock)  # the preface and SETTINGS went out
        data = build(client)
        send_all_quietly(sock, data)
        frames, _ = read_frames_until_closed(sock)
    goaway = goaway_of(frames)
    return goaway.error_code if goaway is not None else None


@pytest.mark.parametrize("name", list(ATTACKS))
def test_an_attack_closes_the_attacking_connection_and_others_are_served(
    shared: Shared, name: str
) -> None:
    listener, build, code, logged = ATTACKS[name]
    start = len(shared.proxy.stderr_lines)
    with h2c(shared.ports["web"]) as bystander:
        assert bystander.get("/special/before-attack").status == 200
        error = attack(shared.ports[listener], build)
        assert error == code, f"GOAWAY {error!r}, expected {code!r}"
        assert shared.proxy.wait_for_stderr(logged, start=start) is not None
        # the other connection, open all along, is served; so is a new one
        assert bystander.get("/special/after-attack").status == 200
    with h2c(shared.ports[listener]) as fresh:
        assert fresh.get("/special/fresh").status == 200


def test_an_attack_moves_the_abuse_metric_and_is_logged(shared: Shared) -> None:
    start = len(shared.proxy.stderr_lines)
    error = attack(shared.ports["watched"], ping_flood)
    assert error == CALM

    def abuse() -> float | None:
        answer = request(shared.admin, "GET", "/metrics")
        assert answer.status == 200
        for family in text_string_to_metric_families(answer.body.decode()):
            for sample in family.samples:
                if (
                    sample.name == "portico_h2_abuse_total"
                    and sample.labels.get("listener") == "watched"
                    and sample.value > 0
                ):
                    return sample.value
        return None

    assert eventually(abuse, "portico_h2_abuse_total{listener=watched}") == 1
    assert shared.proxy.wait_for_stderr("flood", start=start) is not None


# -- curl ---------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("tls", [False, True], ids=["h2c-prior-knowledge", "alpn"])
def test_curl_gets_http2(shared: Shared, tls: bool) -> None:
    if tls:
        port = shared.ports["secure"]
        args = [
            "--http2",
            "--cacert",
            str(shared.pki["ca_file"]),
            "--resolve",
            f"{SITE}:{port}:127.0.0.1",
            f"https://{SITE}:{port}/special/curl",
        ]
    else:
        args = ["--http2-prior-knowledge", f"http://127.0.0.1:{shared.ports['web']}/special/curl"]
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-w", "\n%{http_version} %{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    body, _, result = done.stdout.rpartition("\n")
    assert result == "2 200"
    assert body == "0"  # the special server: the request had no body


# -- graceful drain on reload --------------------------------------------------------------


def test_a_reload_sends_goaway_and_the_stream_in_flight_finishes(
    backends: MakeBackend, portico: MakePortico
) -> None:
    total, chunk = 2 * MiB, b"d" * (256 * 1024)
    release = threading.Event()

    def slow_body() -> Iterator[bytes]:
        for index in range(total // len(chunk)):
            if index == 1:
                release.wait(30)  # held open across the reload
            yield chunk

    slow = backends("slow", lambda seen: Reply(body=slow_body(), length=total))
    proxy = portico(
        "workers: 1\nshutdown_grace: 30s\nlisteners:\n"
        "  - name: web\n    bind: 127.0.0.1:0\n    default_pool: app\n    http2: true\n"
        "pools:\n  app:\n    servers:\n" + pool_yaml([slow])
    )
    try:
        with h2c(proxy.port) as client:
            stream_id = client.request("GET", "/download")
            stream = client.streams[stream_id]
            client.wait(lambda: len(stream.body) > 0, "the first bytes of the download")
            proxy.proc.send_signal(signal.SIGHUP)
            assert "generation 1" in proxy.wait_stdout("portico: reloaded")
            # first a GOAWAY that refuses nothing (a stream crossing it is still served) and
            # a PING; once the client answers it, the final GOAWAY names the last stream
            client.wait(
                lambda: client.goaway is not None and client.goaway.last_stream_id == stream_id,
                "the final GOAWAY",
                timeout=20,
            )
            assert client.goaway is not None
            assert client.goaway.error_code == ErrorCodes.NO_ERROR
            # a stream the client opens now (against the rules) is refused, to be retried
            late = client.response(client.request("GET", "/late"))
            assert late.reset == ErrorCodes.REFUSED_STREAM
            release.set()
            finished = client.response(stream_id, timeout=20)
            assert finished.ended
            assert len(finished.body) == total
            client.read_until_eof()  # nothing left on it: the old worker closes it
        # the new generation serves new connections
        with h2c(proxy.port) as fresh:
            assert fresh.get("/after-reload").status == 200
    finally:
        release.set()


# -- config errors ----------------------------------------------------------------------------


def _check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "portico.yaml").write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "portico", "check", "portico.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


CHECK_BASE = (
    "listeners:\n  - name: web\n    bind: 127.0.0.1:8080\n    default_pool: app\n{listener}"
    "pools:\n  app:\n    servers:\n      - address: 127.0.0.1:9000\n"
)


@pytest.mark.parametrize(
    ("listener", "key", "words"),
    [
        ("    protocol: tcp\n    http2: true\n", "listeners[0].http2", "protocol: https"),
        (
            "    protocol: https\n    tls:\n      certificates: [{cert: C, key: K}]\n"
            "      alpn: [h2, http/1.1]\n",
            "listeners[0].tls.alpn",
            "http2: true",
        ),
        (
            "    http2: {initial_window_size: 1KiB}\n",
            "listeners[0].http2.initial_window_size",
            "65535",
        ),
        (
            "    http2: {connection_window_size: 4GiB}\n",
            "listeners[0].http2.connection_window_size",
            "2GiB",
        ),
        (
            "    http2: {max_concurrent_streams: 0}\n",
            "listeners[0].http2.max_concurrent_streams",
            "1 to 10000",
        ),
        ("    http2: yes-please\n", "listeners[0].http2", "mapping"),
        ("    http2: {enabled: false, only: true}\n", "listeners[0].http2.only", "HTTP/2 on"),
        (
            "    http2: {only: true}\n    protocol: https\n"
            "    tls:\n      certificates: [{cert: C, key: K}]\n      alpn: [h2, http/1.1]\n",
            "listeners[0].tls.alpn",
            "only HTTP/2",
        ),
    ],
    ids=[
        "tcp",
        "alpn-without-http2",
        "stream-window",
        "connection-window",
        "streams",
        "shape",
        "only-while-off",
        "only-with-http11-alpn",
    ],
)
def test_http2_config_errors_name_the_key(
    tmp_path: Path, listener: str, key: str, words: str
) -> None:
    if "certificates" in listener:
        pki = make_pki(tmp_path)
        listener = listener.replace("cert: C", f"cert: {pki['chain']}").replace(
            "key: K", f"key: {pki['key']}"
        )
    result = _check(tmp_path, CHECK_BASE.format(listener=listener))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if key in line]
    assert lines, result.stderr
    assert words in lines[0]
