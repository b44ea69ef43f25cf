"""End-to-end: malformed and ambiguous requests (request smuggling) never reach a server.

Every case goes over a real socket to the real `portico run`: the client must get the right
error status, the connection must be closed after it (read until EOF), and the backend must
have received nothing of the bad request. Most cases share one proxy in front of one backend
(`site`), kept warm: after each case a barrier request on a fresh connection is answered, so a
pooled server connection is always idle, and a request that Portico wrongly starts forwarding
reaches the server at once rather than waiting for a connect that a refusal would cancel.
The barrier also orders events: once it is answered, anything Portico wrote to the backend
before it has arrived, and every byte the backend received since the case began must belong to
a request head it parsed.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from conftest import simple_config
from fakes import FakeBackend, Portico, Response, ResponseReader, connect, request

CLOSE_WAIT = 3.0  # seconds an answered connection may stay open before the test fails

LIMITS = (
    "    limits:\n"
    "      max_request_line: 1024\n"
    "      max_header_size: 4096\n"
    "      max_headers: 20\n"
    "      max_body_size: 1000\n"
)
MAX_REQUEST_LINE = 1024
MAX_HEADERS = 20
MAX_BODY = 1000


@dataclass
class Mark:
    heads: int
    seen: int
    received: int


@dataclass
class Site:
    """One proxy in front of one backend, shared by the cases of this module."""

    proxy: Portico
    backend: FakeBackend
    barriers: int = 0

    @property
    def port(self) -> int:
        return self.proxy.port

    def mark(self) -> Mark:
        b = self.backend
        return Mark(len(b.heads), len(b.seen), b.bytes_received)

    def _barrier(self) -> str:
        self.barriers += 1
        target = f"/barrier-{self.barriers}"
        response = request(self.port, target=target)
        assert response.status == 200, f"the proxy stopped serving good requests: {response}"
        return target

    def forwarded_since(self, mark: Mark) -> list[str]:
        """Targets of the request heads the backend received since `mark` (barrier excluded),
        plus a `<N unaccounted bytes>` entry if bytes arrived that belong to no parsed head."""
        barrier = self._barrier()
        heads = self.backend.heads[mark.heads :]
        accounted = sum(len(h.raw_head) + len(h.body) for h in heads)
        received = self.backend.bytes_received - mark.received
        targets = [h.target for h in heads if h.target != barrier]
        if received != accounted:
            targets.append(f"<{received - accounted} unaccounted bytes>")
        return targets

    def completed_since(self, mark: Mark) -> list[str]:
        """Targets of the complete requests (head and whole body) received since `mark`."""
        barrier = self._barrier()
        return [s.target for s in self.backend.seen[mark.seen :] if s.target != barrier]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    backend = FakeBackend("app")
    config = simple_config([backend], extra_listener=LIMITS)
    with backend, Portico(config, tmp_path_factory.mktemp("bad_requests")) as proxy:
        shared = Site(proxy, backend)
        shared.forwarded_since(shared.mark())  # warm: leaves an idle pooled server connection
        yield shared


def answers_until_close(
    sock: socket.socket, wait: float = CLOSE_WAIT, reader: ResponseReader | None = None
) -> list[Response]:
    """Every (further) response on `sock` until Portico closes it; fails if it stays open."""
    reader = reader or ResponseReader(sock)
    sock.settimeout(wait)
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            got = [r.status for r in reader.done]
            pytest.fail(f"connection still open {wait}s after the responses {got}")
        if not data:
            return reader.done
        reader.parser.feed_data(data)


def send(port: int, raw: bytes) -> list[Response]:
    """Write `raw` in one go on a fresh connection; the responses, read until Portico closes."""
    with connect(port) as sock:
        sock.sendall(raw)
        return answers_until_close(sock)


def statuses(answers: list[Response]) -> list[int]:
    return [r.status for r in answers]


def assert_refused(site: Site, raw: bytes, allowed: tuple[int, ...]) -> None:
    """`raw` gets one error in `allowed`, the connection is closed, the backend saw nothing."""
    mark = site.mark()
    with connect(site.port, timeout=CLOSE_WAIT) as sock:
        sock.sendall(raw)
        reader = ResponseReader(sock)
        first = reader.read()
        assert first.status in allowed, f"answered {first.status} {first.body[:60]!r}"
        assert statuses(answers_until_close(sock, reader=reader)) == []
    assert site.forwarded_since(mark) == []


# -- ambiguous or invalid body framing ---------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n0\r\n\r\n",
            id="content-length-then-transfer-encoding",
        ),
        pytest.param(
            b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n"
            b"\r\n0\r\n\r\n",
            id="transfer-encoding-then-content-length",
        ),
        pytest.param(
            b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            id="two-different-content-lengths",
        ),
        pytest.param(
            b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            id="two-equal-content-lengths",
        ),
        pytest.param(
            b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello",
            id="content-length-list",
        ),
        pytest.param(
            b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
            id="content-length-plus-sign",
        ),
        pytest.param(
            b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\nhello",
            id="content-length-minus-sign",
        ),
        pytest.param(
            b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5a\r\n\r\nhello",
            id="content-length-trailing-letter",
        ),
        pytest.param(
            b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\nhello",
            id="content-length-hex",
        ),
        pytest.param(
            b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n",
            id="content-length-empty",
        ),
        pytest.param(
            b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            id="content-length-overflow",
        ),
        pytest.param(
            b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nhello",
            id="transfer-encoding-gzip",
        ),
        pytest.param(
            b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\nhello",
            id="transfer-encoding-chunked-not-final",
        ),
        pytest.param(
            b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\nhello",
            id="transfer-encoding-xchunked",
        ),
        pytest.param(
            b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\nhello",
            id="transfer-encoding-identity",
        ),
        pytest.param(
            b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            id="chunked-twice",
        ),
        pytest.param(
            # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty
            b"POST /s HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
            id="transfer-encoding-in-http10",
        ),
    ],
)
def test_ambiguous_body_framing_is_refused_with_400_and_never_forwarded(
    site: Site, raw: bytes
) -> None:
    assert_refused(site, raw, (400,))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"zz\r\nhello\r\n0\r\n\r\n", id="non-hex-size"),
        pytest.param(b"-5\r\nhello\r\n0\r\n\r\n", id="negative-size"),
        pytest.param(b"0x5\r\nhello\r\n0\r\n\r\n", id="0x-prefix"),
        pytest.param(b"f" * 40 + b"\r\nhello\r\n0\r\n\r\n", id="size-overflow"),
        pytest.param(b"5\r\nhelloXX0\r\n\r\n", id="no-crlf-after-data"),
        pytest.param(b"5\r\nhello\n0\r\n\r\n", id="bare-lf-after-data"),
        pytest.param(b"5\nhello\r\n0\r\n\r\n", id="bare-lf-after-size"),
    ],
)
def test_malformed_chunked_body_is_refused_with_400_and_never_forwarded(
    site: Site, body: bytes
) -> None:
    head = b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert_refused(site, head + body, (400,))


# -- malformed heads ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"GET /s HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", id="obs-fold"),
        pytest.param(b"GET /s HTTP/1.1\r\n Host: x\r\n\r\n", id="space-before-first-header"),
        pytest.param(b"GET /s HTTP/1.1\r\nHost: x\r\nX-A : a\r\n\r\n", id="space-before-colon"),
        pytest.param(
            b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding : chunked\r\n"
            b"\r\n0\r\n\r\n",
            id="space-before-colon-in-transfer-encoding",
        ),
        pytest.param(b"GET /s HTTP/1.1\r\nHost: x\r\nX-A\t: a\r\n\r\n", id="tab-before-colon"),
        pytest.param(b"GET /s HTTP/1.1\r\nHost: x\r\nX(A): a\r\n\r\n", id="name-parenthesis"),
        pytest.param(b"GET /s HTTP/1.1\r\nHost: x\r\nX A: a\r\n\r\n", id="name-space"),
        pytest.param(b"GET /s HTTP/1.1\r\nHost: x\r\nX\x01A: a\r\n\r\n", id="name-control"),
        pytest.param(b"GET /s HTTP/1.1\r\nHost: x\r\nX\xc3\xa9: a\r\n\r\n", id="name-non-ascii"),
        pytest.param(b"GET /s HTTP/1.1\r\nHost: x\r\n: a\r\n\r\n", id="name-empty"),
        pytest.param(b"GET /s HTTP/1.1\r\nHost: x\r\nX-A\r\n\r\n", id="no-colon"),
        pytest.param(b"GET /s HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", id="value-nul"),
        pytest.param(b"GET /s HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", id="value-bare-cr"),
        pytest.param(b"GET /s HTTP/1.1\r\nHost: x\r\nX-A: a\nX-B: b\r\n\r\n", id="value-bare-lf"),
        pytest.param(b"GET /s HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n", id="value-del"),
        pytest.param(b"GET /s HTTP/1.1\nHost: x\n\n", id="bare-lf-line-endings"),
        pytest.param(b"GET /s HTTP/1.1\r\nHost: x\n\r\n", id="bare-lf-after-header"),
        pytest.param(b"GET /s HTTP/1.1\r\nHost: x\r\n\n", id="bare-lf-ending-head"),
    ],
)
def test_malformed_header_is_refused_with_400_and_never_forwarded(site: Site, raw: bytes) -> None:
    assert_refused(site, raw, (400,))


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"G(ET /s HTTP/1.1\r\nHost: x\r\n\r\n", id="method-not-a-token"),
        pytest.param(b"GET\x00 /s HTTP/1.1\r\nHost: x\r\n\r\n", id="method-nul"),
        pytest.param(b"GET HTTP/1.1\r\nHost: x\r\n\r\n", id="missing-target"),
        pytest.param(b"GET /s\r\nHost: x\r\n\r\n", id="missing-version"),
        pytest.param(b"GET /s HTTP/2.0\r\nHost: x\r\n\r\n", id="http-2.0"),
        pytest.param(b"GET /s HTTP/1.2\r\nHost: x\r\n\r\n", id="http-1.2"),
        pytest.param(b"GET /s HTTP/0.9\r\nHost: x\r\n\r\n", id="http-0.9"),
        pytest.param(b"GET /s HTTP/3.0\r\nHost: x\r\n\r\n", id="http-3.0"),
        pytest.param(b"GET /s http/1.1\r\nHost: x\r\n\r\n", id="lowercase-protocol"),
        pytest.param(b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", id="space-in-target"),
    ],
)
def test_invalid_request_line_is_refused_and_never_forwarded(site: Site, raw: bytes) -> None:
    assert_refused(site, raw, (400, 505))


# -- Host --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"GET /s HTTP/1.1\r\nAccept: */*\r\n\r\n", id="missing"),
        pytest.param(
            b"GET /s HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", id="two-different"
        ),
        pytest.param(b"GET /s HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n", id="two-equal"),
    ],
)
def test_http11_request_without_exactly_one_host_is_refused_with_400(
    site: Site, raw: bytes
) -> None:
    assert_refused(site, raw, (400,))


def test_http10_request_without_host_is_forwarded(site: Site) -> None:
    mark = site.mark()
    answers = send(site.port, b"GET /old HTTP/1.0\r\n\r\n")  # HTTP/1.0: closed after one answer
    assert statuses(answers) == [200]
    assert answers[0].body == b"app"
    assert site.forwarded_since(mark) == ["/old"]


def test_http10_request_without_host_reaches_the_server_with_a_host(site: Site) -> None:
    # Portico speaks HTTP/1.1 to servers, and RFC 9112 §3.2 requires Host in every HTTP/1.1
    # request: a strict server (Go's net/http, HAProxy) answers 400 without one.
    mark = site.mark()
    assert statuses(send(site.port, b"GET /old-no-host HTTP/1.0\r\n\r\n")) == [200]
    seen = [s for s in site.backend.seen[mark.seen :] if s.target == "/old-no-host"]
    assert len(seen) == 1
    assert seen[0].version == "1.1"
    assert len(seen[0].all("Host")) == 1
    assert seen[0].header("Host")


# -- size limits -------------------------------------------------------------------------------


def _request_line_of(length: int) -> bytes:
    path = b"/" + b"a" * (length - len(b"GET / HTTP/1.1"))
    line = b"GET " + path + b" HTTP/1.1"
    assert len(line) == length
    return line


def test_request_line_of_exactly_max_request_line_is_forwarded(site: Site) -> None:
    line = _request_line_of(MAX_REQUEST_LINE)
    mark = site.mark()
    with connect(site.port) as sock:
        sock.sendall(line + b"\r\nHost: x\r\n\r\n")
        assert ResponseReader(sock).read().status == 200
    assert site.forwarded_since(mark) == [line.split()[1].decode()]


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            _request_line_of(MAX_REQUEST_LINE + 1) + b"\r\nHost: x\r\n\r\n", id="one-over"
        ),
        pytest.param(
            _request_line_of(4 * MAX_REQUEST_LINE) + b"\r\nHost: x\r\n\r\n", id="far-over"
        ),
        pytest.param(b"GET /" + b"a" * (4 * MAX_REQUEST_LINE), id="unfinished"),
    ],
)
def test_request_line_longer_than_max_request_line_is_refused_with_414(
    site: Site, raw: bytes
) -> None:
    assert_refused(site, raw, (414,))


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            b"GET /s HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192 + b"\r\n\r\n",
            id="one-large-field",
        ),
        pytest.param(
            b"GET /s HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-F%d: %s\r\n" % (i, b"a" * 500) for i in range(12))
            + b"\r\n",
            id="many-fields",
        ),
    ],
)
def test_head_larger_than_max_header_size_is_refused_with_431(site: Site, raw: bytes) -> None:
    assert_refused(site, raw, (431,))


def test_unfinished_header_growing_past_max_header_size_is_refused_before_it_ends(
    site: Site,
) -> None:
    # The field never ends: Portico must count what it buffers, not wait for a whole field
    # (or for timeouts.header, 10 s here) while memory fills. The guard allows the configured
    # limits plus 64 KiB of slack (HEAD_SLACK), so send well past that.
    mark = site.mark()
    with connect(site.port) as sock:
        sock.sendall(b"GET /s HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (512 * 1024))
        answers = answers_until_close(sock, wait=2.0)
    assert statuses(answers) == [431]
    assert site.forwarded_since(mark) == []


def _with_fields(count: int) -> bytes:
    """A GET whose head has `count` fields, Host included."""
    extra = b"".join(b"X-F%d: v\r\n" % i for i in range(count - 1))
    return b"GET /fields HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n"


def test_exactly_max_headers_fields_are_forwarded(site: Site) -> None:
    mark = site.mark()
    with connect(site.port) as sock:
        sock.sendall(_with_fields(MAX_HEADERS))
        assert ResponseReader(sock).read().status == 200
    assert site.forwarded_since(mark) == ["/fields"]


def test_more_than_max_headers_fields_are_refused_with_431(site: Site) -> None:
    assert_refused(site, _with_fields(MAX_HEADERS + 1), (431,))


def test_content_length_of_exactly_max_body_size_is_forwarded(site: Site) -> None:
    body = b"b" * MAX_BODY
    mark = site.mark()
    assert request(site.port, "POST", "/upload", body=body).status == 200
    assert site.completed_since(mark) == ["/upload"]
    assert site.backend.seen[mark.seen].body == body


@pytest.mark.parametrize(
    "with_body", [pytest.param(False, id="head-only"), pytest.param(True, id="with-body")]
)
def test_content_length_above_max_body_size_is_refused_with_413_and_never_forwarded(
    site: Site, with_body: bool
) -> None:
    head = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)
    assert_refused(site, head + (b"b" * (MAX_BODY + 1) if with_body else b""), (413,))


def _chunked(*sizes: int) -> bytes:
    head = b"POST /chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n%s\r\n" % (n, b"c" * n) for n in sizes) + b"0\r\n\r\n"


def test_chunked_body_of_exactly_max_body_size_is_forwarded(site: Site) -> None:
    mark = site.mark()
    with connect(site.port) as sock:
        sock.sendall(_chunked(600, MAX_BODY - 600))
        assert ResponseReader(sock).read().status == 200
    assert site.completed_since(mark) == ["/chunks"]
    assert site.backend.seen[mark.seen].body == b"c" * MAX_BODY


def test_chunked_body_growing_past_max_body_size_is_cut_off_and_never_completes(
    site: Site,
) -> None:
    raw = _chunked(600, 600)
    cut = raw.index(b"c" * 600) + 600  # the first chunk, within the limit, is sent alone
    first, rest = raw[:cut], raw[cut:]
    mark = site.mark()
    with connect(site.port) as sock:
        sock.sendall(first)
        try:
            sock.sendall(rest)
            answers = answers_until_close(sock)
        except (ConnectionResetError, BrokenPipeError):
            answers = []  # closed on us mid-body: acceptable, as long as nothing completed
    assert statuses(answers) in ([413], [])
    assert site.completed_since(mark) == []  # the server may have seen the head, never the end


# -- methods Portico does not relay ------------------------------------------------------------


def test_connect_is_refused_with_405_and_never_forwarded(site: Site) -> None:
    raw = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    assert_refused(site, raw, (405,))


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(b"Content-Length: 5\r\n\r\nhello", id="content-length"),
        pytest.param(b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", id="chunked"),
    ],
)
def test_upgrade_request_with_a_body_is_refused_with_400_and_never_forwarded(
    site: Site, framing: bytes
) -> None:
    raw = b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" + framing
    assert_refused(site, raw, (400,))


@pytest.mark.parametrize(
    "upgrade",
    [
        pytest.param(
            b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\x81\x85\x37\xfa\x21\x3d\x7f\x9f",
            id="websocket",
        ),
        pytest.param(
            b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAAQ\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            id="h2c",
        ),
    ],
)
def test_upgrade_declined_by_the_server_is_plain_http_then_closed(
    site: Site, upgrade: bytes
) -> None:
    # the upgrade is offered to the server (it could accept with a 101, see
    # test_websocket.py); this one answers 200, so the client gets that, then a close
    mark = site.mark()
    answers = send(site.port, b"GET /chat HTTP/1.1\r\nHost: x\r\n" + upgrade)
    assert statuses(answers) == [200]
    assert answers[0].body == b"app"
    # the bytes after the head (another protocol's) were not relayed
    assert site.forwarded_since(mark) == ["/chat"]
    seen = site.backend.heads[mark.heads]
    assert seen.header("Upgrade") in ("websocket", "h2c")
    assert seen.header("Connection") == "Upgrade"
    assert seen.header("HTTP2-Settings") is None  # listed in Connection: hop-by-hop


# -- pipelining --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "status"),
    [
        pytest.param(b"GET /bad HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n", 400, id="bad-header"),
        pytest.param(
            b"POST /bad HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n0\r\n\r\n",
            400,
            id="content-length-and-chunked",
        ),
        pytest.param(
            b"POST /bad HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nhello",
            400,
            id="transfer-encoding-gzip",
        ),
        pytest.param(b"GET /bad HTTP/1.1\r\nAccept: */*\r\n\r\n", 400, id="no-host"),
        pytest.param(
            b"POST /bad HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1),
            413,
            id="too-large",
        ),
    ],
)
def test_pipelined_bad_request_is_answered_after_the_good_one_then_closed(
    site: Site, bad: bytes, status: int
) -> None:
    mark = site.mark()
    answers = send(site.port, b"GET /good HTTP/1.1\r\nHost: x\r\n\r\n" + bad)
    assert statuses(answers) == [200, status]
    assert answers[0].body == b"app"
    assert site.forwarded_since(mark) == ["/good"]


# -- absolute-form targets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authority", "host_field"),
    [
        pytest.param(b"example.com:81", b"Host: example.com:81\r\n", id="same-host"),
        pytest.param(b"example.com:81", b"Host: other.test\r\n", id="different-host"),
        pytest.param(b"example.com:81", b"", id="no-host"),
        # no port: the compiled build once read httptools' None port as an int (a 400)
        pytest.param(b"example.com", b"", id="no-port"),
    ],
)
def test_absolute_form_target_is_forwarded_in_origin_form_with_its_authority_as_host(
    site: Site, authority: bytes, host_field: bytes
) -> None:
    # RFC 9112 §3.2.2: the authority of an absolute-form target replaces any Host field
    mark = site.mark()
    with connect(site.port) as sock:
        sock.sendall(b"GET http://" + authority + b"/p?q=1 HTTP/1.1\r\n" + host_field + b"\r\n")
        assert ResponseReader(sock).read().status == 200
    assert site.forwarded_since(mark) == ["/p?q=1"]
    assert site.backend.heads[mark.heads].all("Host") == [authority.decode()]


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [(b"http://example.com/b", "/b"), (b"http://example.com", "/")],
)
def test_absolute_form_target_without_port_or_query(
    site: Site, target: bytes, forwarded: str
) -> None:
    # the compiled build once read httptools' None port, path and query as int and bytes, and
    # failed these (found by the request-path fuzzer)
    mark = site.mark()
    with connect(site.port) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\n\r\n")
        assert ResponseReader(sock).read().status == 200
    assert site.forwarded_since(mark) == [forwarded]
    assert site.backend.heads[mark.heads].all("Host") == ["example.com"]


# -- client timeouts (each its own proxy: short timeouts) -------------------------------------


def _timeouts(header: str, keepalive: str) -> str:
    return f"    timeouts:\n      header: {header}\n      keepalive: {keepalive}\n"


def test_head_that_never_completes_gets_408_within_header_timeout(backends, portico) -> None:
    b = backends("app")
    proxy = portico(simple_config([b], extra_listener=_timeouts("300ms", "10s")))
    with connect(proxy.port) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        answers = answers_until_close(sock)
        elapsed = time.monotonic() - started
    assert statuses(answers) == [408]
    assert 0.25 <= elapsed < 2.5
    assert b.bytes_received == 0
    assert b.heads == []


def test_head_trickled_byte_by_byte_still_gets_408_at_header_timeout(backends, portico) -> None:
    b = backends("app")
    proxy = portico(simple_config([b], extra_listener=_timeouts("300ms", "10s")))
    raw = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    with connect(proxy.port) as sock:
        started = time.monotonic()
        for byte in raw:
            sock.sendall(bytes([byte]))
            # the pace of a slowloris client: one byte per 20 ms unless Portico answers
            readable, _, _ = select.select([sock], [], [], 0.02)
            if readable:
                break
        answers = answers_until_close(sock)
        elapsed = time.monotonic() - started
    assert statuses(answers) == [408]
    assert elapsed < 2.5  # the whole head would take over 4 s at this pace
    assert b.bytes_received == 0


def test_connection_that_never_sends_is_closed_silently_after_header_timeout(
    backends, portico
) -> None:
    b = backends("app")
    proxy = portico(simple_config([b], extra_listener=_timeouts("300ms", "10s")))
    with connect(proxy.port) as sock:
        started = time.monotonic()
        answers = answers_until_close(sock)
        elapsed = time.monotonic() - started
    assert answers == []  # a browser's pre-opened connection gets no 408 it never asked for
    assert 0.25 <= elapsed < 2.5
    assert b.connections == 0


def test_idle_keep_alive_connection_is_closed_after_keepalive_timeout_without_408(
    backends, portico
) -> None:
    b = backends("app")
    proxy = portico(simple_config([b], extra_listener=_timeouts("10s", "300ms")))
    with connect(proxy.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(b"GET /once HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.read().status == 200
        idle_since = time.monotonic()
        sock.settimeout(CLOSE_WAIT)
        after = sock.recv(65536)
        idle = time.monotonic() - idle_since
    assert after == b""  # closed, with no 408 and nothing else written
    assert 0.25 <= idle < 2.5
    assert [s.target for s in b.seen] == ["/once"]
