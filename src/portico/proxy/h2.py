"""The response side of an exchange that answers one HTTP/2 stream.

The request side (filters, routing, server choice, retries, the HTTP/1.1 request to the
server, stats and logs) is `Exchange`'s, unchanged: an HTTP/2 stream reaches servers over the
same keep-alive pools as HTTP/1.1 clients. Only how the answer goes back differs: a HEADERS
frame instead of a status line, DATA frames under HTTP/2 flow control instead of chunks,
END_STREAM instead of a terminating chunk or a closed connection.
"""

from __future__ import annotations

from typing import Protocol

from portico.http.h2 import response_fields
from portico.http.headers import LENGTH_BODY, NO_BODY, Header, RequestHead, ResponseHead
from portico.plugins.guard import PluginError
from portico.proxy.l7 import ClientSide, Exchange


class StreamSide(ClientSide, Protocol):
    """What an `H2Exchange` needs of its client: one HTTP/2 stream
    (`portico.listeners.h2.H2Stream`), which frames what it is given."""

    def send_headers(self, fields: list[Header], *, end: bool) -> None: ...
    def send_data(self, data: bytes | memoryview) -> None: ...
    def send_trailers(self, fields: list[Header]) -> None: ...
    def send_end(self) -> None: ...


class H2Exchange(Exchange):
    """An `Exchange` whose client is an HTTP/2 stream."""

    __slots__ = ("_fields", "_stream")

    def __init__(
        self,
        stream: StreamSide,
        method: bytes,
        target: bytes,
        headers: list[Header],
        head: RequestHead,
    ) -> None:
        # streams end, connections stay: "keep-alive" is always true for a stream
        super().__init__(stream, method, target, "2.0", headers, head, True)
        self._stream = stream
        self._fields: list[Header] | None = None  # the response head, staged

    def on_interim(self, status: int, head: ResponseHead) -> None:
        if status in (100, 103):
            self._stream.send_headers(response_fields(status, head.headers), end=False)

    def on_response_head(self, status: int, head: ResponseHead) -> None:
        try:
            out = self._response_headers(status, head)
        except PluginError:
            self._response_refused()
            return
        kind = head.kind
        if kind is LENGTH_BODY:
            out.append((b"content-length", b"%d" % head.length))
        elif (
            kind is NO_BODY and head.declared_length is not None and status >= 200 and status != 204
        ):
            out.append((b"content-length", head.declared_length))  # HEAD, 304: the GET's
        fields = self._fields = response_fields(status, out)
        self._head_len = sum(len(name) + len(value) for name, value in fields)

    def on_response_body(self, data: bytes | memoryview) -> None:
        fields = self._fields
        if fields is not None:
            self._fields = None
            self._response_started = True
            self._stream.send_headers(fields, end=False)
        if data:
            self._stream.send_data(data)
            self._sent += len(data)

    def on_response_trailers(self, fields: list[Header]) -> None:
        staged = self._fields
        if staged is not None:
            self._fields = None
            self._response_started = True
            self._stream.send_headers(staged, end=False)
        self._stream.send_trailers(fields)

    def _write_end(self) -> None:
        fields = self._fields
        if fields is not None:
            self._fields = None
            self._stream.send_headers(fields, end=True)
        else:
            self._stream.send_end()

    def on_upstream_failed(self, reason: str, got_bytes: bool, timed_out: bool) -> None:
        if not self._response_started:
            self._fields = None  # a retry stages the next server's head
        super().on_upstream_failed(reason, got_bytes, timed_out)
