"""A route's static: action answering from a directory (portico.static.site)."""

from __future__ import annotations

import asyncio
import gzip
import os
from collections.abc import Iterator
from email.parser import BytesParser
from pathlib import Path

import pytest

from portico.http.headers import Header
from portico.static.files import FileBody, MultipartBody
from portico.static.site import StaticReply, StaticSite, content_type

TEXT = b"hello static world\n" * 2000  # above SMALL_FILE: a streamed body


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    www = tmp_path / "www"
    (www / "docs").mkdir(parents=True)
    (www / "empty").mkdir()
    (www / "a.txt").write_bytes(TEXT)
    (www / "index.html").write_bytes(b"<h1>home</h1>")
    (www / "docs" / "index.html").write_bytes(b"<h1>docs</h1>")
    (www / "app.js").write_bytes(b"console.log(1);" * 100)
    (www / "app.js.gz").write_bytes(gzip.compress((www / "app.js").read_bytes()))
    (www / "app.js.br").write_bytes(b"pretend brotli")
    (www / "pic.png").write_bytes(b"\x89PNG" + bytes(100))
    (www / "pic.png.gz").write_bytes(b"never served")
    (www / "<b>&'x\".txt").write_bytes(b"odd")
    (www / ".secret").write_bytes(b"hidden")
    (tmp_path / "outside.txt").write_bytes(b"outside")
    os.symlink(tmp_path / "outside.txt", www / "link.txt")
    before = fds()
    yield www
    assert fds() == before, "a file descriptor was leaked"


def site(www: Path, **options: object) -> StaticSite:
    return StaticSite(root=os.path.realpath(www), **options)  # type: ignore[arg-type]


def get(
    s: StaticSite, target: bytes, *fields: Header, method: bytes = b"GET"
) -> tuple[StaticReply, bytes]:
    reply = s.answer(method, target, list(fields))
    assert reply is not None
    return reply, drain(reply)


def drain(reply: StaticReply) -> bytes:
    body = reply.body
    if isinstance(body, bytes):
        return body

    async def read_all(source: FileBody | MultipartBody) -> bytes:
        out = bytearray()
        try:
            while chunk := await source.read(7):
                out += chunk
        finally:
            source.close()
        return bytes(out)

    data = asyncio.run(read_all(body))
    assert len(data) == body.length
    return data


def header(reply: StaticReply, name: bytes) -> bytes | None:
    values = [v for n, v in reply.headers if n.lower() == name.lower()]
    assert len(values) <= 1
    return values[0] if values else None


def test_a_file_with_its_headers(root: Path) -> None:
    reply, body = get(site(root), b"/a.txt?v=1")
    assert reply.status == 200
    assert body == TEXT
    assert header(reply, b"Content-Type") == b"text/plain; charset=utf-8"
    assert header(reply, b"Content-Length") == b"%d" % len(TEXT)
    assert header(reply, b"Accept-Ranges") == b"bytes"
    assert header(reply, b"ETag") is not None
    assert header(reply, b"Last-Modified") is not None
    assert header(reply, b"Vary") == b"Accept-Encoding"  # text: a sibling may exist
    assert header(reply, b"Cache-Control") is None
    assert isinstance(reply.body, FileBody)


def test_a_small_file_is_read_whole_and_closed_at_once(root: Path) -> None:
    reply, body = get(site(root), b"/index.html")
    assert reply.body == body == b"<h1>home</h1>"
    one, body = get(site(root), b"/a.txt", (b"Range", b"bytes=0-4"))
    assert one.body == body == b"hello"


def test_sendfile_range_of_a_whole_file(root: Path) -> None:
    reply = site(root).answer(b"GET", b"/a.txt", [])
    assert reply is not None
    assert isinstance(reply.body, FileBody)
    fd, offset, count = reply.body.file_range() or (0, 0, 0)
    assert (offset, count) == (0, len(TEXT))
    assert os.pread(fd, 5, 0) == b"hello"
    reply.body.close()
    reply.body.close()  # idempotent
    assert reply.body.file_range() is None


def test_head_has_the_length_but_no_body_and_no_open_file(root: Path) -> None:
    reply, body = get(site(root), b"/a.txt", method=b"HEAD")
    assert reply.status == 200
    assert body == b""
    assert reply.body == b""
    assert header(reply, b"Content-Length") == b"%d" % len(TEXT)


def test_index_and_directory_redirect(root: Path) -> None:
    reply, body = get(site(root), b"/")
    assert body == b"<h1>home</h1>"
    assert header(reply, b"Content-Type").startswith(b"text/html")
    reply, body = get(site(root), b"/docs/")
    assert body == b"<h1>docs</h1>"
    reply, _ = get(site(root), b"/docs?x=1")
    assert reply.status == 301
    assert header(reply, b"Location") == b"./docs/?x=1"
    reply, _ = get(site(root, index=("missing.html", "index.html")), b"/docs/")
    assert reply.status == 200


def test_a_directory_without_index_is_forbidden_unless_autoindex(root: Path) -> None:
    reply, _ = get(site(root), b"/empty/")
    assert reply.status == 403
    reply, body = get(site(root, autoindex=True, index=()), b"/")
    assert reply.status == 200
    assert header(reply, b"Content-Type") == b"text/html; charset=utf-8"
    page = body.decode()
    assert "&lt;b&gt;&amp;&#x27;x&quot;.txt" in page
    assert 'href="%3Cb%3E%26%27x%22.txt"' in page
    assert 'href="docs/"' in page
    assert "secret" not in page
    assert "<b>" not in page


@pytest.mark.parametrize(
    ("target", "status"),
    [
        (b"/../etc/passwd", 404),
        (b"/%2e%2e/%2e%2e/etc/passwd", 404),
        (b"/docs%2f..%2f..%2fetc", 404),
        (b"/..%5c..%5cetc", 404),
        (b"/a.txt%00.png", 404),
        (b"/%c0%ae%c0%ae/etc/passwd", 404),
        (b"/.secret", 404),
        (b"/link.txt", 403),
    ],
)
def test_refusals(root: Path, target: bytes, status: int) -> None:
    reply, body = get(site(root, fallback=True), target)
    assert reply.status == status
    assert b"outside" not in body
    assert b"hidden" not in body


def test_a_missing_file_is_404_without_fallback(root: Path) -> None:
    reply, _ = get(site(root), b"/nope.txt")
    assert reply.status == 404


def test_follow_symlinks(root: Path) -> None:
    _, body = get(site(root, follow_symlinks=True), b"/link.txt")
    assert body == b"outside"


def test_fallback_to_the_pool_for_missing_files_and_other_methods(root: Path) -> None:
    fallback = site(root, fallback=True)
    assert fallback.answer(b"GET", b"/app/route", []) is None
    assert fallback.answer(b"POST", b"/a.txt", []) is None
    assert fallback.answer(b"GET", b"/empty/", []) is None
    reply, _ = get(site(root), b"/a.txt", method=b"POST")
    assert reply.status == 405
    assert header(reply, b"Allow") == b"GET, HEAD"


def test_conditional_requests(root: Path) -> None:
    first, _ = get(site(root), b"/a.txt")
    etag = header(first, b"ETag")
    modified = header(first, b"Last-Modified")
    assert etag is not None
    assert modified is not None
    reply, body = get(site(root), b"/a.txt", (b"If-None-Match", etag))
    assert reply.status == 304
    assert body == b""
    assert header(reply, b"ETag") == etag
    assert header(reply, b"Content-Length") is None
    reply, _ = get(site(root), b"/a.txt", (b"If-Modified-Since", modified))
    assert reply.status == 304
    reply, _ = get(site(root), b"/a.txt", (b"If-Match", b'"nope"'))
    assert reply.status == 412
    reply, _ = get(
        site(root), b"/a.txt", (b"If-Unmodified-Since", b"Sat, 01 Jan 2000 00:00:00 GMT")
    )
    assert reply.status == 412


def test_single_range(root: Path) -> None:
    reply, body = get(site(root), b"/a.txt", (b"Range", b"bytes=6-11"))
    assert reply.status == 206
    assert body == b"static"
    assert header(reply, b"Content-Range") == b"bytes 6-11/%d" % len(TEXT)
    assert header(reply, b"Content-Length") == b"6"


def test_multiple_ranges_as_multipart_byteranges(root: Path) -> None:
    reply, body = get(site(root), b"/a.txt", (b"Range", b"bytes=0-4,-6"))
    assert reply.status == 206
    ctype = header(reply, b"Content-Type")
    assert ctype is not None
    assert ctype.startswith(b"multipart/byteranges; boundary=")
    message = BytesParser().parsebytes(b"Content-Type: " + ctype + b"\r\n\r\n" + body)
    parts = message.get_payload()
    assert isinstance(parts, list)
    assert len(parts) == 2
    assert [p.get_payload(decode=True) for p in parts] == [b"hello", b"world\n"]
    assert parts[0]["Content-Range"] == f"bytes 0-4/{len(TEXT)}"
    assert parts[1]["Content-Type"] == "text/plain; charset=utf-8"


def test_unsatisfiable_range_is_416_with_the_length(root: Path) -> None:
    reply, _ = get(site(root), b"/a.txt", (b"Range", b"bytes=99999-"))
    assert reply.status == 416
    assert header(reply, b"Content-Range") == b"bytes */%d" % len(TEXT)


def test_if_range_with_an_old_etag_gets_the_whole_file(root: Path) -> None:
    reply, body = get(site(root), b"/a.txt", (b"Range", b"bytes=0-4"), (b"If-Range", b'"old"'))
    assert reply.status == 200
    assert body == TEXT


def test_precompressed_siblings_by_accept_encoding(root: Path) -> None:
    s = site(root)
    original = (root / "app.js").read_bytes()
    reply, body = get(s, b"/app.js", (b"Accept-Encoding", b"gzip"))
    assert header(reply, b"Content-Encoding") == b"gzip"
    assert gzip.decompress(body) == original
    assert header(reply, b"Content-Type") == b"text/javascript; charset=utf-8"
    assert header(reply, b"Vary") == b"Accept-Encoding"
    reply, body = get(s, b"/app.js", (b"Accept-Encoding", b"gzip, br"))
    assert header(reply, b"Content-Encoding") == b"br"
    assert body == b"pretend brotli"
    reply, body = get(s, b"/app.js", (b"Accept-Encoding", b"zstd"))
    assert header(reply, b"Content-Encoding") is None
    assert body == original
    reply, body = get(s, b"/app.js")
    assert body == original
    assert header(reply, b"Vary") == b"Accept-Encoding"
    reply, body = get(site(root, precompressed=()), b"/app.js", (b"Accept-Encoding", b"gzip"))
    assert body == original
    assert header(reply, b"Vary") is None


def test_media_never_look_for_siblings(root: Path) -> None:
    reply, body = get(site(root), b"/pic.png", (b"Accept-Encoding", b"gzip"))
    assert body.startswith(b"\x89PNG")
    assert header(reply, b"Vary") is None


def test_cache_control(root: Path) -> None:
    s = site(root, cache_control=b"public, max-age=31536000, immutable")
    reply, _ = get(s, b"/a.txt")
    assert header(reply, b"Cache-Control") == b"public, max-age=31536000, immutable"


def test_a_file_replaced_while_served_is_served_whole_from_the_old_copy(root: Path) -> None:
    reply = site(root).answer(b"GET", b"/a.txt", [])
    assert reply is not None
    replacement = root / "a.txt.new"
    replacement.write_bytes(b"new content")
    os.replace(replacement, root / "a.txt")
    assert drain(reply) == TEXT


def test_a_file_truncated_in_place_fails_rather_than_ending_short(root: Path) -> None:
    reply = site(root).answer(b"GET", b"/a.txt", [])
    assert reply is not None
    with open(root / "a.txt", "r+b") as f:
        f.truncate(10)
    with pytest.raises(OSError, match="shrank"):
        drain(reply)


@pytest.mark.parametrize(
    ("name", "ctype"),
    [
        ("a.html", b"text/html; charset=utf-8"),
        ("a.css", b"text/css; charset=utf-8"),
        ("a.json", b"application/json; charset=utf-8"),
        ("a.svg", b"image/svg+xml; charset=utf-8"),
        ("a.wasm", b"application/wasm"),
        ("a.png", b"image/png"),
        ("a.woff2", b"font/woff2"),
        ("a", b"application/octet-stream"),
        ("a.unknownext", b"application/octet-stream"),
    ],
)
def test_content_types(name: str, ctype: bytes) -> None:
    assert content_type(name) == ctype


def test_small_answers_are_remembered_while_the_file_is_unchanged(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = site(root)
    first = s.local_answer(b"GET", b"/index.html", [])
    assert first is not None
    assert s.local_answer(b"GET", b"/index.html", []) is first
    assert s.local_answer(b"HEAD", b"/index.html", []) is first  # the edge leaves the body out
    # conditions and ranges are answered afresh; another Accept-Encoding is another answer
    etag = dict(first.headers)[b"ETag"]
    assert s.local_answer(b"GET", b"/index.html", [(b"If-None-Match", etag)]).status == 304  # type: ignore[union-attr]
    assert s.local_answer(b"GET", b"/index.html", [(b"Range", b"bytes=0-1")]).status == 206  # type: ignore[union-attr]
    assert s.local_answer(b"GET", b"/index.html", [(b"Accept-Encoding", b"br")]) is not first
    # replaced: read again at once
    (root / "index.new").write_bytes(b"<h1>new home</h1>")
    os.replace(root / "index.new", root / "index.html")
    again = s.local_answer(b"GET", b"/index.html", [])
    assert again is not None
    assert again.body == b"<h1>new home</h1>"
    # and never kept longer than the TTL (a sibling or an index file added is noticed)
    now = [1000.0]
    monkeypatch.setattr("portico.static.site.time.monotonic", lambda: now[0])
    kept = s.local_answer(b"GET", b"/a.txt", [(b"Range", b"bytes=0-0")])  # not kept: a range
    assert kept is not None
    fresh = s.local_answer(b"GET", b"/docs/", [])
    assert s.local_answer(b"GET", b"/docs/", []) is fresh
    now[0] += 3.0
    assert s.local_answer(b"GET", b"/docs/", []) is not fresh
