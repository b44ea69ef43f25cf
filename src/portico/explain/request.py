"""The sample request an explanation is about, read from what a person types. *pure*

Owns `SampleRequest` and `parse_request`, which turn ``GET https://shop.example.com/cart?x=1``
and ``-H 'Cookie: beta=1'`` into the bytes the proxy's own decisions take (method, target,
Host, header fields, client address). Never decides anything about the request: routing and
balancing are the production objects' business (`decide.py` calls them).
"""

from __future__ import annotations

import ipaddress
import string
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from portico.http.headers import Header

__all__ = ["SampleRequest", "parse_request"]

# RFC 9110 token characters: what a method and a header name may be made of
_METHOD_CHARS = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")


@dataclass(frozen=True, slots=True)
class SampleRequest:
    """One request as a client would send it.

    `scheme` and `port` come from an absolute URL ("" and None for a bare path): they say
    which listener the request reaches. `host` is the Host field's value (None: no Host),
    `target` the request target with its query, `headers` every field including Host.
    """

    method: bytes
    target: bytes
    host: bytes | None
    headers: tuple[Header, ...]
    client_ip: str = "127.0.0.1"
    scheme: str = ""
    port: int | None = None

    @property
    def url(self) -> str:
        """The request as a URL when its scheme and host are known, else its target."""
        target = self.target.decode("utf-8", "backslashreplace")
        if self.scheme and self.host is not None:
            return f"{self.scheme}://{self.host.decode('utf-8', 'backslashreplace')}{target}"
        return target


def parse_request(
    line: str, headers: Sequence[str] = (), client_ip: str = "127.0.0.1"
) -> SampleRequest:
    """Read ``METHOD URL`` (``GET https://a.example/x?y=1``; a bare path ``/x`` works too, with
    the Host given as a header) and header lines ``Name: value``.

    A Host given with -H wins over the URL's (as curl does). Raises ValueError naming what is
    wrong: a missing method, a URL that is not http(s), a header line without a colon, a
    client address that is not an IP address.
    """
    parts = line.split()
    if len(parts) == 1 and (parts[0].startswith("/") or "://" in parts[0]):
        parts = ["GET", parts[0]]
    if len(parts) != 2:
        raise ValueError(
            f"{line!r} is not a request: write METHOD URL, e.g. 'GET https://a.example/'"
        )
    method, url = parts
    if not set(method) <= _METHOD_CHARS:
        raise ValueError(f"{method!r} is not an HTTP method")
    try:
        ipaddress.ip_address(client_ip)
    except ValueError:
        raise ValueError(f"{client_ip!r} is not an IP address") from None
    scheme = ""
    port: int | None = None
    host: str | None = None
    if url.startswith("/") or url == "*":
        target = url
    else:
        split = urlsplit(url)
        if split.scheme not in ("http", "https") or not split.netloc:
            raise ValueError(f"{url!r} is not an http(s) URL or a path starting with /")
        scheme = split.scheme
        try:
            port = split.port
        except ValueError as exc:
            raise ValueError(f"{url!r}: {exc}") from None
        host = split.netloc.rpartition("@")[2]  # user:password@ is never part of Host
        target = (split.path or "/") + (f"?{split.query}" if split.query else "")
    fields: list[Header] = []
    for text in headers:
        name, colon, value = text.partition(":")
        name = name.strip()
        if not colon or not name or not set(name) <= _METHOD_CHARS:
            raise ValueError(f"{text!r} is not a header line: write 'Name: value'")
        if name.lower() == "host":
            host = value.strip()
            continue
        fields.append((name.encode("latin-1"), value.strip().encode("utf-8")))
    host_bytes = host.encode("utf-8") if host is not None else None
    if host_bytes is not None:
        fields.insert(0, (b"Host", host_bytes))
    return SampleRequest(
        method=method.upper().encode("ascii"),
        target=target.encode("utf-8"),
        host=host_bytes,
        headers=tuple(fields),
        client_ip=client_ip,
        scheme=scheme,
        port=port,
    )
