"""The cache key of a request (RFC 9111 §2: method and target URI, plus what the operator
adds). *pure*

Owns how a request's effective URI is written (RFC 9110 §7.1: scheme, authority in lower
case, path and query as sent), which query parameters are left out of it, and which request
fields are added to it. HEAD shares GET's key: a stored GET answers a HEAD (RFC 9110 §9.3.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from portico.cache.directives import field_values
from portico.http.headers import Header

__all__ = ["KeyRule", "effective_uri"]


def effective_uri(scheme: str, host: bytes | None, target: bytes) -> bytes:
    """`scheme://host/path?query` for an origin-form target; an absolute-form target as sent
    (its scheme and authority lower-cased)."""
    if target[:1] != b"/" and b"://" in target:
        scheme_part, _, rest = target.partition(b"://")
        authority, slash, path = rest.partition(b"/")
        return scheme_part.lower() + b"://" + authority.lower() + slash + path
    return scheme.encode("ascii") + b"://" + (host or b"").lower() + target


@dataclass(frozen=True, slots=True)
class KeyRule:
    """What a route's cache key holds besides the URI: `ignore_query` names parameters left
    out (`*` drops the whole query); `headers` names request fields whose values are added."""

    ignore_query: frozenset[str] = frozenset()
    headers: tuple[bytes, ...] = ()

    def uri(self, uri: bytes) -> bytes:
        """`uri` with the ignored query parameters left out (the others keep their order)."""
        if not self.ignore_query:
            return uri
        base, mark, query = uri.partition(b"?")
        if not mark:
            return uri
        if "*" in self.ignore_query:
            return base
        try:
            pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        except ValueError:
            return uri
        kept = [(k, v) for k, v in pairs if k not in self.ignore_query]
        if len(kept) == len(pairs):
            return uri
        return base + (b"?" + urlencode(kept).encode("latin-1") if kept else b"")

    def key(self, uri: bytes, request_headers: Sequence[Header]) -> bytes:
        """The primary key: the (filtered) URI, then each added field's values."""
        if not self.headers:
            return uri
        parts = [uri]
        for name in self.headers:
            parts.append(name + b":" + b",".join(field_values(request_headers, name)))
        return b"\n".join(parts)
