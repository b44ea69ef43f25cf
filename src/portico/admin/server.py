"""The admin listener's socket: HTTP/1.1 over asyncio streams, parsed by httptools.

Owns the admin listening socket and its connections: parsing requests (httptools, strict
llhttp, never by hand), the limits on what a client may send (head and body sizes, how long a
request may take, how many connections may be open), keep-alive and pipelining (answers in
request order, one request at a time per connection), and writing the answers. Runs in the
supervisor's event loop, which is why everything it holds is small and bounded. Never decides
what a request means or may do (`api.AdminApi` does) and never touches the data plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import ssl
from collections import deque
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final

import httptools

from portico.admin.api import (
    STATIC_DIR,
    AdminApi,
    AdminRequest,
    AdminResponse,
    SupervisorView,
    error_response,
)
from portico.config.schema import AdminTls

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_BODY",
    "MAX_CONNECTIONS",
    "MAX_HEAD",
    "REQUEST_TIMEOUT",
    "AdminServer",
    "resolve_token",
]

log = logging.getLogger("portico.admin")

MAX_HEAD: Final = 16 * 1024  # request line and header fields -> 431
MAX_BODY: Final = 64 * 1024  # an admin request body is a few dozen bytes -> 413
MAX_CONNECTIONS: Final = 64  # open at once; more are closed at accept
REQUEST_TIMEOUT: Final = 10.0  # from a request's first byte to its last -> 408
IDLE_TIMEOUT: Final = 60.0  # a keep-alive connection with no request is closed after this
_READ_SIZE: Final = 64 * 1024
LINGER_TIME: Final = 2.0  # after a refusal, how long unread client bytes are drained
LINGER_BYTES: Final = 1 << 20  # ... and how many


def resolve_token(
    token: str | None, token_env: str | None, environ: Mapping[str, str] = os.environ
) -> str | None:
    """The admin token: `token` from the config, else the value of the environment variable
    `token_env` names, else None (no token: the API is open to whoever can connect).

    Raises ValueError when `token_env` names a variable that is unset or empty: an operator
    who asked for a token must never get an open API by a typo in a unit file.
    """
    if token:
        return token
    if token_env:
        value = environ.get(token_env, "")
        if not value:
            raise ValueError(
                f"admin.token_env names ${token_env}, which is not set (or empty): "
                "set it, or remove token_env to run the admin API without a token"
            )
        return value
    return None


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a request that breaks a limit."""


class _Requests:
    """httptools callbacks: collect complete requests, check sizes as they arrive."""

    def __init__(self, client: str) -> None:
        self.client = client
        self.parser = httptools.HttpRequestParser(self)
        self.ready: deque[tuple[AdminRequest, bool]] = deque()  # (request, keep-alive)
        self.started: float | None = None  # loop time of the first byte of the current request
        self.refusal: int | None = None  # the status owed for a request that broke a limit
        self.expects_continue = False
        self._url = b""
        self._headers: dict[str, str] = {}
        self._head_size = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._keep_alive = True
        self._now = asyncio.get_running_loop().time

    def on_message_begin(self) -> None:
        self.started = self._now()
        self._url = b""
        self._headers = {}
        self._head_size = 0
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._grow_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow_head(len(name) + len(value) + 4)
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        # a repeated field joined by commas (RFC 9110 §5.3): a doubled Authorization or Host
        # then matches nothing, rather than whichever copy a check happened to read
        before = self._headers.get(key)
        self._headers[key] = text if before is None else f"{before}, {text}"

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            self.refusal = 413
            raise _Refused
        self._keep_alive = bool(self.parser.should_keep_alive())
        if self._headers.get("expect", "").lower() == "100-continue":
            self.expects_continue = True

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_BODY:
            self.refusal = 413
            raise _Refused
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.started = None
        self.expects_continue = False
        url = httptools.parse_url(self._url) if self._url else None
        method = self.parser.get_method().decode("ascii", "replace")
        path = url.path.decode("latin-1") if url is not None and url.path else ""
        query = url.query.decode("latin-1") if url is not None and url.query else ""
        request = AdminRequest(
            method, path, self._headers, b"".join(self._body), self.client, query
        )
        self.ready.append((request, self._keep_alive))

    def _grow_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEAD:
            self.refusal = 431
            raise _Refused


def _encode(response: AdminResponse, *, head_only: bool, keep_alive: bool) -> bytes:
    status = response.status
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "X-Content-Type-Options: nosniff",
        "X-Frame-Options: DENY",
    ]
    lines += [f"{name}: {value}" for name, value in response.headers]
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


_REFUSALS: Final = {
    400: ("bad request", "the request is not valid HTTP/1.1"),
    408: ("request timeout", f"a request must arrive whole within {REQUEST_TIMEOUT:g} seconds"),
    413: ("body too large", f"an admin request body is at most {MAX_BODY} bytes"),
    431: ("head too large", f"request line and headers are at most {MAX_HEAD} bytes"),
}


def _refusal(status: int) -> AdminResponse:
    error, detail = _REFUSALS[status]
    return error_response(status, error, detail)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After refusing a request whose bytes are still coming (a body too large), shut our
    side and read theirs away for a moment before closing: closing with unread bytes makes
    the kernel send a reset, which can destroy the answer before the client reads it."""
    if not writer.can_write_eof():
        return
    writer.write_eof()
    with contextlib.suppress(TimeoutError, ConnectionError, OSError):
        async with asyncio.timeout(LINGER_TIME):
            discarded = 0
            while discarded < LINGER_BYTES:
                data = await reader.read(_READ_SIZE)
                if not data:
                    return
                discarded += len(data)


def admin_tls_context(tls: AdminTls) -> ssl.SSLContext:
    """The admin listener's TLS: its certificate, TLS 1.2 or later, and with `client_auth`
    the client certificates checked against `client_ca` (require: no certificate, no
    connection; the token, when set, is still asked for)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    if tls.client_auth != "none":
        context.load_verify_locations(cafile=tls.client_ca)
        context.verify_mode = (
            ssl.CERT_REQUIRED if tls.client_auth == "require" else ssl.CERT_OPTIONAL
        )
    return context


class AdminServer:
    """The admin API on its own socket, in the supervisor's event loop.

    `view`: the supervisor, as `SupervisorView`; `token`: see `AdminApi` (and
    `resolve_token`); `static_dir`: where the dashboard's files are.
    """

    def __init__(
        self,
        view: SupervisorView,
        token: str | None,
        *,
        static_dir: Path | None = STATIC_DIR,
        users: Mapping[str, str] | None = None,
    ) -> None:
        self.api = AdminApi(view, token, static_dir, users)
        self.token = token
        self._server: asyncio.Server | None = None
        self.tls = False
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[Any] | None] = {}

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 9090,
        *,
        sock: socket.socket | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """Listen on `host`:`port` (port 0: any free port; see `address`), or on `sock`, a
        bound socket; with `tls`, HTTPS (`admin_tls_context`). Raises OSError when the address
        cannot be bound."""
        self.tls = tls is not None
        if sock is not None:
            self._server = await asyncio.start_server(self._serve, sock=sock, ssl=tls)
        else:
            self._server = await asyncio.start_server(
                self._serve, host, port, reuse_address=True, ssl=tls
            )
            if self.api.is_open and not _is_loopback(host):
                log.warning(
                    "admin API on %s without a token: anyone who can reach it can change "
                    "pools and reload; set admin.token or admin.token_env",
                    self.address,
                )

    @property
    def address(self) -> str:
        """host:port as bound (IPv6 in brackets), for the ready line and the log."""
        assert self._server is not None, "start() first"
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and close every admin connection (a request being answered is cut)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        connections = list(self._connections.items())
        for writer, task in connections:
            writer.transport.abort()
            if task is not None:
                task.cancel()  # one waiting on the view (a reload) ends here too
        await asyncio.gather(*(t for _, t in connections if t is not None), return_exceptions=True)
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self._connections[writer] = asyncio.current_task()
        peer = writer.get_extra_info("peername")
        client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unknown"
        try:
            await self._converse(reader, writer, _Requests(client))
        except (ConnectionError, OSError):
            pass  # the client went away: nothing is owed
        except asyncio.CancelledError:
            # close() ends connections this way; end quietly, since asyncio reports a cancelled
            # connection task as an error (3.11's client_connected_cb callback)
            pass
        finally:
            self._connections.pop(writer, None)
            writer.close()

    async def _converse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requests: _Requests
    ) -> None:
        """Read, parse and answer requests in order until the connection is to close."""
        loop = asyncio.get_running_loop()
        while True:
            started = requests.started
            budget = IDLE_TIMEOUT if started is None else started + REQUEST_TIMEOUT - loop.time()
            try:
                async with asyncio.timeout(max(budget, 0.0)):
                    data = await reader.read(_READ_SIZE)
            except TimeoutError:
                if requests.started is not None:
                    await self._send(writer, "GET", _refusal(408), keep_alive=False)
                    await _linger(reader, writer)
                return
            if not data:
                return
            refusal = None
            try:
                requests.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                refusal = 0  # answer what came whole, then close: this API upgrades nothing
            except httptools.HttpParserCallbackError:
                refusal = requests.refusal or 400
            except httptools.HttpParserError:
                refusal = 400
            while requests.ready:
                request, keep_alive = requests.ready.popleft()
                response = await self.api.handle(request)
                keep_alive = keep_alive and refusal is None
                await self._send(writer, request.method, response, keep_alive=keep_alive)
                if not keep_alive:
                    return
            if refusal is not None:
                if refusal:
                    await self._send(writer, "GET", _refusal(refusal), keep_alive=False)
                    await _linger(reader, writer)
                return
            if requests.expects_continue:
                requests.expects_continue = False
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter, method: str, response: AdminResponse, *, keep_alive: bool
    ) -> None:
        writer.write(_encode(response, head_only=method == "HEAD", keep_alive=keep_alive))
        await writer.drain()
