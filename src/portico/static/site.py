"""A route's `static:` action: the answer to a GET or HEAD from a directory of files.

Owns `StaticSite` (one route's settings, ready) and its `answer`: the file a request names
(`portico.static.paths`), index files, the redirect of a directory named without its final
slash, autoindex, the content type, validators and conditional requests, ranges, precompressed
siblings, Cache-Control, and when the route's pool gets the request instead (`try_files:
fallback`). An answer is a `StaticReply` value whose body is bytes or a streaming file body
(`portico.static.files`); the protocol edges send it. Never touches a socket.
"""

from __future__ import annotations

import functools
import html
import mimetypes
import os
import secrets
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote

from portico.compression.negotiate import CODINGS, accepted_codings, choose_coding
from portico.compression.policy import DEFAULT_TYPES, TypeSet, merge_vary
from portico.config.content import CompressionConfig, StaticConfig
from portico.http.headers import Header
from portico.http.local import LocalResponse, local_response
from portico.static.conditional import (
    UNSATISFIABLE,
    WHOLE,
    byte_ranges,
    http_date,
    make_etag,
    preconditions,
)
from portico.static.files import FileBody, MultipartBody
from portico.static.paths import (
    Missing,
    Opened,
    Refused,
    open_under,
    request_segments,
)

__all__ = ["SIBLING_SUFFIXES", "StaticReply", "StaticSite", "content_type", "static_site"]

SIBLING_SUFFIXES: Final = {"zstd": ".zst", "br": ".br", "gzip": ".gz"}

# Python's own table, not the host's /etc/mime.types: the same answer on every machine
_TYPES: Final = mimetypes.MimeTypes()
for _type, _ext in (
    ("text/javascript", ".js"),  # RFC 9239
    ("text/javascript", ".mjs"),
    ("application/wasm", ".wasm"),
    ("image/svg+xml", ".svg"),
    ("application/manifest+json", ".webmanifest"),
    ("text/markdown", ".md"),
    ("image/webp", ".webp"),
    ("image/avif", ".avif"),
    ("font/woff2", ".woff2"),
    ("font/woff", ".woff"),
):
    _TYPES.add_type(_type, _ext)
_CHARSET_TYPES: Final = frozenset(
    {"application/json", "application/manifest+json", "application/xml", "image/svg+xml"}
)


def content_type(name: str) -> bytes:
    """The Content-Type of a file named `name`, with `charset=utf-8` for text;
    application/octet-stream when the extension says nothing."""
    return _type_of_extension(os.path.splitext(name)[1].lower())


@functools.lru_cache(maxsize=256)
def _type_of_extension(extension: str) -> bytes:
    guessed, _ = _TYPES.guess_type("x" + extension, strict=False)
    if guessed is None:
        return b"application/octet-stream"
    if guessed.startswith("text/") or guessed in _CHARSET_TYPES:
        return (guessed + "; charset=utf-8").encode("ascii")
    return guessed.encode("ascii")


@dataclass(frozen=True, slots=True)
class StaticReply:
    """A static answer: a status, end-to-end headers (Content-Length included when there is
    a body), and the body: bytes, or a file body the edge streams (and must close).
    `served`: the path and identity (device, inode, size, mtime) of a small file read whole
    into a 200, for `SmallFiles`."""

    status: int
    headers: list[Header]
    body: bytes | FileBody | MultipartBody = b""
    served: tuple[str, tuple[int, int, int, int]] | None = None


def _identity(info: os.stat_result) -> tuple[int, int, int, int]:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


class SmallFiles:
    """Answers of small files (read whole, up to SMALL_FILE), remembered by request target
    and Accept-Encoding for `TTL` seconds, and only while a stat(2) of the file finds it
    unchanged (same inode, size and modification time): a file replaced or edited is read
    again at once; an index or sibling file added is noticed within `TTL`. Bounded: at most
    `MAX_BYTES` of bodies. Requests with conditions or ranges never use it."""

    TTL: Final = 2.0
    MAX_BYTES: Final = 4 * 1024 * 1024

    __slots__ = ("_entries", "_size")

    def __init__(self) -> None:
        # key -> (path, identity, the answer, when it was made)
        self._entries: dict[
            tuple[bytes, bytes], tuple[str, tuple[int, int, int, int], LocalResponse, float]
        ] = {}
        self._size = 0

    def get(self, key: tuple[bytes, bytes]) -> LocalResponse | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        path, identity, answer, made = entry
        try:
            fresh = time.monotonic() - made < self.TTL and _identity(os.stat(path)) == identity
        except OSError:
            fresh = False
        if not fresh:
            self._drop(key)
            return None
        return answer

    def put(
        self,
        key: tuple[bytes, bytes],
        served: tuple[str, tuple[int, int, int, int]],
        answer: LocalResponse,
    ) -> None:
        self._drop(key)
        self._entries[key] = (served[0], served[1], answer, time.monotonic())
        self._size += len(answer.body)
        while self._size > self.MAX_BYTES and self._entries:
            self._drop(next(iter(self._entries)))  # the oldest first

    def _drop(self, key: tuple[bytes, bytes]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._size -= len(entry[2].body)


def _plain_request(headers: Sequence[Header]) -> bytes | None:
    """The Accept-Encoding of a request without conditions or ranges (b"" without one);
    None when it has an If-* or Range field (answered fresh every time)."""
    accept = b""
    for name, value in headers:
        low = name.lower()
        if low.startswith(b"if-") or low == b"range":
            return None
        if low == b"accept-encoding":
            accept = accept + b"," + value if accept else value
    return accept


def _plain(status: int, text: bytes, extra: Sequence[Header] = ()) -> StaticReply:
    body = text + b"\n"
    return StaticReply(
        status,
        [
            (b"Content-Type", b"text/plain; charset=utf-8"),
            *extra,
            (b"Content-Length", b"%d" % len(body)),
        ],
        body,
    )


_NOT_FOUND: Final = (404, b"404 Not Found")
_FORBIDDEN: Final = (403, b"403 Forbidden")


@dataclass(frozen=True, slots=True)
class StaticSite:
    """One route's `static:` settings, ready to answer."""

    root: str  # absolute and resolved
    index: tuple[str, ...] = ("index.html",)
    fallback: bool = False  # try_files: a missing file goes to the route's pool
    follow_symlinks: bool = False
    autoindex: bool = False
    cache_control: bytes | None = None
    precompressed: tuple[str, ...] = CODINGS  # sibling codings looked for, in preference order
    types: TypeSet = field(default_factory=lambda: TypeSet.of(DEFAULT_TYPES))
    small: SmallFiles = field(default_factory=SmallFiles, compare=False, repr=False)

    def answer(self, method: bytes, target: bytes, headers: Sequence[Header]) -> StaticReply | None:
        """The answer to this request, or None when it goes to the route's pool instead
        (`fallback`: a missing file, or a method other than GET and HEAD)."""
        if method != b"GET" and method != b"HEAD":
            if self.fallback:
                return None
            return _plain(405, b"405 Method Not Allowed", [(b"Allow", b"GET, HEAD")])
        try:
            segments = request_segments(target)
            opened = open_under(self.root, segments, self.follow_symlinks)
        except Missing:
            return None if self.fallback else _plain(*_NOT_FOUND)
        except Refused as refused:
            return _plain(*(_FORBIDDEN if refused.status == 403 else _NOT_FOUND))
        if opened.is_dir:
            return self._directory(method, target, headers, opened)
        return self._file(method, headers, opened, segments[-1] if segments else "")

    def local_answer(
        self, method: bytes, target: bytes, headers: Sequence[Header]
    ) -> LocalResponse | None:
        """`answer` as the proxy sends it: a `LocalResponse` whose file body is streamed
        (and closed) by the edge; None when the route's pool gets the request."""
        accept = _plain_request(headers) if method == b"GET" or method == b"HEAD" else None
        if accept is not None:
            remembered = self.small.get((target, accept))
            if remembered is not None:
                return remembered
        reply = self.answer(method, target, headers)
        if reply is None:
            return None
        answer = local_response(reply.status, reply.headers, reply.body)
        if accept is not None and reply.served is not None:
            self.small.put((target, accept), reply.served, answer)
        return answer

    def _directory(
        self, method: bytes, target: bytes, headers: Sequence[Header], opened: Opened
    ) -> StaticReply | None:
        path, mark, query = target.partition(b"?")
        if not path.endswith(b"/"):
            os.close(opened.fd)
            # relative links in the page resolve against the directory only with the slash.
            # A relative Location ("./docs/"): the client's path may have a prefix the route
            # stripped, which `target` no longer shows
            last = path.rsplit(b"/", 1)[1]
            location = b"./" + last + b"/" + (mark + query if mark else b"")
            return _plain(301, b"301 Moved Permanently", [(b"Location", location)])
        for name in self.index:
            try:
                found = open_under(self.root, (*opened.segments, name), self.follow_symlinks)
            except Refused:
                continue
            if found.is_file:
                os.close(opened.fd)
                return self._file(method, headers, found, name)
            os.close(found.fd)
        if self.autoindex:
            try:
                return self._listing(method, path, opened)
            finally:
                os.close(opened.fd)
        os.close(opened.fd)
        return None if self.fallback else _plain(*_FORBIDDEN)

    def _listing(self, method: bytes, path: bytes, opened: Opened) -> StaticReply:
        """An HTML page naming the directory's entries (hidden ones left out), every name
        HTML-escaped and every link percent-encoded."""
        entries: list[tuple[str, bool]] = []
        with os.scandir(opened.fd) as scan:
            for entry in scan:
                if entry.name.startswith("."):
                    continue
                try:
                    is_dir = stat.S_ISDIR(entry.stat(follow_symlinks=self.follow_symlinks).st_mode)
                except OSError:
                    continue
                entries.append((entry.name, is_dir))
        entries.sort()
        title = html.escape(path.decode("utf-8", "replace"))
        lines = [
            "<!DOCTYPE html>",
            f"<html><head><meta charset=utf-8><title>Index of {title}</title></head>",
            f"<body><h1>Index of {title}</h1><ul>",
        ]
        if opened.segments:
            lines.append('<li><a href="../">../</a></li>')
        for name, is_dir in entries:
            slash = "/" if is_dir else ""
            href = html.escape(quote(name, safe="") + slash, quote=True)
            lines.append(f'<li><a href="{href}">{html.escape(name)}{slash}</a></li>')
        lines.append("</ul></body></html>\n")
        body = "\n".join(lines).encode("utf-8")
        fields: list[Header] = [(b"Content-Type", b"text/html; charset=utf-8")]
        if self.cache_control is not None:
            fields.append((b"Cache-Control", b"no-cache"))
        fields.append((b"Content-Length", b"%d" % len(body)))
        return StaticReply(200, fields, b"" if method == b"HEAD" else body)

    def _sibling(
        self, opened: Opened, name: str, headers: Iterable[Header]
    ) -> tuple[str, Opened] | None:
        """The precompressed sibling (`name.br`, ...) this client gets, opened, if any."""
        accepted = accepted_codings(v for n, v in headers if n.lower() == b"accept-encoding")
        if not accepted:
            return None
        found: dict[str, Opened] = {}
        try:
            for coding in self.precompressed:
                if choose_coding(accepted, (coding,)) is None:
                    continue
                segments = (*opened.segments[:-1], name + SIBLING_SUFFIXES[coding])
                try:
                    sibling = open_under(self.root, segments, self.follow_symlinks)
                except Refused:
                    continue
                if sibling.is_file:
                    found[coding] = sibling
                else:
                    os.close(sibling.fd)
            chosen = choose_coding(accepted, tuple(found))
            return None if chosen is None else (chosen, found.pop(chosen))
        finally:
            for other in found.values():
                os.close(other.fd)

    def _file(
        self, method: bytes, headers: Sequence[Header], opened: Opened, name: str
    ) -> StaticReply:
        fields: list[Header] = []
        ctype = content_type(name)
        served = opened
        compressible = bool(self.precompressed) and _listed(self.types, ctype)
        if compressible and opened.segments:
            sibling = self._sibling(opened, opened.segments[-1], headers)
            if sibling is not None:
                coding, served = sibling
                os.close(opened.fd)
                fields.append((b"Content-Encoding", coding.encode("ascii")))
        fd = served.fd
        served_segments = served.segments
        try:
            info = served.stat
            size = info.st_size
            mtime = int(info.st_mtime)
            etag = make_etag(size, info.st_mtime_ns)
            fields += [
                (b"Last-Modified", http_date(mtime)),
                (b"ETag", etag),
                (b"Accept-Ranges", b"bytes"),
            ]
            if self.cache_control is not None:
                fields.append((b"Cache-Control", self.cache_control))
            if compressible:
                fields = merge_vary(fields)
            verdict = preconditions(method, headers, etag, mtime)
            if verdict == 304:
                return StaticReply(304, fields)
            if verdict == 412:
                return _plain(412, b"412 Precondition Failed")
            ranges = byte_ranges(method, headers, size, etag, mtime)
            if ranges is UNSATISFIABLE:
                return _plain(
                    416, b"416 Range Not Satisfiable", [(b"Content-Range", b"bytes */%d" % size)]
                )
            if method == b"HEAD":
                fields = [(b"Content-Type", ctype), *fields, (b"Content-Length", b"%d" % size)]
                return StaticReply(200, fields)
            if ranges is WHOLE:
                fields = [(b"Content-Type", ctype), *fields, (b"Content-Length", b"%d" % size)]
                body = _body(fd, 0, size)
                identity = None
                if isinstance(body, bytes):
                    identity = (os.path.join(self.root, *served_segments), _identity(info))
                reply = StaticReply(200, fields, body, identity)
            elif len(ranges) == 1:
                first, last = ranges[0]
                fields = [
                    (b"Content-Type", ctype),
                    *fields,
                    (b"Content-Range", b"bytes %d-%d/%d" % (first, last, size)),
                    (b"Content-Length", b"%d" % (last - first + 1)),
                ]
                reply = StaticReply(206, fields, _body(fd, first, last - first + 1))
            else:
                boundary = secrets.token_hex(12).encode("ascii")
                parts = [
                    (
                        b"\r\n--%s\r\nContent-Type: %s\r\nContent-Range: bytes %d-%d/%d\r\n\r\n"
                        % (boundary, ctype, first, last, size),
                        first,
                        last,
                    )
                    for first, last in ranges
                ]
                multipart = MultipartBody(fd, parts, b"\r\n--%s--\r\n" % boundary)
                assert multipart.length is not None
                fields = [
                    (b"Content-Type", b"multipart/byteranges; boundary=" + boundary),
                    *fields,
                    (b"Content-Length", b"%d" % multipart.length),
                ]
                reply = StaticReply(206, fields, multipart)
            if not isinstance(reply.body, bytes):
                fd = -1  # the body owns it now (else it was read whole: closed below)
            return reply
        finally:
            if fd >= 0:
                os.close(fd)


@functools.lru_cache(maxsize=256)
def _listed(types: TypeSet, ctype: bytes) -> bool:
    return ctype.decode("ascii") in types


SMALL_FILE: Final = 32 * 1024  # read whole into the answer: one write, no streaming


def _body(fd: int, offset: int, count: int) -> bytes | FileBody:
    """`count` bytes of `fd` from `offset`: read now when small (answered in one write, like
    any local answer), else a `FileBody` that the edge streams or sendfiles."""
    if count <= SMALL_FILE:
        data = os.pread(fd, count, offset)
        if len(data) == count:
            return data
    return FileBody(fd, offset, count)


def static_site(config: StaticConfig, compression: CompressionConfig | None = None) -> StaticSite:
    """A route's `static:` section, ready; precompressed siblings are looked for in the
    order of the route's (or listener's) `compression.algorithms`, else zstd, br, gzip."""
    cache = config.cache_control
    order = tuple(compression.algorithms) if compression is not None else CODINGS
    types = TypeSet.of(compression.types) if compression is not None else TypeSet.of(DEFAULT_TYPES)
    return StaticSite(
        root=config.root,
        index=tuple(config.index),
        fallback=config.try_files == "fallback",
        follow_symlinks=config.follow_symlinks,
        autoindex=config.autoindex,
        cache_control=cache.header().encode("ascii") if cache is not None else None,
        precompressed=order if config.precompressed else (),
        types=types,
    )
