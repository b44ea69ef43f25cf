"""Cookie persistence: a signed, opaque cookie naming a client's server, HAProxy's `prefix`
mode on an application's own cookie, and the Cookie / Set-Cookie header edits both need. *pure*

Owns the cookie value format and its checks:

- `server_token(server, secret)`: an opaque per-server token, HMAC-SHA256(secret, name)
  truncated to 9 bytes, 12 base64url characters. It says nothing about the server's name or
  address, and cannot be computed without the secret.
- `encode(server, secret, now)`: the insert-mode cookie value, 40 base64url characters:
  token (9 bytes) | version (1) | issue time (4, Unix seconds) | HMAC-SHA256 tag (16 bytes),
  the tag over everything before it. Nothing in it is readable; changing any character, or
  moving a token to another cookie with another issue time, breaks the tag.
- `decode(value, secret, servers, max_age, now)`: the server's name, or None for a value that
  is malformed, tampered with, signed with another secret, expired, issued in the future, or
  names a server not in `servers` (removed from the pool). Never raises on client input.
- `prefix` / `unprefix`: HAProxy's ``cookie NAME prefix``: the application's own cookie value
  carries the server token in front (``<token>~<app value>``); the prefix is stripped before
  the request goes to the server. Not signed (the application's value has no room for a tag):
  a client can only send a token it was given, so at worst it picks among servers it has seen.
- `set_cookie_header`, `cookie_value`, `without_cookie`, `rewrite_cookie`, `set_cookie_value`,
  `prefix_set_cookie`: the header bytes the proxy reads and writes.

Never reads the clock (`now` is an argument, Unix seconds), never awaits, never chooses a
server: a None from `decode` means "let the balancing policy pick, then set a fresh cookie".
"""

from __future__ import annotations

import base64
import hmac
import re
import struct
from collections.abc import Iterable, Mapping

__all__ = [
    "COOKIE_CHARS",
    "TOKEN_CHARS",
    "check_secret",
    "cookie_attributes",
    "cookie_value",
    "decode",
    "encode",
    "parse",
    "prefix",
    "prefix_set_cookie",
    "rewrite_cookie",
    "server_token",
    "server_tokens",
    "set_cookie_header",
    "set_cookie_value",
    "unprefix",
    "without_cookie",
]

# Sizes chosen so every part is a whole number of base64 groups (3 bytes = 4 characters): no
# padding and no unused bits, so each value has exactly one spelling and no character can be
# changed without changing the bytes.
_TOKEN_BYTES = 9  # 72 bits: a collision between two servers' tokens is not a practical concern
_TAG_BYTES = 16  # 128-bit truncated HMAC-SHA256 (NIST SP 800-107 allows truncation to >= 64)
_VERSION = 1
_BODY = struct.Struct("!BI")  # version, issue time (Unix seconds, good until 2106)
TOKEN_CHARS = _TOKEN_BYTES * 4 // 3  # 12
COOKIE_CHARS = TOKEN_CHARS + (_BODY.size + _TAG_BYTES) * 4 // 3  # 12 + 28 = 40

# Domain separation: tokens and tags are HMACs under the same secret over distinct prefixes,
# so no token can ever be replayed as a tag or the other way round.
_TOKEN_LABEL = b"portico cookie token\x00"
_TAG_LABEL = b"portico cookie tag\x00"
_MIN_SECRET = 16  # bytes
# A cookie issued by an instance whose clock is ahead of ours by up to this much is accepted.
_MAX_FUTURE_SKEW = 60  # seconds
_PREFIX_SEPARATOR = b"~"  # as HAProxy's prefix mode

_COOKIE_RE = re.compile(rb"[A-Za-z0-9_-]{%d}" % COOKIE_CHARS)
_TOKEN_RE = re.compile(rb"[A-Za-z0-9_-]{%d}" % TOKEN_CHARS)
# RFC 6265 section 4.1.1: cookie-name is an RFC 7230 token; cookie-octet excludes CTLs,
# whitespace, DQUOTE, comma, semicolon and backslash. Attribute values exclude CTLs and ';'.
_NAME_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE_RE = re.compile(rb"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
_ATTRIBUTE_RE = re.compile(rb"[\x20-\x3a\x3c-\x7e]+")
_SAMESITE = {"strict": b"Strict", "lax": b"Lax", "none": b"None"}


def check_secret(secret: bytes) -> bytes:
    """`secret` itself, once checked to be long enough to sign cookies (16 bytes or more).

    Call it when the config is loaded; `encode` and `server_token` check again."""
    if not isinstance(secret, bytes) or len(secret) < _MIN_SECRET:
        raise ValueError(f"a cookie secret must be at least {_MIN_SECRET} bytes")
    return secret


def _token_bytes(server: str, secret: bytes) -> bytes:
    check_secret(secret)
    return hmac.digest(secret, _TOKEN_LABEL + server.encode(), "sha256")[:_TOKEN_BYTES]


def server_token(server: str, secret: bytes) -> str:
    """The opaque token standing for `server` under `secret` (12 base64url characters)."""
    return base64.urlsafe_b64encode(_token_bytes(server, secret)).decode("ascii")


def server_tokens(servers: Iterable[str], secret: bytes) -> dict[str, str]:
    """token -> server name for a pool's servers: what `decode` and `unprefix` look tokens up
    in. Build it once per config (and after servers are added or removed), not per request."""
    tokens: dict[str, str] = {}
    for server in servers:
        token = server_token(server, secret)
        if tokens.setdefault(token, server) != server:  # 2**-72 per pair; but never silently
            raise ValueError(f"servers {tokens[token]!r} and {server!r} share a cookie token")
    return tokens


def encode(server_id: str, secret: bytes, now: int) -> str:
    """The insert-mode cookie value for `server_id`, issued at `now` (Unix seconds)."""
    if not 0 <= now <= 0xFFFFFFFF:
        raise ValueError(f"now must be Unix seconds from 0 to 2**32 - 1, not {now!r}")
    token = _token_bytes(server_id, secret)
    body = _BODY.pack(_VERSION, now)
    tag = hmac.digest(secret, _TAG_LABEL + token + body, "sha256")[:_TAG_BYTES]
    return base64.urlsafe_b64encode(token + body + tag).decode("ascii")


def parse(
    value: str | bytes,
    secret: bytes,
    servers: Mapping[str, str],
    max_age: int | None,
    now: int,
) -> tuple[str, int] | None:
    """(server name, issue time) from an insert-mode cookie value, or None when it must be
    ignored (see `decode`). The issue time lets the caller re-issue an old cookie, as HAProxy's
    `maxidle` does, before it expires under a client that is still active."""
    raw = value.encode("latin-1", "replace") if isinstance(value, str) else value
    if _COOKIE_RE.fullmatch(raw) is None:
        return None
    data = base64.urlsafe_b64decode(raw)
    token, body, tag = data[:_TOKEN_BYTES], data[_TOKEN_BYTES:-_TAG_BYTES], data[-_TAG_BYTES:]
    expected = hmac.digest(secret, _TAG_LABEL + token + body, "sha256")[:_TAG_BYTES]
    if not hmac.compare_digest(tag, expected):
        return None
    version, issued = _BODY.unpack(body)
    if version != _VERSION or issued > now + _MAX_FUTURE_SKEW:
        return None
    if max_age is not None and now - issued > max_age:
        return None
    server = servers.get(raw[:TOKEN_CHARS].decode("ascii"))
    return None if server is None else (server, issued)


def decode(
    value: str | bytes,
    secret: bytes,
    servers: Mapping[str, str],
    max_age: int | None,
    now: int,
) -> str | None:
    """The server an insert-mode cookie value names, or None to ignore the cookie.

    None for: a malformed value, any changed character, another secret's cookie, a cookie
    older than `max_age` seconds (None: no limit) or issued more than a minute in the future,
    and a token not in `servers` (from `server_tokens`: a server removed from the pool). The
    tag is compared in constant time. The caller then lets the policy pick and sets a fresh
    cookie; a None is never an error for the client.
    """
    parsed = parse(value, secret, servers, max_age, now)
    return None if parsed is None else parsed[0]


# -- prefix mode (HAProxy's `cookie NAME prefix`) ----------------------------------------------


def prefix(app_value: bytes, server_token: str) -> bytes:
    """The application cookie's value with the server token in front: ``<token>~<value>``."""
    return server_token.encode("ascii") + _PREFIX_SEPARATOR + app_value


def unprefix(value: bytes) -> tuple[str, bytes] | None:
    """(server token, the application's own value) from a prefixed value; None when the value
    carries no token (a cookie the application set without us, or one the client made up)."""
    if value[TOKEN_CHARS : TOKEN_CHARS + 1] != _PREFIX_SEPARATOR:
        return None
    token = value[:TOKEN_CHARS]
    if _TOKEN_RE.fullmatch(token) is None:
        return None
    return token.decode("ascii"), value[TOKEN_CHARS + 1 :]


# -- headers -------------------------------------------------------------------------------------


def cookie_attributes(
    path: str | None = "/",
    domain: str | None = None,
    max_age: int | None = None,
    secure: bool = False,
    httponly: bool = True,
    samesite: str | None = "Lax",
) -> bytes:
    """The attributes part of a Set-Cookie value (``; Path=/; HttpOnly; SameSite=Lax``).

    Checked here, so build it once per config and reuse it on every response. `max_age` None
    makes a session cookie (gone when the browser closes); 0 deletes the cookie. Raises
    ValueError for a value a browser would misread, and for ``SameSite=None`` without `secure`
    (browsers reject that cookie).
    """
    parts: list[bytes] = []
    if path is not None:
        parts.append(b"Path=" + _attribute("path", path))
    if domain is not None:
        parts.append(b"Domain=" + _attribute("domain", domain))
    if max_age is not None:
        if isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 0:
            raise ValueError(f"max_age must be whole seconds >= 0, not {max_age!r}")
        parts.append(b"Max-Age=%d" % max_age)
    if secure:
        parts.append(b"Secure")
    if httponly:
        parts.append(b"HttpOnly")
    if samesite is not None:
        spelled = _SAMESITE.get(samesite.lower())
        if spelled is None:
            raise ValueError(f"samesite must be Strict, Lax or None, not {samesite!r}")
        if spelled == b"None" and not secure:
            raise ValueError("SameSite=None needs secure: browsers reject it otherwise")
        parts.append(b"SameSite=" + spelled)
    return b"".join(b"; " + part for part in parts)


def set_cookie_header(
    name: str,
    value: str,
    path: str | None = "/",
    domain: str | None = None,
    max_age: int | None = None,
    secure: bool = False,
    httponly: bool = True,
    samesite: str | None = "Lax",
) -> bytes:
    """A Set-Cookie header value: ``name=value`` and the attributes (see `cookie_attributes`).

    Raises ValueError for a name that is not an HTTP token or a value with characters a
    cookie cannot carry."""
    raw_name, raw_value = name.encode("latin-1"), value.encode("latin-1")
    if _NAME_RE.fullmatch(raw_name) is None:
        raise ValueError(f"{name!r} is not a valid cookie name")
    if _VALUE_RE.fullmatch(raw_value) is None:
        raise ValueError(f"{value!r} is not a valid cookie value")
    attributes = cookie_attributes(path, domain, max_age, secure, httponly, samesite)
    return raw_name + b"=" + raw_value + attributes


def _attribute(what: str, text: str) -> bytes:
    raw = text.encode("latin-1")
    if _ATTRIBUTE_RE.fullmatch(raw) is None:
        raise ValueError(f"{text!r} is not a valid cookie {what}")
    return raw


def cookie_value(cookie_header: bytes, name: bytes) -> bytes | None:
    """The value of cookie `name` in a request's Cookie header value (the first, if repeated)."""
    for part in cookie_header.split(b";"):
        key, eq, value = part.strip().partition(b"=")
        if eq and key == name:
            return value
    return None


def without_cookie(cookie_header: bytes, name: bytes) -> bytes:
    """The Cookie header value without cookie `name` (HAProxy's `indirect`: the server never
    sees the persistence cookie); b"" when nothing is left and the header should be dropped."""
    kept = [p for p in (part.strip() for part in cookie_header.split(b";")) if p]
    kept = [p for p in kept if p.partition(b"=")[0] != name]
    return b"; ".join(kept)


def rewrite_cookie(cookie_header: bytes, name: bytes, value: bytes) -> bytes:
    """The Cookie header value with cookie `name`'s value replaced by `value` (prefix mode: the
    server gets its own value back, without the token)."""
    parts = [p for p in (part.strip() for part in cookie_header.split(b";")) if p]
    return b"; ".join(name + b"=" + value if p.partition(b"=")[0] == name else p for p in parts)


def set_cookie_value(set_cookie: bytes, name: bytes) -> bytes | None:
    """The value a response's Set-Cookie header value gives cookie `name`, or None when it sets
    another cookie. For learning a stick-table entry from the application's session cookie."""
    pair = set_cookie.split(b";", 1)[0]
    key, eq, value = pair.partition(b"=")
    return value.strip() if eq and key.strip() == name else None


def prefix_set_cookie(set_cookie: bytes, name: bytes, server_token: str) -> bytes | None:
    """The Set-Cookie header value with cookie `name`'s value prefixed by the server token, or
    None to leave the header as it is: it sets another cookie, or deletes this one (an empty
    value)."""
    pair, sep, attributes = set_cookie.partition(b";")
    key, eq, value = pair.partition(b"=")
    if not eq or key.strip() != name or not value.strip():
        return None
    return key.strip() + b"=" + prefix(value.strip(), server_token) + sep + attributes
