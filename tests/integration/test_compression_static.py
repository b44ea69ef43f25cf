"""Response compression and static content (#13), end to end through `portico run`: HTTP/1.1
(raw sockets and curl, which decodes gzip, br and zstd itself) and HTTP/2 (h2c and over TLS),
every body decoded by the client and compared byte for byte with the original.

One Portico serves every test of the module (one worker): a plain listener with h2c and
compression, and a TLS one with HTTP/2, both with static routes in front of one server.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import brotli
import pytest
import trustme
import zstandard

from fakes import (
    FakeBackend,
    Portico,
    Reply,
    Response,
    ResponseReader,
    Seen,
    connect,
    eventually,
    read_until_closed,
)
from h2client import H2Client, H2Response, tls_client_socket

SITE = "a.example.com"
MiB = 1024 * 1024
CODINGS = ["gzip", "br", "zstd"]


def decode(coding: str | None, data: bytes) -> bytes:
    if coding is None:
        return data
    if coding == "gzip":
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    if coding == "br":
        return bytes(brotli.decompress(data))
    assert coding == "zstd"
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def json_body(size: int) -> bytes:
    rng = random.Random(size)
    out = bytearray(b"[")
    while len(out) < size - 1:
        out += json.dumps({"id": rng.randrange(10**6), "name": rng.choice("abcdef") * 5}).encode()
        out += b","
    return bytes(out[: size - 1]) + b"]"


TEXT = ("Portico serves this file. " * 4000).encode()  # ~100 KiB of text
PNG = b"\x89PNG\r\n\x1a\n" + random.Random(3).randbytes(50_000)
EVENTS = [b"data: first\n\n", b"data: second\n\n"]


def origin(release: threading.Event) -> Callable[[Seen], Reply]:
    def handle(seen: Seen) -> Reply:
        path = seen.target.split("?")[0]
        if path.startswith("/json/"):
            body = json_body(int(path.rsplit("/", 1)[1]))
            return Reply(
                headers=[("Content-Type", "application/json"), ("ETag", '"v1"')], body=body
            )
        if path == "/chunked-json":
            body = json_body(200_000)
            pieces = [body[i : i + 30_000] for i in range(0, len(body), 30_000)]
            return Reply(
                headers=[("Content-Type", "application/json")], body=pieces, framing="chunked"
            )
        if path == "/trailers":  # large chunks (compressed in a worker thread), then trailers
            body = json_body(600_000)
            pieces = [body[i : i + 100_000] for i in range(0, len(body), 100_000)]
            fields = [("Content-Type", "application/json"), ("Trailer", "X-Checksum")]
            return Reply(
                headers=fields, body=pieces, framing="chunked", trailers=[("X-Checksum", "42")]
            )
        if path == "/small-chunks":  # many small chunks per server read: more pieces in
            # one turn of the loop than its compression budget (TurnBudget), so some wait
            body = json_body(600_000)
            pieces = [body[i : i + 8_000] for i in range(0, len(body), 8_000)]
            fields = [("Content-Type", "application/json"), ("Trailer", "X-Checksum")]
            return Reply(
                headers=fields, body=pieces, framing="chunked", trailers=[("X-Checksum", "7")]
            )
        if path == "/png":
            return Reply(headers=[("Content-Type", "image/png")], body=PNG)
        if path == "/encoded":
            body = zlib.compress(TEXT)
            return Reply(
                headers=[("Content-Type", "text/plain"), ("Content-Encoding", "deflate")], body=body
            )
        if path == "/no-transform":
            fields = [("Content-Type", "text/plain"), ("Cache-Control", "no-transform")]
            return Reply(headers=fields, body=TEXT)
        if path == "/partial":
            fields = [("Content-Type", "text/plain"), ("Content-Range", "bytes 0-99/1000")]
            return Reply(status=206, headers=fields, body=TEXT[:100])
        if path == "/slow-json":  # a server that stalls before its last piece
            pieces = [json_body(50_000), b" " * 1000]
            fields = [("Content-Type", "application/json")]
            return Reply(headers=fields, body=pieces, framing="chunked", hold_last=release)
        if path == "/events":
            fields = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
            return Reply(headers=fields, body=EVENTS, framing="chunked", hold_last=release)
        return Reply(
            headers=[("Content-Type", "text/plain")], body=b"from the pool " + path.encode()
        )

    return handle


@dataclass
class Site:
    proxy: Portico
    port: int  # plain: HTTP/1.1 and h2c
    tls_port: int
    admin: int
    root: Path
    outside: Path
    backend: FakeBackend
    release: threading.Event
    ca: trustme.CA


def build_root(base: Path) -> tuple[Path, Path]:
    root = base / "www"
    outside = base / "outside"
    for d in (root / "docs", root / "empty", root / ".git", root / "list", outside):
        d.mkdir(parents=True)
    (root / "page.txt").write_bytes(TEXT)
    (root / "index.html").write_bytes(b"<h1>home</h1>\n" * 200)
    (root / "docs" / "index.html").write_bytes(b"<h1>docs</h1>\n")
    (root / "app.js").write_bytes(b"console.log('hi');\n" * 500)
    (root / "app.js.br").write_bytes(brotli.compress((root / "app.js").read_bytes()))
    (root / "app.js.gz").write_bytes(b"a sibling that is not chosen")
    (root / "pic.png").write_bytes(PNG)
    (root / "big.bin").write_bytes(random.Random(9).randbytes(3 * MiB))
    (root / ".git" / "config").write_bytes(b"[core] secret")
    (root / ".env").write_bytes(b"SECRET=1")
    (root / "list" / "<script>x.txt").write_bytes(b"odd name")
    (root / "list" / "plain.txt").write_bytes(b"plain")
    with open(root / "huge.bin", "wb") as sparse:  # 1 GiB that takes no disk space
        sparse.truncate(1024 * MiB)
    (outside / "secret.txt").write_bytes(b"outside secret")
    os.symlink(outside / "secret.txt", root / "escape.txt")
    os.symlink(outside, root / "escape-dir")
    os.symlink(root / "page.txt", root / "inside-link.txt")
    return root, outside


def config(root: Path, backend: FakeBackend, cert: Path, key: Path) -> str:
    routes = f"""
    routes:
      - match: {{path_prefix: /files/}}
        strip_prefix: /files
        static:
          root: {root}
          cache_control: {{max_age: 1y, immutable: true}}
      - match: {{path_prefix: /spa/}}
        strip_prefix: /spa
        static: {{root: {root}, try_files: fallback}}
        pool: app
      - match: {{path_prefix: /auto/}}
        strip_prefix: /auto
        static: {{root: {root}, autoindex: true, index: []}}
      - match: {{path_prefix: /links/}}
        strip_prefix: /links
        static: {{root: {root}, follow_symlinks: true}}
      - match: {{path_prefix: /gzip-9/}}
        strip_prefix: /gzip-9
        pool: app
        compression: {{algorithms: [gzip], levels: {{gzip: 9}}}}
      - match: {{path_prefix: /gzip-only/}}
        strip_prefix: /gzip-only
        pool: app
        compression: {{algorithms: [gzip], min_size: 10}}
"""
    return f"""
workers: 1
admin: {{bind: 127.0.0.1:0}}
listeners:
  - name: web
    bind: 127.0.0.1:0
    default_pool: app
    http2: true
    compression: {{algorithms: [zstd, br, gzip], min_size: 1KiB}}
{routes}
  - name: secure
    bind: 127.0.0.1:0
    protocol: https
    default_pool: app
    http2: true
    compression: true
    tls:
      certificates: [{{cert: {cert}, key: {key}}}]
{routes}
pools:
  app:
    servers: [{{address: {backend.address}}}]
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("static")
    root, outside = build_root(base)
    ca = trustme.CA()
    issued = ca.issue_cert(SITE)
    cert, key = base / "a.pem", base / "a.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    key.write_bytes(issued.private_key_pem.bytes())
    release = threading.Event()
    backend = FakeBackend("origin", origin(release))
    try:
        proxy = Portico(config(root, backend, cert, key), base)
    except BaseException:
        backend.stop()
        raise
    ports = [int(p) for p in re.findall(r"https?://[\d.]+:(\d+)", proxy.ready_line)]
    try:
        yield Site(proxy, ports[0], ports[1], ports[2], root, outside, backend, release, ca)
    finally:
        proxy.stop()
        backend.stop()


# -- clients -----------------------------------------------------------------------------------


def get(
    port: int, target: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> Response:
    """One HTTP/1.1 request on a fresh connection, the target sent exactly as given."""
    with connect(port) as sock:
        fields = {"Host": "test.local", **(headers or {})}
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in fields.items()
        )
        if method == "HEAD":  # the parser would wait for the body Content-Length announces
            sock.sendall(head.encode("latin-1") + b"Connection: close\r\n\r\n")
            return parse_head_only(read_until_closed(sock))
        sock.sendall(head.encode("latin-1") + b"\r\n")
        return ResponseReader(sock).read()


def parse_head_only(raw: bytes) -> Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    line, *fields = head.decode("latin-1").split("\r\n")
    pairs = [tuple(f.split(": ", 1)) for f in fields]
    return Response(int(line.split()[1]), [(k, v) for k, v in pairs], body)


def h2_get(
    site: Site, path: str, headers: dict[str, str] | None = None, tls: bool = False
) -> H2Response:
    if tls:
        context = ssl.create_default_context()
        site.ca.configure_trust(context)
        context.set_alpn_protocols(["h2"])
        sock = tls_client_socket(site.tls_port, context, SITE)
        client = H2Client(sock, scheme="https", authority=SITE)
    else:
        client = H2Client(connect(site.port))
    with client:
        return client.get(path, headers=list((headers or {}).items()))


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=30, check=True
    )


# -- compression of proxied responses ------------------------------------------------------------


@pytest.mark.parametrize("coding", CODINGS)
def test_http11_responses_are_compressed_and_decode_to_the_original(
    site: Site, coding: str
) -> None:
    response = get(site.port, "/json/100000", {"Accept-Encoding": coding})
    assert response.status == 200
    assert response.header("Content-Encoding") == coding
    assert response.header("Transfer-Encoding") == "chunked"
    assert response.header("Content-Length") is None
    assert response.header("Vary") == "Accept-Encoding"
    assert response.header("ETag") == 'W/"v1"'
    assert decode(coding, response.body) == json_body(100_000)
    assert len(response.body) < 60_000


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("version", ["--http1.1", "--http2-prior-knowledge"])
def test_curl_decodes_each_coding(site: Site, coding: str, version: str) -> None:
    out = curl(
        version,
        "--compressed",
        "-H",
        f"Accept-Encoding: {coding}",
        "-D",
        "-",
        f"http://127.0.0.1:{site.port}/chunked-json",
    )
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert f"content-encoding: {coding}".encode() in head.lower()
    assert body == json_body(200_000)


def test_preferences_and_configured_order(site: Site) -> None:
    assert (
        get(site.port, "/json/5000", {"Accept-Encoding": "gzip, br, zstd"}).header(
            "Content-Encoding"
        )
        == "zstd"
    )
    assert (
        get(site.port, "/json/5000", {"Accept-Encoding": "gzip;q=1, br;q=0.5"}).header(
            "Content-Encoding"
        )
        == "gzip"
    )
    assert (
        get(site.port, "/json/5000", {"Accept-Encoding": "*;q=0.1, zstd;q=0"}).header(
            "Content-Encoding"
        )
        == "br"
    )
    plain = get(site.port, "/json/5000", {"Accept-Encoding": "gzip;q=0.5, identity"})
    assert plain.header("Content-Encoding") is None
    assert plain.body == json_body(5000)
    assert plain.header("Vary") == "Accept-Encoding"
    route = get(site.port, "/gzip-only/json/50", {"Accept-Encoding": "zstd, br, gzip"})
    assert route.header("Content-Encoding") == "gzip"  # the route's own settings
    assert decode("gzip", route.body) == json_body(50)


@pytest.mark.parametrize(
    ("target", "headers", "method"),
    [
        ("/png", {}, "GET"),
        ("/encoded", {}, "GET"),
        ("/no-transform", {}, "GET"),
        ("/partial", {}, "GET"),
        ("/json/500", {}, "GET"),  # below min_size
        ("/json/5000", {"Range": "bytes=0-10"}, "GET"),
        ("/json/5000", {}, "HEAD"),
    ],
)
def test_never_compressed(site: Site, target: str, headers: dict[str, str], method: str) -> None:
    response = get(site.port, target, {"Accept-Encoding": "gzip, br, zstd", **headers}, method)
    assert response.header("Content-Encoding") in (None, "deflate")
    if target == "/encoded":
        assert zlib.decompress(response.body) == TEXT
    if method == "GET" and target == "/png":
        assert response.body == PNG


@pytest.mark.parametrize("coding", CODINGS)
def test_http2_responses_are_compressed(site: Site, coding: str) -> None:
    response = h2_get(site, "/chunked-json", {"accept-encoding": coding})
    assert response.status == 200
    assert response.header("content-encoding") == coding
    assert response.header("content-length") is None
    assert decode(coding, bytes(response.body)) == json_body(200_000)


@pytest.mark.parametrize(
    ("prefix", "coding"),
    [("/gzip-9", "gzip"), ("", "br"), ("", "zstd")],  # gzip 9: 100 KB pieces go to a thread
)
def test_large_pieces_compressed_off_the_loop_keep_their_order_and_trailers(
    site: Site, prefix: str, coding: str
) -> None:
    target = prefix + "/trailers"
    response = h2_get(site, target, {"accept-encoding": coding, "te": "trailers"})
    assert response.header("content-encoding") == coding
    assert decode(coding, bytes(response.body)) == json_body(600_000)
    assert (b"x-checksum", b"42") in response.trailers
    plain = get(site.port, target, {"Accept-Encoding": coding})
    assert decode(coding, plain.body) == json_body(600_000)
    static = get(site.port, "/gzip-9/json/300000", {"Accept-Encoding": "gzip"})
    assert decode("gzip", static.body) == json_body(300_000)


def test_concurrent_responses_past_the_loops_budget_keep_their_bytes_in_order(
    site: Site,
) -> None:
    """Small pieces that do not fit one turn's compression budget wait for a later turn (or
    go to a thread with the pieces queued behind them): every body still decodes whole and
    in order, trailers last, over HTTP/1.1 and HTTP/2 at once."""
    with ThreadPoolExecutor(max_workers=6) as pool:
        plain = [
            pool.submit(get, site.port, "/gzip-9/small-chunks", {"Accept-Encoding": "gzip"})
            for _ in range(4)
        ]
        framed = [
            pool.submit(h2_get, site, "/small-chunks", {"accept-encoding": c, "te": "trailers"})
            for c in ("gzip", "zstd")
        ]
        for future in plain:
            assert decode("gzip", future.result().body) == json_body(600_000)
        for future, coding in zip(framed, ("gzip", "zstd"), strict=True):
            response = future.result()
            assert response.header("content-encoding") == coding
            assert decode(coding, bytes(response.body)) == json_body(600_000)
            assert (b"x-checksum", b"7") in response.trailers


def test_http2_over_tls(site: Site) -> None:
    response = h2_get(site, "/json/30000", {"accept-encoding": "br"}, tls=True)
    assert response.header("content-encoding") == "br"
    assert decode("br", bytes(response.body)) == json_body(30_000)


def test_a_stalled_servers_compressed_bytes_still_reach_the_client(site: Site) -> None:
    """Not a stream: the compressor is not flushed after every read (that costs CPU and
    ratio), but what it holds goes out soon when the server stalls, decodable."""
    site.release.clear()
    with connect(site.port) as sock:
        sock.sendall(b"GET /slow-json HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n")
        raw, text = b"", b""
        deadline = time.monotonic() + 10
        while len(text) < 50_000:
            assert time.monotonic() < deadline, "the compressed bytes were held back"
            raw += sock.recv(65536)
            head, sep, rest = raw.partition(b"\r\n\r\n")
            if sep and rest:
                assert b"Content-Encoding: gzip" in head
                decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
                text = decoder.decompress(dechunk(rest))
        assert text == json_body(50_000)
        site.release.set()
        while not raw.endswith(b"0\r\n\r\n"):
            assert time.monotonic() < deadline
            raw += sock.recv(65536)
        body = raw.partition(b"\r\n\r\n")[2]
        assert decode("gzip", dechunk(body)) == json_body(50_000) + b" " * 1000


def test_event_streams_are_flushed_per_event(site: Site) -> None:
    """The first event reaches the client, decodable, while the server holds the second."""
    site.release.clear()
    with connect(site.port) as sock:
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n")
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        raw, text = b"", b""
        deadline = time.monotonic() + 10
        while b"first" not in text:
            assert time.monotonic() < deadline, "the first event was held back"
            raw += sock.recv(65536)
            head, sep, rest = raw.partition(b"\r\n\r\n")
            if not sep:
                continue
            assert b"Content-Encoding: gzip" in head
            text = decoder.decompress(dechunk(rest)) if rest else b""
            decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        site.release.set()
        while not raw.endswith(b"0\r\n\r\n"):
            assert time.monotonic() < deadline
            raw += sock.recv(65536)
        body = raw.partition(b"\r\n\r\n")[2]
        assert decode("gzip", dechunk(body)) == b"".join(EVENTS)


def dechunk(data: bytes) -> bytes:
    """The payload of complete chunks in `data` (an incomplete last chunk is left out)."""
    out = bytearray()
    while True:
        line, sep, rest = data.partition(b"\r\n")
        if not sep:
            return bytes(out)
        size = int(line, 16)
        if size == 0 or len(rest) < size + 2:
            return bytes(out)
        out += rest[:size]
        data = rest[size + 2 :]


# -- static files ----------------------------------------------------------------------------------


def test_a_static_file_with_its_validators(site: Site) -> None:
    response = get(site.port, "/files/page.txt")
    assert response.status == 200
    assert response.body == TEXT
    assert response.header("Content-Type") == "text/plain; charset=utf-8"
    assert response.header("Content-Length") == str(len(TEXT))
    assert response.header("Accept-Ranges") == "bytes"
    assert response.header("Cache-Control") == "public, max-age=31536000, immutable"
    etag = response.header("ETag")
    modified = response.header("Last-Modified")
    assert etag is not None
    assert etag.startswith('"')
    assert modified is not None
    assert get(site.port, "/files/page.txt", {"If-None-Match": etag}).status == 304
    assert get(site.port, "/files/page.txt", {"If-Modified-Since": modified}).status == 304
    assert get(site.port, "/files/page.txt", {"If-Match": '"other"'}).status == 412
    old = "Sat, 01 Jan 2000 00:00:00 GMT"
    assert get(site.port, "/files/page.txt", {"If-Unmodified-Since": old}).status == 412
    head = get(site.port, "/files/page.txt", method="HEAD")
    assert head.status == 200
    assert head.body == b""
    assert head.header("Content-Length") == str(len(TEXT))


@pytest.mark.parametrize("coding", CODINGS)
def test_static_files_are_compressed_on_the_fly(site: Site, coding: str) -> None:
    response = get(site.port, "/files/page.txt", {"Accept-Encoding": coding})
    assert response.header("Content-Encoding") == coding
    assert (response.header("ETag") or "").startswith('W/"')
    assert decode(coding, response.body) == TEXT
    h2 = h2_get(site, "/files/page.txt", {"accept-encoding": coding})
    assert decode(coding, bytes(h2.body)) == TEXT


def test_precompressed_sibling_wins_over_on_the_fly(site: Site) -> None:
    original = (site.root / "app.js").read_bytes()
    response = get(site.port, "/files/app.js", {"Accept-Encoding": "br, gzip"})
    assert response.header("Content-Encoding") == "br"
    assert response.header("Vary") == "Accept-Encoding"
    assert response.header("Content-Length") == str((site.root / "app.js.br").stat().st_size)
    assert decode("br", response.body) == original
    for version in ("--http1.1", "--http2-prior-knowledge"):
        url = f"http://127.0.0.1:{site.port}/files/app.js"
        out = curl(version, "--compressed", "-H", "Accept-Encoding: br", url)
        assert out.stdout == original


def test_ranges(site: Site) -> None:
    one = get(site.port, "/files/page.txt", {"Range": "bytes=9-16", "Accept-Encoding": "gzip"})
    assert one.status == 206
    assert one.body == TEXT[9:17]
    assert one.header("Content-Range") == f"bytes 9-16/{len(TEXT)}"
    assert one.header("Content-Encoding") is None
    many = get(site.port, "/files/page.txt", {"Range": "bytes=0-6,-5"})
    assert many.status == 206
    ctype = many.header("Content-Type") or ""
    assert ctype.startswith("multipart/byteranges; boundary=")
    boundary = ctype.split("boundary=")[1].encode()
    assert many.body.count(b"--" + boundary) == 3
    assert b"\r\n\r\nPortico\r\n" in many.body
    assert TEXT[-5:] in many.body
    bad = get(site.port, "/files/page.txt", {"Range": f"bytes={len(TEXT)}-"})
    assert bad.status == 416
    assert bad.header("Content-Range") == f"bytes */{len(TEXT)}"
    stale = get(site.port, "/files/page.txt", {"Range": "bytes=0-3", "If-Range": '"old"'})
    assert stale.status == 200
    assert stale.body == TEXT
    h2 = h2_get(site, "/files/page.txt", {"range": "bytes=0-6"})
    assert h2.status == 206
    assert bytes(h2.body) == b"Portico"


def test_index_redirect_and_autoindex(site: Site) -> None:
    assert get(site.port, "/files/").body == (site.root / "index.html").read_bytes()
    assert get(site.port, "/files/docs/").body == b"<h1>docs</h1>\n"
    moved = get(site.port, "/files/docs?x=1")
    assert moved.status == 301
    assert moved.header("Location") == "./docs/?x=1"  # relative: /files/docs/ for the client
    followed = curl("-L", f"http://127.0.0.1:{site.port}/files/docs")
    assert followed.stdout == b"<h1>docs</h1>\n"
    assert get(site.port, "/files/empty/").status == 403
    listing = get(site.port, "/auto/list/")
    assert listing.status == 200
    page = listing.body.decode()
    assert "&lt;script&gt;x.txt" in page
    assert "<script>" not in page
    assert 'href="plain.txt"' in page


def test_try_files_falls_back_to_the_pool(site: Site) -> None:
    assert get(site.port, "/spa/page.txt").body == TEXT
    fallback = get(site.port, "/spa/app/route/42")
    assert fallback.header("X-Backend") == "origin"
    assert fallback.body == b"from the pool /app/route/42"


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/files/../../etc/passwd", 404),
        ("/files/%2e%2e/%2e%2e/etc/passwd", 404),
        ("/files/%2E%2E%2Fescape", 404),
        ("/files/docs%2f..%2f..%2foutside/secret.txt", 404),
        ("/files/..%5c..%5coutside%5csecret.txt", 404),
        ("/files/page.txt%00.png", 404),
        ("/files/%c0%ae%c0%ae/outside/secret.txt", 404),
        ("/files/%e0%80%ae%e0%80%ae/outside/secret.txt", 404),
        ("/files/.git/config", 404),
        ("/files/.env", 404),
        ("/files/%2egit/config", 404),
        ("/files/escape.txt", 403),
        ("/files/escape-dir/secret.txt", 403),
        ("/spa/escape.txt", 403),  # a refusal never falls back to the pool
        ("/spa/.env", 404),
    ],
)
def test_path_escapes_are_refused(site: Site, target: str, status: int) -> None:
    response = get(site.port, target)
    assert response.status == status
    assert b"secret" not in response.body.lower()
    assert response.header("X-Backend") is None


def test_refusals_over_http2(site: Site) -> None:
    assert h2_get(site, "/files/%2e%2e/%2e%2e/etc/passwd").status == 404
    assert h2_get(site, "/files/escape.txt").status == 403
    assert h2_get(site, "/files/.git/config", tls=True).status == 404


def test_symlinks_inside_are_served_and_follow_symlinks_follows_out(site: Site) -> None:
    assert get(site.port, "/files/inside-link.txt").body == TEXT
    assert get(site.port, "/links/escape.txt").body == b"outside secret"


def test_big_files_whole_over_every_client(site: Site) -> None:
    original = (site.root / "big.bin").read_bytes()
    assert get(site.port, "/files/big.bin").body == original
    assert bytes(h2_get(site, "/files/big.bin").body) == original
    assert bytes(h2_get(site, "/files/big.bin", tls=True).body) == original
    out = curl("-k", f"https://127.0.0.1:{site.tls_port}/files/big.bin", "--http1.1")
    assert out.stdout == original


def test_a_file_replaced_while_served_is_served_whole_from_the_old_copy(site: Site) -> None:
    original = (site.root / "big.bin").read_bytes()
    with connect(site.port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        first = sock.recv(1024)
        assert first.startswith(b"HTTP/1.1 200")
        replacement = site.root / "big.bin.new"
        replacement.write_bytes(b"new")
        os.replace(replacement, site.root / "big.bin")
        try:
            reader = ResponseReader(sock)
            reader.parser.feed_data(first)
            assert reader.read().body == original
        finally:
            (site.root / "big.bin").write_bytes(original)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_no_file_descriptor_is_leaked(site: Site) -> None:
    (worker,) = site.proxy.worker_pids()
    get(site.port, "/files/page.txt")  # warm: lazily opened things are open now
    before = fd_count(worker)
    for _ in range(5):
        get(site.port, "/files/page.txt", {"Range": "bytes=0-1,5-6"})
        get(site.port, "/files/big.bin")
        h2_get(site, "/files/big.bin")
        get(site.port, "/files/page.txt", method="HEAD")
        get(site.port, "/files/missing")
        # a client that leaves in the middle of a big file
        with connect(site.port) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            sock.recv(1000)
    eventually(lambda: fd_count(worker) <= before, f"the worker's fds back to {before}")


def test_compression_metrics(site: Site) -> None:
    get(site.port, "/json/100000", {"Accept-Encoding": "gzip"})

    def gzip_counts() -> tuple[float, float] | None:
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{site.admin}/metrics", timeout=5)
            .read()
            .decode()
        )
        found: dict[str, float] = {}
        for line in text.splitlines():
            match = re.match(
                r'portico_compression_(in|out)_bytes_total\{coding="gzip"\} (\S+)', line
            )
            if match:
                found[match.group(1)] = float(match.group(2))
        if found.get("in", 0) >= 100_000 and "out" in found:
            return found["in"], found["out"]
        return None

    before, after = eventually(gzip_counts, "the gzip byte counters")
    assert 0 < after < before / 2


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("client", ["http11", "h2c", "tls"])
def test_a_huge_file_to_a_slow_client_keeps_the_worker_small(site: Site, client: str) -> None:
    """1 GiB (sparse) to a client reading slowly: the worker never holds more than a few
    pieces of it, whatever the protocol (sendfile, or the bounded read loop)."""
    (worker,) = site.proxy.worker_pids()
    get(site.port, "/files/page.txt")
    before = rss_kib(worker)
    peak = before
    if client == "http11":
        sock: socket.socket = connect(site.port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /files/huge.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        read = sock.recv
    else:
        if client == "tls":
            context = ssl.create_default_context()
            site.ca.configure_trust(context)
            context.set_alpn_protocols(["h2"])
            h2 = H2Client(
                tls_client_socket(site.tls_port, context, SITE), scheme="https", authority=SITE
            )
        else:
            h2 = H2Client(connect(site.port))
        stream = h2.request("GET", "/files/huge.bin")
        sock = h2.sock

        def read(n: int) -> bytes:
            h2.read_once()
            body = h2.streams[stream].body
            taken = bytes(body)
            body.clear()
            h2.conn.acknowledge_received_data(len(taken), stream)
            h2.flush()
            return taken

    received = 0
    deadline = time.monotonic() + 2.0
    with sock:
        while time.monotonic() < deadline:
            received += len(read(65536))
            peak = max(peak, rss_kib(worker))
            time.sleep(0.01)  # a slow reader: the point of the test, not synchronisation
    assert received > 1 * MiB, "the file did not flow at all"
    assert received < 900 * MiB
    assert peak - before < 16 * 1024, f"RSS rose {(peak - before) // 1024} MiB"


def read_calls(pid: int) -> int:
    """The read-like system calls `pid` made (sendfile(2) counts one per call)."""
    with open(f"/proc/{pid}/io") as io:
        for line in io:
            if line.startswith("syscr:"):
                return int(line.split()[1])
    raise AssertionError("no syscr")


def test_plain_http11_sends_files_with_sendfile(site: Site) -> None:
    """256 MiB through the worker in few system calls: sendfile(2) moves the bytes from the
    page cache to the socket in the kernel, 1 MiB a call, where a read loop would make one
    read per 64 KiB piece."""
    (worker,) = site.proxy.worker_pids()
    size = 256 * MiB
    before = read_calls(worker)
    with connect(site.port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MiB)
        sock.sendall(
            b"GET /files/huge.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=0-%d\r\n\r\n" % (size - 1)
        )
        received = 0
        buffer = bytearray(4 * MiB)
        while received < size:
            n = sock.recv_into(buffer)
            assert n, "closed early"
            received += n
    calls = read_calls(worker) - before
    # sendfile: ~one call per 1 MiB piece (274 measured); a read loop: one per 64 KiB (4097)
    assert calls < size // (256 * 1024), f"{calls} read calls for {size // MiB} MiB"
