"""Whether a response is compressed, with which coding, and how its head changes. *pure*

Owns `CompressionSettings` (a listener's or route's `compression:` as the proxy uses it), the
never-compress rules, the content-type list, and the header edits of a compressed response
(Content-Encoding, Vary, a weak ETag, no Content-Length). Never compresses bytes
(`portico.compression.codecs` does) and never touches a connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from portico.compression.negotiate import CODINGS, accepted_codings, choose_coding
from portico.http.headers import Header

__all__ = [
    "DEFAULT_LEVELS",
    "DEFAULT_TYPES",
    "CompressionSettings",
    "Decision",
    "decide",
    "encoded_headers",
    "is_never_compressed_type",
    "merge_vary",
]

DEFAULT_TYPES: Final = (
    "text/*",
    "application/json",
    "application/*+json",
    "application/x-ndjson",
    "application/javascript",
    "application/x-javascript",
    "application/ecmascript",
    "application/xml",
    "application/*+xml",
    "image/svg+xml",
    "application/wasm",
)
"""What is compressed unless `types:` says otherwise: text, JSON, JavaScript, XML, SVG, wasm."""

DEFAULT_LEVELS: Final = {"gzip": 5, "br": 4, "zstd": 3}

_NEVER_PREFIXES: Final = ("image/", "video/", "audio/")
_NEVER_EXCEPT: Final = frozenset({"image/svg+xml"})  # text, however image/ it is named


def is_never_compressed_type(media_type: str) -> bool:
    """Images, video and audio are compressed already (SVG excepted: it is XML text)."""
    media_type = media_type.lower()
    return media_type.startswith(_NEVER_PREFIXES) and media_type not in _NEVER_EXCEPT


@dataclass(frozen=True, slots=True)
class TypeSet:
    """Media types as `text/*`, `application/*+json` or exact names, matched without
    parameters and case."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]  # "text/" from "text/*"
    suffixes: tuple[tuple[str, str], ...]  # ("application/", "+json") from "application/*+json"

    @classmethod
    def of(cls, patterns: Iterable[str]) -> TypeSet:
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[tuple[str, str]] = []
        for pattern in patterns:
            pattern = pattern.lower()
            top, _, sub = pattern.partition("/")
            if sub == "*":
                prefixes.append(top + "/")
            elif sub.startswith("*"):
                suffixes.append((top + "/", sub[1:]))
            else:
                exact.add(pattern)
        return cls(frozenset(exact), tuple(prefixes), tuple(suffixes))

    def __contains__(self, content_type: object) -> bool:
        if not isinstance(content_type, str):
            return False
        media = content_type.partition(";")[0].strip().lower()
        if not media or is_never_compressed_type(media):
            return False
        if media in self.exact or media.startswith(self.prefixes):
            return True
        return any(media.startswith(top) and media.endswith(end) for top, end in self.suffixes)


@dataclass(frozen=True, slots=True)
class CompressionSettings:
    """One listener's or route's `compression:`, ready for the proxy."""

    algorithms: tuple[str, ...] = CODINGS  # offered, in order of preference on ties
    min_size: int = 1024  # a body known to be shorter is sent as it is
    types: TypeSet = field(default_factory=lambda: TypeSet.of(DEFAULT_TYPES))
    levels: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_LEVELS))

    def level(self, coding: str) -> int:
        return self.levels.get(coding, DEFAULT_LEVELS[coding])


@dataclass(frozen=True, slots=True)
class Decision:
    """`coding`: what to compress with (None: send as it is); `vary`: the response depends on
    Accept-Encoding (it would be compressed for another client), so it must say so;
    `streaming`: flush what is compressed after every write (server-sent events)."""

    coding: str | None
    vary: bool
    streaming: bool = False


NO: Final = Decision(None, False)

_STREAMING_TYPES: Final = frozenset({"text/event-stream"})


def decide(
    settings: CompressionSettings,
    method: bytes,
    request_headers: Iterable[Header],
    status: int,
    response_headers: Iterable[Header],
    length: int | None,
) -> Decision:
    """Whether to compress this response, and with what. `length`: the body's, when known.

    Never: HEAD, 1xx/204/304, 206 and requests with Range (the ranges are of the identity
    bytes), a response already encoded, `Cache-Control: no-transform`, a type not in the list
    or no type at all, a known length below `min_size`. A response that passes those varies
    with Accept-Encoding, even when this client gets identity.
    """
    if status < 200 or status == 204 or status == 304 or status == 206:
        return NO
    accept: list[bytes] = []
    for name, value in request_headers:
        low = name.lower()
        if low == b"range":
            return NO
        if low == b"accept-encoding":
            accept.append(value)
    content_type: str | None = None
    streaming = False
    for name, value in response_headers:
        low = name.lower()
        if low == b"content-encoding":
            if value.strip().lower() not in (b"", b"identity"):
                return NO
        elif low == b"cache-control":
            if b"no-transform" in value.lower():
                return NO
        elif low == b"content-type":
            content_type = value.decode("latin-1")
        elif low == b"x-accel-buffering" and value.strip().lower() == b"no":
            streaming = True  # the server says it streams (NGINX's header for it)
    if content_type is None or content_type not in settings.types:
        return NO
    if length is not None and length < settings.min_size:
        return NO
    if method == b"HEAD":
        return Decision(None, True)
    if content_type.partition(";")[0].strip().lower() in _STREAMING_TYPES:
        streaming = True
    return Decision(choose_coding(accepted_codings(accept), settings.algorithms), True, streaming)


def _vary_lists(value: bytes, token: bytes) -> bool:
    return any(part.strip().lower() in (token, b"*") for part in value.split(b","))


def merge_vary(headers: Sequence[Header], token: bytes = b"Accept-Encoding") -> list[Header]:
    """`headers` with `token` in Vary: appended to the first Vary field that lacks it, added
    when there is none, unchanged when one lists it or `*`."""
    out = list(headers)
    low = token.lower()
    first = -1
    for i, (name, value) in enumerate(out):
        if name.lower() == b"vary":
            if _vary_lists(value, low):
                return out
            if first < 0:
                first = i
    if first < 0:
        out.append((b"Vary", token))
    else:
        name, value = out[first]
        out[first] = (name, value + b", " + token if value.strip() else token)
    return out


def encoded_headers(headers: Sequence[Header], coding: str) -> list[Header]:
    """The head of a response once compressed with `coding`: Content-Encoding set, Vary
    merged, a strong ETag made weak (the bytes differ: a strong ETag would claim they do
    not, RFC 9110 §8.8.1), Content-Length dropped (the new length is not known yet)."""
    out: list[Header] = []
    for name, value in headers:
        low = name.lower()
        if low == b"content-length" or low == b"content-encoding":
            continue
        if low == b"etag" and not value.startswith(b"W/"):
            value = b"W/" + value
        out.append((name, value))
    out.append((b"Content-Encoding", coding.encode("ascii")))
    return merge_vary(out)
