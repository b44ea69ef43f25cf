"""Responses that Portico writes itself: short, plain, and saying nothing about the servers.

Built once at import as `LocalResponse` values: answering an error costs one dictionary lookup,
and the edge serialises each value once (`portico.http.local.http1_bytes`).
"""

from __future__ import annotations

from http import HTTPStatus

from portico.http.local import LocalResponse, local_response

ALLOWED_METHODS = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


def _build(status: int, *extra: tuple[bytes, bytes]) -> LocalResponse:
    body = b"%d %s\n" % (status, HTTPStatus(status).phrase.encode("ascii"))
    return local_response(
        status,
        [
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", b"%d" % len(body)),
            (b"Cache-Control", b"no-store"),
            *extra,
        ],
        body,
    )


# Errors in the request itself: the connection is closed after the answer (the edge adds
# Connection: close), since what follows on the wire can no longer be trusted to start a new
# request.
CLIENT_ERRORS: dict[int, LocalResponse] = {
    status: _build(status) for status in (400, 408, 413, 414, 431, 501, 505)
}
# 405 is for CONNECT: RFC 9110 §15.5.6 asks for the methods that would be accepted
CLIENT_ERRORS[405] = _build(405, (b"Allow", ALLOWED_METHODS))

# Errors on the way to a server (a plugin that failed, 500; no server could answer, 502-504):
# the client's connection stays usable.
UPSTREAM_ERRORS: dict[int, LocalResponse] = {
    status: _build(status, *([(b"Retry-After", b"1")] if status == 503 else []))
    for status in (500, 502, 503, 504)
}


def client_error(status: int) -> LocalResponse:
    """The answer to a refused request (the connection is always closed after it): a client
    error, or 500 when Portico itself failed while setting the request up."""
    answer = CLIENT_ERRORS.get(status)
    return answer if answer is not None else UPSTREAM_ERRORS[status]


def upstream_error(status: int) -> LocalResponse:
    """The answer when a plugin failed (500) or no server could answer: 502-504."""
    return UPSTREAM_ERRORS[status]
