"""Responses that Portico writes itself: short, plain, and saying nothing about the servers.

Built once at import: answering an error costs one dictionary lookup and one write.
"""

from __future__ import annotations

from http import HTTPStatus

ALLOWED_METHODS = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


def _build(status: int, *, close: bool, extra: bytes = b"") -> bytes:
    phrase = HTTPStatus(status).phrase.encode("ascii")
    body = b"%d %s\n" % (status, phrase)
    head = (
        b"HTTP/1.1 %d %s\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n"
        b"Cache-Control: no-store\r\n"
        b"%s"
        b"%s"
        b"\r\n"
    ) % (status, phrase, len(body), b"Connection: close\r\n" if close else b"", extra)
    return head + body


# Errors in the request itself: the connection is closed after the answer, since what follows
# on the wire can no longer be trusted to start a new request.
CLIENT_ERRORS: dict[int, bytes] = {
    status: _build(status, close=True) for status in (400, 408, 413, 414, 431, 501, 505)
}
# 405 is for CONNECT: RFC 9110 §15.5.6 asks for the methods that would be accepted
CLIENT_ERRORS[405] = _build(405, close=True, extra=b"Allow: " + ALLOWED_METHODS + b"\r\n")

# Errors on the way to a server (a plugin that failed, 500; no server could answer, 502-504):
# the client's connection stays usable.
UPSTREAM_ERRORS: dict[tuple[int, bool], bytes] = {
    (status, close): _build(
        status, close=close, extra=b"Retry-After: 1\r\n" if status == 503 else b""
    )
    for status in (500, 502, 503, 504)
    for close in (False, True)
}


def client_error(status: int) -> bytes:
    """The full response for a refused request (always closes the connection)."""
    return CLIENT_ERRORS[status]


def upstream_error(status: int, close: bool) -> bytes:
    """The full response when a plugin failed (500) or no server could answer: 502-504."""
    return UPSTREAM_ERRORS[(status, close)]
