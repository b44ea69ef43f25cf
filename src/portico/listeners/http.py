"""The client side of an HTTP/1.x listener: one protocol object per client connection.

Owns: parsing requests with httptools (strict llhttp: no lenient flags, ever), the limits on
what a client may send (414, 431, 413, 400), client timeouts, keep-alive and pipelining (answers
in request order), and back-pressure from the client socket. A request that fails any check is
answered here and never reaches a server. Where a request goes and what its response says is
`portico.proxy.l7.Exchange`'s business; how the response is framed for HTTP/1.x is the
connection's `portico.proxy.framing.Http1Framer`'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final, cast

import httptools

from portico.http.errors import client_error
from portico.http.h2 import PREFACE
from portico.http.headers import (
    CHUNKED_BODY,
    LENGTH_BODY,
    NO_BODY,
    Header,
    RequestHead,
    split_request_headers,
)
from portico.http.local import http1_bytes
from portico.listeners.tcp import is_trusted
from portico.listeners.tls import peer_subject
from portico.observe.stats import ByteCounter
from portico.outbox import OUTBOX
from portico.proxy import proxy_protocol
from portico.proxy.context import Http2Settings, HttpListenerSettings, ProxyContext
from portico.proxy.framing import Http1Framer
from portico.proxy.internal import internal_errors
from portico.proxy.l7 import (
    BLOCK_DONE,
    BLOCK_PENDING,
    BLOCK_QUEUED,
    BLOCK_UPSTREAM,
    ClientSide,
    Exchange,
)
from portico.proxy.proxy_protocol import ParseState
from portico.timers import Deadline

__all__ = ["ClientConnection", "Http2Settings", "HttpListenerSettings", "new_connection"]


# beyond the configured limits, before an unfinished head is refused
HEAD_SLACK: Final = 64 * 1024
LINGER_TIME: Final = 2.0  # after an error answer, how long unread client bytes are drained
LINGER_BYTES: Final = 1 << 20  # ... and how many
# on shutdown, how long a new connection has to send its request
DRAIN_FIRST_REQUEST: Final = 1.0
DRAIN_IDLE_GRACE: Final = 1.0  # on reload, how long an idle keep-alive connection stays open
MAX_METHOD: Final = 32  # longer than any method name llhttp knows
_UNKNOWN: Final = "unknown"  # the client address before connection_made (then: the peer's)
# Shared empty lists, never appended to: an idle connection holds no list of its own (72 bytes
# each). `_headers` gets a list of its own when a message begins (llhttp always reports that
# before any header), `_queue` when a request is pipelined behind the active one.
_NO_HEADERS: Final[list[Header]] = []
_NO_QUEUE: Final[list[Exchange]] = []


class _Nobody:
    """Receives no callbacks: the parser of a closed connection is never fed."""


# the parser's class as a constant: `httptools.HttpRequestParser` is a module attribute
# look-up each time (a new parser per connection, and per idle connection's next request)
_NEW_PARSER: Final = httptools.HttpRequestParser
# the callbacks a request parser takes (httptools asks its protocol for each by name)
_CALLBACKS: Final = (
    "on_message_begin",
    "on_url",
    "on_header",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
)


class ParserHooks:
    """The parser callbacks of every connection of one loop: each passes the call on to the
    connection being fed (`conn`, set by its `data_received` around `feed_data`).

    Why: httptools binds a new parser's callbacks by asking its protocol for each of them by
    name, and asked of a connection each answer was a new bound method (6, and 2 names that
    miss): ~2,100 instructions a connection, and as many objects to free after it, where a
    new connection costs ~45,000 in all. The parsers are given `protocol` instead, an object
    whose class holds these hooks' bound methods, made once: each name is a cached class
    look-up, nothing is made. A parser then holds no reference to its connection (no cycle to
    break, and less to keep per idle parser); passing the call on costs ~30 instructions a
    callback. One per loop (`hooks_of`): a loop's callbacks run in its one thread, and a
    connection fed from within another's callback restores the one before."""

    def __init__(self) -> None:
        self.conn: ClientConnection | None = None
        attributes: dict[str, object] = {name: getattr(self, name) for name in _CALLBACKS}
        attributes["__slots__"] = ()  # no instance dict to look in before the class
        self.protocol: object = type("ParserProtocol", (), attributes)()

    def on_message_begin(self) -> None:
        conn = self.conn
        assert conn is not None
        conn.on_message_begin()

    def on_url(self, url: bytes) -> None:
        conn = self.conn
        assert conn is not None
        conn.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        conn = self.conn
        assert conn is not None
        conn.on_header(name, value)

    def on_headers_complete(self) -> None:
        conn = self.conn
        assert conn is not None
        conn.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        conn = self.conn
        assert conn is not None
        conn.on_body(body)

    def on_message_complete(self) -> None:
        conn = self.conn
        assert conn is not None
        conn.on_message_complete()


# The last loop asked for and its hooks, as one tuple (read whole, whichever thread asks; as
# `timers.timers_of`, in a Final list: a C static when compiled): a worker has one loop.
_LAST_HOOKS: Final[list[tuple[asyncio.AbstractEventLoop | None, ParserHooks | None]]] = [
    (None, None)
]


def hooks_of(loop: asyncio.AbstractEventLoop) -> ParserHooks:
    """The `ParserHooks` of `loop`'s connections (new ones when another loop asked last)."""
    last = _LAST_HOOKS[0]
    hooks = last[1]
    if last[0] is not loop or hooks is None:
        hooks = ParserHooks()
        _LAST_HOOKS[0] = (loop, hooks)
    return hooks


_DEAD_PARSER: Final = httptools.HttpRequestParser(_Nobody())
# ... and its stand-in framer, never written through (no request is answered while it rests)
_RESTING_FRAMER: Final = Http1Framer(ByteCounter(), False)
# an idle keep-alive connection's stand-in parser (`ClientConnection.rest`): never fed either,
# the next bytes make a real one first
_RESTING_PARSER: Final = httptools.HttpRequestParser(_Nobody())


# a read up to this size that was one whole request head (no body) is remembered (`_Repeat`)
REPEAT_HEAD: Final = 2048


class _Repeat:
    """The last request a connection read, when its read was that head alone and whole (no body,
    nothing after it, keep-alive, no Upgrade) twice in a row: what parsing it gave. A request head
    is a pure function of its bytes and the listener's settings, and the parser is back where it
    began after it, so a read of the same bytes, between requests, is that request again: llhttp
    and the head's checks are not run again (they passed on these bytes). Clients repeat requests
    byte for byte (polls, health checks, load tests)."""

    __slots__ = ("head", "headers", "method", "raw", "settings", "target", "version")

    def __init__(
        self,
        raw: bytes,
        settings: HttpListenerSettings,
        method: bytes,
        target: bytes,
        version: str,
        headers: list[Header],
        head: RequestHead,
    ) -> None:
        self.raw = raw
        self.settings = settings
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.head = head
        # its head goes to a server through the server connection's memo of the last head it
        # was sent (`RequestLineMemo.serialize`: equal inputs, no bytes made), cheaper than
        # splicing the client's bytes again
        head.raw = b""


class _Refused(Exception):
    """Raised from a parser callback to stop parsing, with the status to answer (400 if
    none): `_Refused(431)`."""


def _status_of(refusal: BaseException | None) -> int:
    """The status a `_Refused` carries (400 if none)."""
    args = refusal.args if refusal is not None else ()
    status = args[0] if args else 400
    return status if isinstance(status, int) else 400


class ClientConnection(asyncio.Protocol, ClientSide):
    """One client connection: parse requests, hand each to an Exchange, answer in order."""

    def __init__(
        self, settings: HttpListenerSettings, context: ProxyContext, peer: Any = None
    ) -> None:
        """`peer`: the client's address as accept(2) gave it (listeners.acceptor), else
        connection_made asks the transport (a method call that formats the address again)."""
        # The flags first, together: compiled, each is a byte of the object, and a byte
        # between two pointers takes eight (an idle connection is mostly this object, #18)
        self._closed = False
        self._counted = False
        self._eof = False
        self.tunneled = False
        self._sniff_h2c = False  # h2c: the first bytes may be the HTTP/2 preface
        self._in_head = False
        self._head_due = False  # the header timeout is to be armed once this read is parsed
        self._lingering = False
        self._discarding = False  # reading the rest of an answered request's body
        self._quiet = False  # no byte since the last `rest` call
        self._served = False  # a response has been written whole
        # (declared here, the trait's flags are laid out with these, not 8 bytes apart)
        self.write_paused: bool = False
        self.direct_writes: bool = True  # body writes reach this socket (connections.SendRoom)
        self.draining: bool = False
        self.settings = settings
        self.context = context
        loop = self.loop = context.loop
        self.transport: asyncio.Transport | None = None
        self.client_ip = peer[0] if peer else _UNKNOWN
        # the loop's `ParserHooks`, kept by the context (`_hooks`), not by each connection
        self._parser = _NEW_PARSER(self._hooks().protocol)
        # its owner passed to `_on_timeout` when due: no bound method kept per connection
        self._deadline = Deadline(loop, _ON_TIMEOUT, self)
        self._bytes = context.stats.client_bytes(settings.name)  # every byte in and out
        # frames the responses, one at a time
        self._framer = Http1Framer(self._bytes, settings.proto == b"https")
        self._blocked = 0
        self.early = b""  # bytes after an Upgrade request's head
        self.client_subject: str | None = None  # mTLS: the verified certificate's subject
        self._proxy_header: bytes | None = None  # bytes of a PROXY header still expected
        self._preface = b""  # ... of which this much has arrived
        # the request being parsed
        self._url = b""
        self._headers = _NO_HEADERS
        self._head_size = 0
        self._reading: Exchange | None = None
        self._head_bytes = 0  # bytes received while a head is unfinished (a memory guard)
        self._start = b""  # the read being parsed, while its first byte begins a request
        self._line = 0  # ... the length of its request line, read off it as HTTP/1.1
        # lingering or discarding: how many more bytes may be thrown away before cutting
        self._linger_left = LINGER_BYTES
        self._idle_grace = 0.0  # draining: how long an idle connection stays open
        # the request being answered, and those pipelined behind it
        self.active: Exchange | None = None
        # a list, not a deque: reading pauses once one is queued, and an empty deque is 760 B
        # per idle connection where a list is 56 (and the shared empty one, nothing)
        self._queue = _NO_QUEUE
        # the active exchange, started only once the segment that carried it parsed cleanly:
        # a request whose bytes turn out malformed later in the same read never reaches a server
        self._unstarted: Exchange | None = None
        self._refusal: int | None = None  # answer owed once the queue is empty, then close
        # the last request read alone in one read, and the exchange of one that may become it
        self._repeat: _Repeat | None = None
        self._repeatable: Exchange | None = None
        self._last_read = b""  # the last read that was one request's head alone

    def _hooks(self) -> ParserHooks:
        """The `ParserHooks` of this connection's loop, as its context keeps them."""
        context = self.context
        hooks = context.parser_hooks
        if isinstance(hooks, ParserHooks):
            return hooks
        made = hooks_of(context.loop)
        context.parser_hooks = made
        return made

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._framer.transport = self.transport
        settings = self.settings
        # a slow reader makes Portico hold at most `limits.response_buffer` beyond the socket
        # buffers (upstreams.connections.client_read_size). Set here, not by the acceptor
        # once the loop's hand-over returns (its check that the transport is open, and a call:
        # ~2,000 instructions a connection); `high` by position: the loops' and the TLS
        # transport's first parameter, and a call with a keyword is not specialised by CPython
        self.transport.set_write_buffer_limits(settings.response_buffer // 2)
        if self.client_ip is _UNKNOWN:
            peer = transport.get_extra_info("peername")
            if peer:
                self.client_ip = peer[0]
        ssl_object = transport.get_extra_info("ssl_object") if settings.proto == b"https" else None
        if settings.client_subject:
            self.client_subject = peer_subject(ssl_object)
        http2 = settings.http2
        if http2 is not None:
            if ssl_object is None:
                self._sniff_h2c = True
            elif http2.only or ssl_object.selected_alpn_protocol() == "h2":
                self._proxy_header = None
                if self._admit():
                    self._switch_to_h2(b"")
                return
        trusted = settings.proxy_trusted
        if trusted is not None and is_trusted(self.client_ip, trusted):
            self._proxy_header = b""  # a PROXY header comes first
        if self._admit():
            if http2 is not None and http2.only and self._proxy_header is None:
                self._switch_to_h2(b"")  # h2c is the only way in: no need to sniff
                return
            self._deadline.set(settings.header_timeout)

    def _admit(self) -> bool:
        """Count the connection, or refuse it at accept (`max_conns_per_client`)."""
        limit = self.settings.max_conns_per_client
        if limit:
            if not self.context.admit(self.client_ip, limit):
                self._closed = True  # refused at accept: never counted, never parsed
                assert self.transport is not None
                self.transport.abort()  # nothing written yet
                return False
            self._counted = True
        self.context.remember(self)
        self.context.stats.connection_opened(self.settings.name)
        return True

    def _switch_to_h2(self, data: bytes) -> None:
        """The client speaks HTTP/2: an `H2ClientConnection` takes the connection over, as
        counted and admitted here."""
        transport = self.transport
        assert transport is not None
        self._closed = True
        self._deadline.cancel()
        self.context.forget(self)
        # the h2 library costs ~14 MiB a process: loaded only by workers with an HTTP/2 listener
        from portico.listeners.h2 import H2ClientConnection

        h2 = H2ClientConnection(self.settings, self.context)
        # this object is done: nothing of it may keep the transport (and its TLS state) alive
        self.transport = self._framer.transport = None
        self._parser = _DEAD_PARSER
        h2.adopt(transport, self.client_ip, self.client_subject, self._counted, data)
        if self.draining:
            h2.drain()  # the preface arrived while this worker drains

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self.context.release(self.client_ip)
        if self._closed and not self._counted and self.active is None:
            return  # refused at accept
        self._closed = True
        self._deadline.cancel()
        self.context.forget(self)
        self.context.stats.connection_closed(self.settings.name)
        active, self.active = self.active, None
        if active is not None:
            active.client_gone()
        for queued in self._queue:
            queued.client_gone()
        self._queue = _NO_QUEUE
        self._reading = self._unstarted = None
        # what a half-parsed head holds (llhttp's state, an unfinished field) is freed now,
        # and stray bytes fed after this reach no callback
        self._parser = _DEAD_PARSER

    def data_received(self, data: bytes) -> None:
        self._bytes.received += len(data)
        self._quiet = False
        if self._proxy_header is not None:
            data = self._read_proxy_header(data)
            if not data:
                return
        if self._sniff_h2c:
            data = self._sniff(data)
            if not data:
                return
        if self._lingering:
            self._linger_left -= len(data)
            if self._linger_left < 0:
                self.abort()
            return
        if self._blocked & BLOCK_DONE:
            return
        repeat = self._repeat
        if (
            repeat is not None
            and data == repeat.raw
            and self.active is None
            and self._reading is None
            and not self._in_head
            and not self._blocked
            and not self._eof
            and not self._closed
            and not self._discarding
            and repeat.settings is self.settings
        ):
            self._repeated(repeat)
            return
        hooks = self.context.parser_hooks
        if not isinstance(hooks, ParserHooks):
            hooks = self._hooks()
        if self._parser is _RESTING_PARSER:
            self._parser = _NEW_PARSER(hooks.protocol)
            framer = self._framer = Http1Framer(self._bytes, self.settings.proto == b"https")
            framer.transport = self.transport
        # between requests, this read begins the next one: its version is read off the request
        # line (`_version`), not formatted by httptools (~2k instructions a request)
        self._start = data if not self._in_head and self._reading is None else b""
        fed = hooks.conn
        hooks.conn = self  # the parser's callbacks are this connection's (`ParserHooks`)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # llhttp stops after the head of an Upgrade request: what follows belongs to the
            # new protocol (a tunnel, if the server agrees), or to nobody (then we close)
            self.early = data[exc.args[0] :]
            self._block(BLOCK_DONE)
        except httptools.HttpParserCallbackError as exc:
            # httptools keeps what the callback raised as the context
            cause = exc.__context__
            if cause is not None and not isinstance(cause, _Refused):
                self._failed(cause)  # not a refusal: a bug (building the Exchange, say)
            elif self._discarding:
                self.abort()  # more of an answered body than max_discard_size
            else:
                self._refuse(_status_of(cause))
        except httptools.HttpParserError:
            if self._discarding:
                self.abort()  # the answered request's body turned out malformed
            else:
                self._refuse(400)
        else:
            if self._in_head:
                if self._head_due:
                    self._deadline.set(self.settings.header_timeout)
                # httptools holds an unfinished field in memory and reports it only whole:
                # bound what a client may make us hold while its head never ends
                self._head_bytes += len(data)
                settings = self.settings
                if (
                    self._head_bytes
                    > settings.max_request_line + settings.max_header_size + HEAD_SLACK
                ):
                    self._refuse(431)
            else:
                repeatable = self._repeatable
                if (
                    repeatable is not None
                    and repeatable is self._unstarted
                    and self._reading is None
                    and self._queue is _NO_QUEUE
                ):
                    # this read was that request's head, whole and alone (it began the read,
                    # it ended, nothing began after it): remembered once read twice in a row
                    # (a client that never repeats itself costs a comparison, nothing made),
                    # before the exchange edits its head
                    if data == self._last_read:
                        self._repeat = _Repeat(
                            data,
                            self.settings,
                            repeatable.method,
                            repeatable.target,
                            repeatable.version,
                            list(repeatable.headers),
                            repeatable.head.copy(),
                        )
                    self._last_read = data
        finally:
            hooks.conn = fed
            self._head_due = False
        self._repeatable = None
        self._start = b""
        unstarted = self._unstarted
        if unstarted is not None:
            self._unstarted = None
            if unstarted is self.active and not unstarted.finished:
                self._begin(unstarted)

    def eof_received(self) -> bool:
        self._eof = True
        if self.transport is not None:
            OUTBOX.flush_to(self.transport)  # returning False closes: this turn's writes first
        if self._lingering or self._discarding:
            return False
        # half-close: keep writing to answer what was asked, then close; if nothing is owed,
        # returning False closes now
        return self.active is not None or self._reading is not None

    def pause_writing(self) -> None:
        self.write_paused = True
        self._deadline.set(self.settings.send_timeout)
        active = self.active
        if active is not None:
            active.client_writable(False)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.active is not None:
            self._deadline.clear()
            self.active.client_writable(True)

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        # the state of the head being read was reset when the last one completed
        self._in_head = True
        self._headers = []
        if self.active is None and (self._served or self.draining):
            # a new connection's first head is timed from its accept, where connection_made
            # armed the header timeout (as NGINX's client_header_timeout): not armed again
            # here (a clock read per connection), nor pushed back by a client that waits
            # before its first byte. Draining, it was cut short: the head gets its full time.
            # Armed once this read is parsed, if the head is still unfinished then (a head that
            # ends in the read that began it, as nearly all do, is spared a clock read; no
            # timer can run in between, so it is timed from the same moment)
            self._head_due = True

    def on_url(self, url: bytes) -> None:
        url = self._url = self._url + url
        # the whole request line: method SP target SP HTTP/1.x
        # a target shorter than max_request_line - 10 - MAX_METHOD cannot make the request
        # line too long, whatever the method
        room = self.settings.max_request_line - 10
        if len(url) > room - MAX_METHOD and len(url) + len(self._parser.get_method()) > room:
            raise _Refused(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        settings = self.settings
        if self._head_size > settings.max_header_size or len(self._headers) >= settings.max_headers:
            raise _Refused(431)
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_due = False  # the head ended in the read that began it: never armed
        parser = self._parser
        settings = self.settings
        method: bytes = parser.get_method()
        version = self._version(method)
        headers = self._headers
        target = self._url
        # the request line as the proxy sends it, from this read's first byte: the head a
        # server gets may be made of the client's bytes, if they are what it would be made of
        line = self._line
        raw = self._start if line and target[:1] == b"/" else b""
        # positional: a call with keywords is not specialised by CPython 3.11
        head = split_request_headers(headers, settings.x_forwarded, settings.forwarded, raw, line)
        if version != "1.1" and version != "1.0":
            raise _Refused(505)  # llhttp reads a missing version as 0.9
        if method == b"CONNECT":
            raise _Refused(405)
        if target[:1] != b"/":
            target = self._absolute_target(target, head)
        hosts = head.hosts
        if hosts != 1 and (hosts > 1 or version == "1.1"):
            raise _Refused(400)  # RFC 9112 §3.2: exactly one Host in HTTP/1.1
        kind = head.kind
        if kind is CHUNKED_BODY and version == "1.0":
            raise _Refused(400)  # RFC 9112 §6.1: faulty framing from an HTTP/1.0 client
        max_body = settings.max_body_size
        if max_body and kind is LENGTH_BODY and head.length > max_body:
            raise _Refused(413)
        keep_alive: bool = parser.should_keep_alive()
        # llhttp flags an upgrade only for a request with an Upgrade field (CONNECT is refused)
        if head.upgrade is not None and parser.should_upgrade():
            # Upgrade (WebSocket): forwarded for a GET without a body; after the server's 101
            # the connection becomes a tunnel. Else answered as a plain request, then closed,
            # since llhttp treats any bytes after this head as another protocol's.
            if kind is not NO_BODY:
                raise _Refused(400)
            if method != b"GET":
                head.upgrade = None
            keep_alive = False
        else:
            head.upgrade = None
        if self._eof:
            keep_alive = False
        exchange = Exchange(self, self._framer, method, target, version, headers, head, keep_alive)
        if (
            kind is NO_BODY
            and keep_alive
            and head.upgrade is None
            and self.active is None
            and 0 < len(self._start) <= REPEAT_HEAD
        ):
            self._repeatable = exchange  # (remembered if it turns out to be the whole read)
        self._reading = exchange
        # ready for the next head
        self._in_head = False
        self._url = b""
        self._headers = _NO_HEADERS
        self._head_size = 0
        self._head_bytes = 0
        active = self.active
        if active is None:
            if kind is NO_BODY:
                self._deadline.clear()
            else:
                self._deadline.set(settings.body_timeout)
            self.active = exchange
            self._framer.http11 = version == "1.1"
            self._unstarted = exchange
        else:
            if self._queue is _NO_QUEUE:
                self._queue = [exchange]
            else:
                self._queue.append(exchange)
            self._block(BLOCK_QUEUED)

    def _repeated(self, repeat: _Repeat) -> None:
        """A read that is byte for byte the last request remembered (`_Repeat`), between
        requests: that request again, as parsing it would make it (its head's timeout, armed
        when it began and cleared when it ended, is left clear)."""
        self._deadline.clear()
        try:
            exchange = Exchange(
                self,
                self._framer,
                repeat.method,
                repeat.target,
                repeat.version,
                list(repeat.headers),
                repeat.head.copy(),
                True,
            )
        except Exception as exc:  # as from a parser callback: a bug, answered 500
            self._failed(exc)
            return
        self.active = exchange
        self._framer.http11 = repeat.version == "1.1"
        exchange.request_end()
        self._begin(exchange)

    def _version(self, method: bytes) -> str:
        """The version of the request whose head just ended: read off its request line when
        that began the read being parsed (then the line is all there, as llhttp accepted it:
        METHOD SP target SP HTTP/d.d, strict, with nothing before but the CR/LF llhttp skips,
        which this refuses), else asked of the parser."""
        start = self._start
        self._line = 0
        major = len(method) + len(self._url) + 7  # the major digit: after "HTTP/"
        if (
            len(start) > major + 2
            and start[0] != 13
            and start[0] != 10
            and start[len(method)] == 32
            and start[major - 6] == 32
            and start[major] == 49
            and start[major + 1] == 46
        ):
            minor = start[major + 2]
            if minor == 49:
                self._line = major + 3  # `method SP target SP HTTP/1.1` ends there
                return "1.1"
            if minor == 48:
                return "1.0"
        version: str = self._parser.get_http_version()
        return version

    def on_body(self, body: bytes) -> None:
        exchange = self._reading
        assert exchange is not None
        exchange.received += len(body)
        if self._discarding:
            self._linger_left -= len(body)
            if self._linger_left < 0:
                raise _Refused  # stops the parser; data_received cuts the connection
            return
        max_body = self.settings.max_body_size
        if max_body and exchange.received > max_body:
            raise _Refused(413)
        if exchange is self.active and not self.write_paused:
            self._deadline.set(self.settings.body_timeout)
        exchange.request_body(body)

    def on_message_complete(self) -> None:
        self._start = b""  # a request pipelined behind this one does not begin the read
        exchange = self._reading
        self._reading = None
        if exchange is not None:
            exchange.request_end()
        if self._discarding:
            # the rest of an answered request's body is read: on to the next request
            self._discarding = False
            if self.draining:
                self._drain_idle()  # its answer said keep-alive: one may be on its way
                return
        if self.active is None and not self._closed:
            self._deadline.set(self.settings.keepalive_timeout)

    def rest(self) -> None:
        """Called by the worker about once a second. A keep-alive connection idle between
        requests since the previous call gives up its parser (llhttp's state and settings),
        its framer and its memo of the last request, and gets a new parser and framer with
        its next bytes:
        most of a server's connections are idle ones, and a new parser for every request
        would cost ~2.5% of a small request's CPU."""
        if not self._quiet:
            self._quiet = True  # the next call releases, if no byte comes before it
            return
        if (
            self.active is None
            and self._reading is None
            and self._unstarted is None
            and not self._in_head
            and not self._closed
            and not self._eof
            and not self._lingering
            and not self._discarding
            and not self._blocked
            and not self.tunneled
            and not self._sniff_h2c
            and self._proxy_header is None
            and self._parser is not _DEAD_PARSER
        ):
            self._parser = _RESTING_PARSER
            self._repeat = None  # nor its last request
            self._last_read = b""
            # nor its framer (between responses, a new one's state): 96 bytes an idle
            # connection, made again with the parser
            self._framer = _RESTING_FRAMER

    # -- used by the exchange ----------------------------------------------------------------

    def write(self, data: bytes | memoryview) -> None:
        assert self.transport is not None
        self._bytes.sent += len(data)
        OUTBOX.write(self.transport, data)

    def writelines(self, parts: list[bytes | memoryview]) -> None:
        assert self.transport is not None
        size = 0
        for part in parts:
            size += len(part)
        self._bytes.sent += size
        OUTBOX.writelines(self.transport, parts, size)

    def block_reading(self, reason: int) -> None:
        self._block(reason)

    def unblock_reading(self, reason: int) -> None:
        self._unblock(reason)

    def exchange_done(self, exchange: Exchange, keep_alive: bool, linger: bool = False) -> None:
        """`exchange` has written its whole response: go on with the next request, or close
        (after a refusal, with a lingering close so that the client reads the answer)."""
        if exchange is not self.active:
            return
        self.active = None
        self._served = True
        if self._closed:
            return
        if linger:
            self.linger_close()
            return
        if not exchange.request_complete:
            self._discard(keep_alive)
            return
        if not keep_alive:
            if self.draining:
                self.linger_close()  # a pipelined request may be on its way: no reset
            else:
                self.close()
            return
        # draining, a response that said keep-alive (its head left before the drain began)
        # tells the client it may send another request: the connection is idle, not done
        if self._queue:
            nxt = self._queue.pop(0)
            if not self._queue:
                self._queue = _NO_QUEUE
                self._unblock(BLOCK_QUEUED)
            self.active = nxt
            self._framer.http11 = nxt.version == "1.1"
            if self.write_paused:
                self._deadline.set(self.settings.send_timeout)
            else:
                self._deadline.clear()
            self._begin(nxt)
            return
        if self._refusal is not None:
            self._deadline.clear()
            self.write(http1_bytes(client_error(self._refusal), close=True))
            self.linger_close()
            return
        if self._blocked:
            self._unblock(BLOCK_QUEUED)
        if self._reading is None and not self._eof:
            if self.draining:
                self._drain_idle()
            else:
                self._deadline.set(self.settings.keepalive_timeout)  # the common case
        else:
            self._deadline.clear()
            if self._eof:
                self.close()

    def _discard(self, keep: bool) -> None:
        """The answer went out before the request's body was all in (the server answered
        early, or Portico did). Closing now would make the kernel reset the connection over
        the unread body, and destroy the answer before the client read it. So read the rest
        and throw it away (NGINX's discarded body, bounded by `max_discard_size` and
        `linger_timeout`), then serve the next request (`keep`); or close gently."""
        self._unblock(BLOCK_UPSTREAM | BLOCK_PENDING)  # the exchange no longer holds reading
        settings = self.settings
        if not keep:
            self.linger_close(settings.linger_timeout, settings.max_discard_size)
            return
        self._discarding = True
        self._linger_left = settings.max_discard_size
        self._deadline.set(settings.linger_timeout)

    def close(self) -> None:
        """Close after what was written is flushed."""
        # blocked for good, without pausing the transport first: closing stops its reading
        # (uvloop's, asyncio's and the TLS ones alike), one call less per connection
        self._blocked |= BLOCK_DONE
        if self.transport is not None and not self._closed:
            OUTBOX.flush_to(self.transport)
            self.transport.close()

    def linger_close(self, seconds: float = LINGER_TIME, limit: int = LINGER_BYTES) -> None:
        """Close after an answer without losing it: closing with unread client bytes makes
        the kernel send a reset that can destroy the answer in flight. So shut the write
        side, read and discard for `seconds` (at most `limit` bytes), then close (NGINX's
        lingering close)."""
        transport = self.transport
        if transport is None or self._closed:
            return
        if not transport.can_write_eof():
            self.close()
            return
        self._lingering = True
        self._discarding = False
        self._linger_left = limit
        self._blocked = 0
        transport.resume_reading()
        OUTBOX.flush_to(transport)
        transport.write_eof()
        self._deadline.set(seconds)

    def abort(self) -> None:
        """Close at once: the response cannot be completed, so none is presented as complete."""
        self._block(BLOCK_DONE)
        if self.transport is not None and not self._closed:
            OUTBOX.flush_to(self.transport)
            self.transport.abort()

    def drain(self, idle_grace: float = 0.0) -> None:
        """Shutdown or reload: finish the request in progress (its response says `Connection:
        close`), then close. An idle connection stays open for `idle_grace` seconds (0 on
        shutdown, `DRAIN_IDLE_GRACE` on reload), a just-accepted one for `DRAIN_FIRST_REQUEST`,
        since a request may be on its way; one that arrives is answered with `Connection:
        close`. A tunnel (WebSocket) runs on until it ends or the grace time runs out."""
        self.draining = True
        self._idle_grace = idle_grace
        if (
            self.active is None
            and self._reading is None
            and not self.tunneled
            and not self._in_head  # a head is arriving: answered, then closed
            and not self._lingering
            and not self._closed
        ):
            if self._served:
                self._drain_idle()
            else:
                # just accepted: its first request may be on the wire right now (a reload
                # hands the socket to new workers at any moment)
                self._deadline.set(min(DRAIN_FIRST_REQUEST, self.settings.header_timeout))

    def _drain_idle(self) -> None:
        """Draining, between requests: close after the idle grace (HAProxy's
        idle-close-on-response; a request arriving before is answered with `Connection:
        close`), or at once if there is none. Either way with a lingering close: the write
        side first, so the client sees the end before it sends again, then the read side
        drained for a moment, so a request crossing our FIN is not met by a reset (RFC 9112
        §9.6)."""
        grace = min(self._idle_grace, self.settings.keepalive_timeout)
        if grace > 0:
            self._deadline.set(grace)
        else:
            self.linger_close()

    def hand_over(self) -> asyncio.Transport:
        """The connection becomes a tunnel: this object stops parsing and timing it."""
        assert self.transport is not None
        self.tunneled = True
        self.active = None
        self._deadline.cancel()
        return self.transport

    def tunnel_closed(self) -> None:
        """The tunnel that took this connection over has ended."""
        self.connection_lost(None)

    # -- internals ---------------------------------------------------------------------------

    def _read_proxy_header(self, data: bytes) -> bytes:
        """A trusted load balancer in front sends a PROXY header (v1 or v2) first: the real
        client's address replaces the peer's for everything after (logs, X-Forwarded-For,
        hashing, rate limits). Returns what follows it; a malformed one drops the connection."""
        buffer = (self._proxy_header or b"") + data
        result = proxy_protocol.parse(buffer)
        if result.state is ParseState.NEED_MORE:
            self._proxy_header = buffer  # the header timeout bounds the wait
            return b""
        self._proxy_header = None
        if result.state is ParseState.MALFORMED:
            self.abort()
            return b""
        if result.source is not None:
            self.client_ip = result.source[0]
        return buffer[result.length :]

    def _sniff(self, data: bytes) -> bytes:
        """h2c with prior knowledge: a connection whose first bytes are the HTTP/2 preface
        is handed to HTTP/2; anything else is HTTP/1.x, unless the listener speaks only HTTP/2
        (then HTTP/2 answers a broken preface with a GOAWAY). Returns the bytes left for
        HTTP/1.x."""
        buffered = self._preface + data
        http2 = self.settings.http2
        if http2 is not None and http2.only:
            self._sniff_h2c = False
            self._preface = b""
            self._switch_to_h2(buffered)
            return b""
        if len(buffered) < len(PREFACE) and PREFACE.startswith(buffered):
            self._preface = buffered  # a preface split across reads: wait for the rest
            return b""
        self._sniff_h2c = False
        self._preface = b""
        if buffered.startswith(PREFACE):
            self._switch_to_h2(buffered)
            return b""
        return buffered

    def _absolute_target(self, target: bytes, head: RequestHead) -> bytes:
        """Absolute-form (RFC 9112 §3.2.2): its authority replaces Host; forward origin-form."""
        if target == b"*":
            return target
        try:
            url = httptools.parse_url(target)
        except httptools.HttpParserInvalidURLError:
            raise _Refused(400) from None
        if not url.host or url.schema not in (b"http", b"https"):
            raise _Refused(400)
        # httptools' stub says int, but the port is None when the target has none: read it
        # untyped, or the compiled build converts None to int and raises (found by the fuzzer)
        port: object = getattr(url, "port", None)
        authority = url.host + b":%d" % port if isinstance(port, int) else url.host
        head.host = authority
        head.hosts = 1
        head.headers = [(b"Host", authority)] + [h for h in head.headers if h[0].lower() != b"host"]
        # likewise the path and query: None when absent, whatever the stub says
        given: object = getattr(url, "path", None)
        query: object = getattr(url, "query", None)
        path = given if isinstance(given, bytes) and given else b"/"
        if isinstance(query, bytes) and query:
            path += b"?" + query
        return path

    def _refuse(self, status: int) -> None:
        """The request being parsed is bad: it is never forwarded; answer in order and close."""
        self._block(BLOCK_DONE)
        reading, self._reading = self._reading, None
        if reading is not None and reading is self.active:
            reading.refuse(status)
            return
        if reading is not None and reading in self._queue:
            self._queue.remove(reading)
        if self.active is None:
            self.write(http1_bytes(client_error(status), close=True))
            self.linger_close()
        else:
            self._refusal = status

    def _begin(self, exchange: Exchange) -> None:
        """Start `exchange` (its filters, routing, the way upstream). What it raises is a bug:
        that request gets a 500 (logged) and the connection closes, since its state is not
        to be trusted; the loop would otherwise just drop the connection without a word."""
        try:
            exchange.begin()
        except Exception as exc:
            internal_errors.report("setting up a request", exc)
            if self.active is not exchange or self._closed:
                return
            if exchange.finished:
                self.abort()  # answered, yet it raised: nothing more is to be trusted
            else:
                self._block(BLOCK_DONE)
                exchange.refuse(500)  # never forwarded; a response under way is cut

    def _failed(self, exc: BaseException) -> None:
        """A parser callback raised something other than a refusal (a bug, e.g. while
        building the request's Exchange): logged, and the request is answered 500 in order,
        never forwarded, then the connection closes (what was being parsed is lost)."""
        internal_errors.report("reading a request", exc)
        if self._discarding:
            self.abort()
        else:
            self._refuse(500)

    def _block(self, reason: int) -> None:
        if not self._blocked and self.transport is not None and not self._closed:
            self.transport.pause_reading()
        self._blocked |= reason

    def _unblock(self, reason: int) -> None:
        if not self._blocked & reason:
            return
        self._blocked &= ~reason
        if not self._blocked and self.transport is not None and not self._closed:
            self.transport.resume_reading()

    def _on_timeout(self) -> None:
        if self._closed:
            return
        if self._lingering or self._discarding:
            self.close()  # lingered (or waited for the rest of an answered body) long enough
            return
        if self.write_paused:
            self.abort()  # the client stopped reading our response
        elif self._reading is not None:
            if self._reading is self.active:
                self._reading.refuse(408)
            else:
                self.abort()
        elif self.active is None:
            if self._in_head:
                self.write(http1_bytes(client_error(408), close=True))  # a head never finished
            if self.draining:
                self.linger_close()
            else:
                self.close()


# what a connection's deadline calls, with the connection, when it is due (`Deadline`'s owner)
_ON_TIMEOUT: Final[Callable[[ClientConnection], None]] = ClientConnection._on_timeout


def new_connection(
    settings: HttpListenerSettings, context: ProxyContext, peer: Any
) -> ClientConnection:
    """`ClientConnection(settings, context, peer)`, as the worker's acceptor makes one per
    accepted connection (`partial(new_connection, settings, context)(peer)`): a call of a
    compiled function, where a compiled class called from outside goes through type_call and
    a tuple of its arguments (~300 instructions more a connection)."""
    return ClientConnection(settings, context, peer)
