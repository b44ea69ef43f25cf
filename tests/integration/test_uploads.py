"""End-to-end: uploads answered before their body is all in (issue #11, item 9).

A server may answer as soon as it has read a request's head (NGINX's `return 200`, an auth
check refusing an upload), and Portico may answer itself (a route's fixed response). The
client is still sending its body then. What a user notices: every upload gets its answer, never
a broken pipe or a reset, and the keep-alive connection carries the next upload. Portico reads
and throws away the rest of the body (bounded by `limits.max_discard_size` and
`timeouts.linger`), as NGINX and HTTP.sys do; the server connection that answered early is never
pooled with half a body sent.

Clients here either read the answer while they send (as curl does) or send a whole request
before reading its response (as Python's http.client does: a reset while it sends loses the
response it never read).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from h2.exceptions import StreamClosedError

from conftest import simple_config
from fakes import FakeBackend, Portico, Reply, ResponseReader, connect, eventually, request
from h2client import H2Client

MakeBackend = Callable[..., FakeBackend]
MakePortico = Callable[[str], Portico]

MiB = 1 << 20
UPLOADS = 16
H2_UPLOADS = 8  # the h2 test client is pure Python: slower per MiB
BODY = os.urandom(MiB)
FIRST = 64 * 1024  # sent with the head; the rest after the answer came


def upload_head(target: str, framing: str, size: int = MiB) -> bytes:
    length = "Transfer-Encoding: chunked" if framing == "chunked" else f"Content-Length: {size}"
    return f"POST {target} HTTP/1.1\r\nHost: test.local\r\n{length}\r\n\r\n".encode()


def framed(body: bytes, framing: str) -> bytes:
    if framing != "chunked":
        return body
    step = 64 * 1024
    pieces = [
        b"%x\r\n%s\r\n" % (len(body[i : i + step]), body[i : i + step])
        for i in range(0, len(body), step)
    ]
    return b"".join(pieces) + b"0\r\n\r\n"


def early_backend(backends: MakeBackend, *, reads_body: bool = True) -> FakeBackend:
    backend = backends("early")
    backend.answer_early = True
    backend.discard_body = True  # the bodies are not kept in memory
    backend.hold_body = not reads_body
    return backend


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_uploads_answered_early_by_the_server_all_get_their_answer_on_one_connection(
    backends: MakeBackend, portico: MakePortico, framing: str
) -> None:
    backend = early_backend(backends)
    proxy = portico(simple_config([backend]))
    with connect(proxy.port) as sock:
        reader = ResponseReader(sock)
        for index in range(UPLOADS):
            # the answer comes while the body is being sent (a client reading while it
            # sends, as curl does, sees it then): the rest follows on the same connection
            body = framed(BODY, framing)
            sock.sendall(upload_head(f"/up/{index}", framing) + body[:FIRST])
            response = reader.read()
            assert (response.status, response.body) == (200, b"early"), index
            assert response.header("Connection") is None, index  # the connection stays
            sock.sendall(body[FIRST:])  # a reset would break this (EPIPE) or the next read
    # the server connections that answered early were never reused with half a body sent:
    # every head reached the server as a head, nothing arrived garbled
    assert [seen.target for seen in backend.heads] == [f"/up/{i}" for i in range(UPLOADS)]
    assert backend.errors == []
    assert request(proxy.port, target="/after").status == 200


def test_uploads_to_a_server_that_answers_close_and_never_reads_them_get_their_answer(
    backends: MakeBackend, portico: MakePortico
) -> None:
    # a server refusing an upload outright (as NGINX's 413 does): it answers, says close, and
    # reads no more; the client's connection to Portico is another matter and stays
    backend = early_backend(backends, reads_body=False)
    backend.handler = lambda seen: Reply(status=413, keep_alive=False)
    proxy = portico(simple_config([backend]))
    with connect(proxy.port) as sock:
        reader = ResponseReader(sock)
        for index in range(4):
            sock.sendall(upload_head(f"/up/{index}", "length") + BODY[:FIRST])
            response = reader.read()
            assert (response.status, response.header("Connection")) == (413, None), index
            sock.sendall(BODY[FIRST:])
    assert len(backend.heads) == 4


def test_a_server_connection_that_answered_early_is_not_reused(
    backends: MakeBackend, portico: MakePortico
) -> None:
    # it answered before it had the whole body; whether it reads the rest before its next
    # request is up to it, so Portico does not send it one (here it does read the body,
    # and is still not trusted: a server that reads nothing more looks the same)
    backend = early_backend(backends)
    last_chunk = threading.Event()
    backend.handler = lambda seen: Reply(body=[b"early ", b"answer"], hold_last=last_chunk)
    proxy = portico(simple_config([backend]))
    body = BODY[: 256 * 1024]
    try:
        with connect(proxy.port) as sock:
            sock.sendall(upload_head("/up", "length", len(body)) + body[:FIRST])
            got = b""
            while b"early " not in got:  # the head and the first chunk: the answer has begun
                got += sock.recv(65536)
            sock.sendall(body[FIRST:])
            eventually(lambda: backend.body_bytes == len(body), "the whole body at the server")
            last_chunk.set()  # the answer ends after the request did
            reader = ResponseReader(sock)
            reader.parser.feed_data(got)
            assert reader.read().body == b"early answer"
            sock.sendall(b"GET /next HTTP/1.1\r\nHost: test.local\r\n\r\n")
            assert reader.read().status == 200
    finally:
        last_chunk.set()
    first, after = backend.heads
    assert after.target == "/next"
    assert after.connection != first.connection


def test_uploads_answered_by_a_route_keep_the_connection(
    backends: MakeBackend, portico: MakePortico
) -> None:
    backend = backends("app")
    routes = (
        "    routes:\n"
        "      - match: {path_prefix: /closed/}\n"
        '        respond: {status: 403, body: "uploads are closed\\n"}\n'
    )
    proxy = portico(simple_config([backend], extra_listener=routes))
    with connect(proxy.port) as sock:
        reader = ResponseReader(sock)
        for index in range(UPLOADS):
            sock.sendall(upload_head(f"/closed/{index}", "length") + BODY[:FIRST])
            response = reader.read()
            assert (response.status, response.body) == (403, b"uploads are closed\n"), index
            assert response.header("Connection") is None, index
            sock.sendall(BODY[FIRST:])
    assert backend.heads == []


def test_a_rest_over_max_discard_size_closes_without_losing_the_answer(
    backends: MakeBackend, portico: MakePortico
) -> None:
    backend = early_backend(backends)
    limits = "    limits: {max_discard_size: 64KiB}\n"
    proxy = portico(simple_config([backend], extra_listener=limits))
    with connect(proxy.port) as sock:
        sock.sendall(upload_head("/big", "length", 32 * MiB) + BODY[:FIRST])
        response = ResponseReader(sock).read()  # read while sending, as curl does
        assert (response.status, response.header("Connection")) == (200, "close")
        assert sock.recv(1) == b""  # Portico sends no more
        # and reads no more than 64 KiB of the rest: then the connection is cut
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            sock.sendall(BODY * 32)


def test_a_client_that_stops_sending_after_an_early_answer_is_closed_after_linger(
    backends: MakeBackend, portico: MakePortico
) -> None:
    backend = early_backend(backends)
    timeouts = "    timeouts: {linger: 300ms}\n"
    proxy = portico(simple_config([backend], extra_listener=timeouts))
    with connect(proxy.port) as sock:
        sock.sendall(upload_head("/stalled", "length") + BODY[:FIRST])
        reader = ResponseReader(sock)
        response = reader.read()
        assert (response.status, response.header("Connection")) == (200, None)
        # the rest never comes: the connection is not held past `timeouts.linger`
        assert sock.recv(1) == b""


@pytest.mark.parametrize("continues", [False, True], ids=["no-100", "100-first"])
def test_an_early_answer_to_expect_100_continue(
    backends: MakeBackend, portico: MakePortico, continues: bool
) -> None:
    # the client waits for 100 Continue before it sends its body. If a final answer comes
    # instead, it may never send that body (curl 7.88 sends its next request instead), so
    # the connection ends. If a 100 came first (NGINX sends one before it discards a body),
    # the body follows and the connection stays.
    backend = early_backend(backends)
    backend.continue_on_expect = continues
    proxy = portico(simple_config([backend]))
    expect = upload_head("/expect", "length").replace(
        b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"
    )
    with connect(proxy.port) as sock:
        sock.sendall(expect)
        reader = ResponseReader(sock)
        response = reader.read()
        if not continues:
            assert (response.status, response.header("Connection")) == (200, "close")
            assert sock.recv(1) == b""
            return
        assert response.status == 100
        response = reader.read()
        assert (response.status, response.header("Connection")) == (200, None)
        sock.sendall(BODY)
        sock.sendall(b"GET /next HTTP/1.1\r\nHost: test.local\r\n\r\n")
        assert reader.read().status == 200
    assert [seen.target for seen in backend.heads] == ["/expect", "/next"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_uploads_answered_early_share_one_connection(
    backends: MakeBackend, portico: MakePortico, tmp_path: Path
) -> None:
    # the issue's trial: keep-alive POSTs with curl to a server answering at once (NGINX's
    # `return 200`, which sends 100 Continue to an Expect first); 2 MiB bodies make curl
    # send Expect: 100-continue, 1 MiB ones do not
    backend = early_backend(backends)
    backend.continue_on_expect = True
    proxy = portico(simple_config([backend]))
    small, large = tmp_path / "small", tmp_path / "large"
    small.write_bytes(BODY)
    large.write_bytes(BODY * 2)
    args: list[str] = []
    for index in range(20):
        if args:
            args.append("--next")
        body = small if index % 2 else large
        url = f"http://127.0.0.1:{proxy.port}/up/{index}"
        args += ["-sS", "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\n"]
        args += ["--max-time", "20", "--data-binary", f"@{body}", url]
    done = subprocess.run(["curl", *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert [code for code, _ in rows] == ["200"] * 20
    assert sum(int(connects) for _, connects in rows) == 1  # one connection for all 20


def test_h2_uploads_answered_early_all_get_their_answer_on_one_connection(
    backends: MakeBackend, portico: MakePortico
) -> None:
    backend = early_backend(backends)
    proxy = portico(simple_config([backend], extra_listener="    http2: true\n"))
    with H2Client(connect(proxy.port)) as client:
        for index in range(H2_UPLOADS):
            stream = client.request("POST", f"/up/{index}", end=False)
            # the answer comes while the body is still going: the stream is then reset with
            # NO_ERROR (RFC 9113 §8.1), which must not cost the client the response
            with contextlib.suppress(StreamClosedError):
                client.send(stream, BODY)
            response = client.response(stream)
            assert (response.status, bytes(response.body)) == (200, b"early"), index
            assert response.reset in (None, 0), index
        assert client.get("/after").status == 200
    eventually(lambda: len(backend.heads) == H2_UPLOADS + 1, "every head at the server")
    assert backend.errors == []


def test_over_tls_early_answers_keep_the_connection_or_close_it_cleanly(
    backends: MakeBackend, portico: MakePortico, tmp_path: Path
) -> None:
    # TLS cannot half-close; its close (close_notify, then waiting for the client's) still
    # takes what the client sends meanwhile, so the answer is not lost to a reset either
    ca = trustme.CA()
    cert = ca.issue_cert("up.example.com")
    chain, key = tmp_path / "up.pem", tmp_path / "up.key"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    backend = early_backend(backends)
    tls = (
        "    protocol: https\n    tls:\n"
        f"      certificates:\n        - {{cert: {chain}, key: {key}}}\n"
    )
    proxy = portico(simple_config([backend], extra_listener=tls))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with context.wrap_socket(connect(proxy.port), server_hostname="up.example.com") as sock:
        reader = ResponseReader(sock)
        for index in range(4):
            sock.sendall(upload_head(f"/up/{index}", "length") + BODY[:FIRST])
            response = reader.read()
            assert (response.status, response.header("Connection")) == (200, None), index
            sock.sendall(BODY[FIRST:])
        closing = upload_head("/last", "length").replace(
            b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(closing + BODY[:FIRST])
        response = reader.read()
        assert (response.status, response.header("Connection")) == (200, "close")
        sock.sendall(BODY[FIRST:])  # taken whole: a reset would break this or the read below
        assert sock.recv(1) == b""  # then a clean close
