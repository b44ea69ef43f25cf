"""The client side of an HTTP/2 connection (RFC 9113): one protocol object per connection,
one `H2Stream` per request.

Owns: the h2 library's connection state machine (frames, HPACK, flow-control arithmetic,
protocol errors), turning each request stream into an `Exchange` that goes to the same
HTTP/1.1 server pools as any other request (its response framed by an `H2Framer` into this
stream's HEADERS and DATA frames), flow control both ways, the connection's
timeouts, graceful GOAWAY on drain, and the defences against known HTTP/2 attacks
(`portico.http.h2.FloodGuard`: rapid reset, ping/settings floods, window-update showers;
CONTINUATION floods and HPACK bombs are bounded by h2 itself and by the header-list limit).

Flow control, both ways, with bounded memory:
- Client to server: a DATA frame is acknowledged (so the client may send more) only once the
  exchange has taken it and is not holding the client back; a stream whose server is slow
  stops getting window, the others go on.
- Server to client: each stream queues what its server sends and writes it as the stream's
  and the connection's windows allow; past `STREAM_BUFFER` queued bytes the stream stops
  reading its server. When the socket itself is full, no stream writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import h2
from h2.config import H2Configuration
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    PingAckReceived,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    UnknownFrameReceived,
    WindowUpdated,
)
from h2.exceptions import DenialOfServiceError, ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame

from portico.http.errors import client_error
from portico.http.h2 import FloodGuard, H2Request, RequestLimits, map_request
from portico.http.h2wire import (
    WRITTEN_FOR,
    WireConnection,
    connection_class,
    wire_send_data,
    wire_send_headers,
    wire_window,
)
from portico.http.headers import CHUNKED_BODY, LENGTH_BODY, NO_BODY, Header, split_request_headers
from portico.http.hpack import Decoder, Encoder
from portico.proxy.context import HttpListenerSettings, ProxyContext
from portico.proxy.framing import H2Framer, StreamSide
from portico.proxy.l7 import ClientSide, Exchange
from portico.timers import Deadline

log = logging.getLogger("portico.h2")

# h2's connection with its per-frame paths compiled, under the h2 release they copy
_CONNECTION: Final = connection_class(h2.__version__)
# ... whose sending methods are then called directly (compiled: C calls, not method look-ups)
_WIRE: Final = _CONNECTION is WireConnection
if h2.__version__ != WRITTEN_FOR:
    log.warning(
        "h2 %s is not the release Portico's HTTP/2 fast paths copy (%s): using the library's "
        "own, slower (pin h2==%s for them)",
        h2.__version__,
        WRITTEN_FOR,
        WRITTEN_FOR,
    )

# h2's events a request brings, as C statics (an imported name is looked up per use)
_REQUEST_RECEIVED: Final = RequestReceived
_STREAM_ENDED: Final = StreamEnded
_DATA_RECEIVED: Final = DataReceived

STREAM_BUFFER: Final = 128 * 1024  # response bytes queued per stream before its server is paused
STREAM_RESUME: Final = 32 * 1024  # ... and resumed below this
DEFER_BELOW: Final = (
    32 * 1024
)  # queued bytes under this wait for the turn's flush (joined, with the end)
OUTBOUND_TURN: Final = 256 * 1024  # DATA bytes all streams may hand to h2 between two socket writes
CONTROL_BACKLOG: Final = (
    4 * 1024 * 1024
)  # unsent bytes while the socket is full: a client not reading
HEADER_SLACK: Final = 16 * 1024  # the HPACK decoder's hard cap is the header limit plus this
LINGER_TIME: Final = 1.0  # after a GOAWAY for an error, how long the client's bytes are discarded
LINGER_BYTES: Final = 1 << 20  # ... and how many
MAX_STREAM_ID: Final = 2**31 - 1
DRAIN_PING: Final = (
    b"portico\x00"  # the opaque data of the PING that follows a drain's first GOAWAY
)
DRAIN_PING_TIMEOUT: Final = 2.0  # a client that never answers it gets the final GOAWAY after this


class H2Stream(ClientSide, StreamSide):
    """One request stream: the client side an `Exchange` answers (`ClientSide`)."""

    __slots__ = (
        "_blocked",
        "_deadline",
        "_dirty",
        "_end_pending",
        "_pending",
        "_pending_size",
        "_trailers",
        "_unacked",
        "client_ip",
        "client_subject",
        "closed",
        "conn",
        "context",
        "exchange",
        "head_only",
        "loop",
        "request_done",
        "response_done",
        "settings",
        "stream_id",
        "transport",
        "write_paused",
    )

    # never true of a stream: connections drain, streams finish
    draining = False
    early = b""
    direct_writes = False  # streams share the connection: reads keep the bounded rule

    def __init__(self, conn: H2ClientConnection, stream_id: int, method: bytes) -> None:
        self.conn = conn
        # what the exchange reads of its client, copied: read many times per request
        self.settings = conn.settings
        self.context = conn.context
        self.loop = conn.loop
        self.transport = conn.transport
        self.client_ip = conn.client_ip
        self.client_subject = conn.client_subject
        self.stream_id = stream_id
        self.head_only = method == b"HEAD"
        self.exchange: Exchange | None = None
        self.write_paused = False
        self.request_done = False  # the client ended its side
        self.response_done = False  # END_STREAM is queued on our side
        self.closed = False
        self._blocked = 0  # BLOCK_* reasons the exchange gave for not taking more body
        self._unacked = 0  # body bytes received but not yet given back as window
        self._pending: deque[bytes | memoryview] = deque()
        self._pending_size = 0
        self._end_pending = False
        self._dirty = False  # queued for the connection's next flush (`H2ClientConnection.later`)
        self._trailers: list[Header] | None = None  # sent after the body, with END_STREAM
        self._deadline = Deadline(conn.loop, self._on_timeout)

    # -- what an exchange reads of its client ----------------------------------------------------

    # -- the response, from its framer (portico.proxy.framing.H2Framer) --------------------------

    def send_headers(self, fields: list[Header], *, end: bool) -> None:
        if self.closed:
            return
        conn = self.conn
        if _WIRE:
            wire_send_headers(conn.h2, self.stream_id, fields, end)
        else:
            conn.h2.send_headers(self.stream_id, fields, end_stream=end)
        if end:
            self._sent_end()
        conn.flush()

    def send_data(self, data: bytes | memoryview) -> None:
        if self.closed or self.head_only:
            return
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size < DEFER_BELOW:
            # small: framed at the end of this turn, when the end of the stream may be known
            # too (one DATA frame with END_STREAM rather than two)
            self.conn.later(self)
            return
        self.push()
        if not self.write_paused and self._pending_size > STREAM_BUFFER:
            self.write_paused = True
            self._deadline.set(self.conn.settings.send_timeout)
            exchange = self.exchange
            if exchange is not None:
                exchange.client_writable(False)

    def send_trailers(self, fields: list[Header]) -> None:
        """End the stream with a trailer section, once the body before it is out."""
        if self.closed or self.response_done:
            return
        self._trailers = fields
        self._end_pending = True
        self.conn.later(self)

    def send_end(self) -> None:
        if self.closed or self.response_done:
            return
        self._end_pending = True
        self.conn.later(self)

    def exchange_done(self, exchange: Exchange, keep_alive: bool, linger: bool = False) -> None:
        """The exchange wrote its whole response (it may still wait here for window)."""

    def abort(self) -> None:
        """The response cannot be completed: reset this stream only."""
        self.reset(ErrorCodes.INTERNAL_ERROR)

    def hand_over(self) -> asyncio.Transport:
        raise RuntimeError("an HTTP/2 stream is never upgraded")  # Upgrade is refused first

    def tunnel_closed(self) -> None:
        pass

    # -- request body flow control -----------------------------------------------------------

    def block_reading(self, reason: int) -> None:
        self._blocked |= reason

    def unblock_reading(self, reason: int) -> None:
        self._blocked &= ~reason
        if not self._blocked and self._unacked and not self.closed:
            unacked, self._unacked = self._unacked, 0
            self.conn.acknowledge(self.stream_id, unacked)
            self.conn.flush()

    # -- from the connection -------------------------------------------------------------------

    def on_data(self, data: bytes, flow_length: int) -> None:
        exchange = self.exchange
        if exchange is None or exchange.finished:
            self.conn.acknowledge(self.stream_id, flow_length)  # answered already: discard
            return
        exchange.received += len(data)
        settings = self.conn.settings
        max_body = settings.max_body_size
        if max_body and exchange.received > max_body:
            self.conn.acknowledge(self.stream_id, flow_length)
            exchange.refuse(413)
            return
        if not self.write_paused:
            self._deadline.set(settings.body_timeout)
        if data:
            exchange.request_body(data)
        if self._blocked:
            self._unacked += flow_length
        else:
            self.conn.acknowledge(self.stream_id, flow_length)

    def on_request_end(self) -> None:
        self.request_done = True
        if not self.write_paused:
            self._deadline.clear()
        exchange = self.exchange
        if exchange is not None and not exchange.finished:
            exchange.request_end()
        if self.response_done:
            self._close()

    def on_reset(self) -> None:
        """The client reset the stream (or the connection is gone): cancel what it asked for."""
        if self.closed:
            return
        exchange = self.exchange
        self._end()
        if exchange is not None and not exchange.finished:
            exchange.client_gone()

    def push(self) -> None:
        """Write queued response bytes as far as the windows allow."""
        conn = self.conn
        if self.closed or conn.write_paused:
            return
        h2 = conn.h2
        stream_id = self.stream_id
        pending = self._pending
        frames = 0
        # the windows, read once: each frame sent takes its size off both the stream's and
        # the connection's, so their minimum goes down by exactly that much
        available = 0
        if pending:
            available = (
                wire_window(h2, stream_id) if _WIRE else h2.local_flow_control_window(stream_id)
            )
        frame_size = h2.max_outbound_frame_size
        while pending:
            if conn.unsent >= OUTBOUND_TURN:
                conn.starved = True  # the other streams' turn: this one goes on after a flush
                break
            window = min(available, frame_size)
            if window <= 0:
                break
            chunk = pending[0]
            if len(chunk) > window:
                view = memoryview(chunk)
                pending[0] = view[window:]
                chunk = view[:window]
            else:
                pending.popleft()
            size = len(chunk)
            self._pending_size -= size
            conn.unsent += size
            available -= size
            frames += 1
            end = not pending and self._end_pending and self._trailers is None
            if _WIRE:
                wire_send_data(h2, stream_id, chunk, end)
            else:
                h2.send_data(stream_id, chunk, end_stream=end)
        if frames:
            conn.guard.data_frame_sent(frames)
        if self._end_pending and not pending:
            if self._trailers is not None:
                if _WIRE:
                    wire_send_headers(h2, stream_id, self._trailers, True)
                else:
                    h2.send_headers(stream_id, self._trailers, end_stream=True)
            elif not frames:
                if _WIRE:
                    wire_send_data(h2, stream_id, b"", True)
                else:
                    h2.send_data(stream_id, b"", end_stream=True)
            self._sent_end()
        if self.write_paused and self._pending_size <= STREAM_RESUME:
            self.write_paused = False
            self._deadline.clear()
            exchange = self.exchange
            if exchange is not None:
                exchange.client_writable(True)
        conn.flush()

    def reset(self, code: ErrorCodes) -> None:
        if self.closed:
            return
        with contextlib.suppress(ProtocolError, StreamClosedError):
            self.conn.h2.reset_stream(self.stream_id, code)
        self._end()
        self.conn.flush()

    # -- internals -----------------------------------------------------------------------------

    def _sent_end(self) -> None:
        self.response_done = True
        self._end_pending = False
        if self.request_done:
            self._close()
        else:
            # answered before the client finished its request (a refusal, an early answer):
            # ask it to stop sending, without error (RFC 9113 §8.1)
            self.reset(ErrorCodes.NO_ERROR)

    def _close(self) -> None:
        if not self.closed:
            self._end()

    def _end(self) -> None:
        """The stream is over: no timer, no queued bytes, and no link back to its exchange
        (which keeps one to the stream), so neither waits for the garbage collector."""
        self.closed = True
        self._deadline.cancel()
        self._pending.clear()
        self.exchange = None
        self.conn.stream_closed(self)

    def _on_timeout(self) -> None:
        exchange = self.exchange
        if self.write_paused or exchange is None or exchange.finished:
            # the client stopped taking this stream's data
            if exchange is not None and not exchange.finished:
                exchange.client_gone()
            self.reset(ErrorCodes.CANCEL)
        else:
            exchange.refuse(408)  # the request body stalled


class H2ClientConnection(asyncio.Protocol):
    """One HTTP/2 client connection (after ALPN "h2", or h2c with prior knowledge)."""

    def __init__(self, settings: HttpListenerSettings, context: ProxyContext) -> None:
        assert settings.http2 is not None
        self.settings = settings
        self.context = context
        self.loop = context.loop
        self.transport: asyncio.Transport | None = None
        self.client_ip = "unknown"
        self.client_subject: str | None = None
        self.write_paused = False
        self.streams: dict[int, H2Stream] = {}
        self.guard = FloodGuard(context.loop.time())
        self._closed = False
        self._lost = False
        self._counted = False  # counted against max_conns_per_client
        self._in_events = False
        self._flush_scheduled = False
        self._dirty: list[H2Stream] = []  # streams with bytes or an end to frame this turn
        self.unsent = 0  # DATA bytes handed to h2 since the last socket write
        self.starved = False  # a stream stopped pushing for OUTBOUND_TURN: push again after
        self._rotation = 0
        self._lingered = -1  # bytes discarded after a GOAWAY for an error (-1: not lingering)
        self._draining = False  # the first GOAWAY (no stream refused yet) is sent
        self._goaway_at: int | None = None  # the last stream accepted, once draining
        self._drain_timer: asyncio.TimerHandle | None = None
        self._deadline = Deadline(context.loop, self._on_timeout)
        self._bytes = context.stats.client_bytes(settings.name)  # every byte in and out
        http2 = settings.http2
        self._limits = RequestLimits(
            settings.max_request_line, settings.max_header_size, settings.max_headers
        )
        h2 = self.h2 = _CONNECTION(
            H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_inbound_headers=True,  # a client's fields: checked, always
                # ours are built valid (lower-case names, nothing connection-specific:
                # `portico.http.h2.response_fields`), so h2 need not check them again
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        h2.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: http2.max_concurrent_streams,
                SettingCodes.INITIAL_WINDOW_SIZE: http2.initial_window_size,
                SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_size,
                SettingCodes.ENABLE_CONNECT_PROTOCOL: 0,
            },
        )
        # HPACK compiled (portico.http.hpack): the library's codec, without its Python cost
        h2.encoder = Encoder()  # type: ignore[assignment]
        decoder = h2.decoder = Decoder()  # type: ignore[assignment]
        decoder.max_header_list_size = settings.max_header_size + HEADER_SLACK

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def adopt(
        self,
        transport: asyncio.Transport,
        client_ip: str,
        client_subject: str | None,
        counted: bool,
        data: bytes,
    ) -> None:
        """Take over a connection an HTTP/1.x protocol object accepted (after ALPN or the h2c
        preface): it was counted and admitted already. The only way in: every listener's
        connections start as HTTP/1.x (`ClientConnection`)."""
        self.transport = transport
        self.client_ip = client_ip
        self.client_subject = client_subject
        self._counted = counted
        transport.set_protocol(self)
        self._start()
        if data:
            self._bytes.received -= len(data)  # counted by the HTTP/1 side that read them
            self.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closed = True
        self._drop_streams()
        if self._counted:
            self._counted = False
            self.context.release(self.client_ip)
        self.context.forget(self)
        self.context.stats.connection_closed(self.settings.name)
        # h2's connection object is full of cycles (a dispatch table of its own bound methods,
        # streams that point back): emptied now, it is freed by reference counting instead of
        # waiting, with its HPACK tables and stream states, for a full garbage collection
        self.h2.__dict__.clear()

    def data_received(self, data: bytes) -> None:
        self._bytes.received += len(data)
        if self._closed:
            if self._lingered >= 0:
                self._lingered += len(data)
                if self._lingered > LINGER_BYTES and self.transport is not None:
                    self.transport.abort()
            return
        try:
            events = self.h2.receive_data(data)
        except DenialOfServiceError as exc:
            self._abuse(f"oversized header block ({exc})", queued=True)
            return
        except ProtocolError as exc:
            # h2 has queued a GOAWAY with the error: send it, then close
            if "continuation" in str(exc).lower():
                self._abuse("CONTINUATION flood", queued=True)  # h2's backlog limit
            else:
                self._fail(f"protocol error: {exc}", goaway=ErrorCodes.PROTOCOL_ERROR)
            return
        self._in_events = True
        dispatch = _DISPATCH
        try:
            for event in events:
                # a request's own events called directly (compiled: a C call), the rest
                # through the table
                if isinstance(event, _REQUEST_RECEIVED):
                    self._on_request(event)
                elif isinstance(event, _STREAM_ENDED):
                    self._on_stream_ended(event)
                elif isinstance(event, _DATA_RECEIVED):
                    self._on_data(event)
                else:
                    handler = dispatch.get(type(event))
                    if handler is not None:
                        handler(self, event)
                if self._closed:
                    return
        finally:
            self._in_events = False
        self._flush_now()

    def eof_received(self) -> bool:
        return False  # HTTP/2 has no half-close at the connection level: close

    def pause_writing(self) -> None:
        self.write_paused = True
        self._deadline.set(self.settings.send_timeout)

    def resume_writing(self) -> None:
        self.write_paused = False
        self._idle_or_busy()
        self._push_all()

    # -- used by streams -------------------------------------------------------------------------

    def flush(self) -> None:
        """Write what h2 has queued, once per turn of the loop: the frames of a response's
        head, body and end, produced by separate calls, leave in one write."""
        if self._in_events or self._flush_scheduled or self._closed:
            return
        self._flush_scheduled = True
        self.loop.call_soon(self._flush_now)

    def later(self, stream: H2Stream) -> None:
        """Frame `stream`'s queued bytes and end at this turn's flush, with every other's."""
        if not stream._dirty:
            stream._dirty = True
            self._dirty.append(stream)
        self.flush()

    def _flush_now(self) -> None:
        if self._closed:
            self._flush_scheduled = False
            return
        dirty = self._dirty
        if dirty:
            self._flush_scheduled = True  # the pushes' own flush() calls: this is it
            self._dirty = []
            for stream in dirty:
                stream._dirty = False
                if stream._pending or stream._end_pending:
                    stream.push()
        self._flush_scheduled = False
        self.unsent = 0
        data = self.h2.take_data()
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            self._bytes.sent += len(data)
            transport.write(data)
            if self.write_paused and transport.get_write_buffer_size() > CONTROL_BACKLOG:
                self._fail("client does not read (control frames piling up)")
                return
        if self.starved and not self.write_paused:
            # the socket took the last turn's bytes: the streams that waited go on (each
            # turn moves at most OUTBOUND_TURN, so memory stays bounded whatever the windows)
            self.starved = False
            self._push_all()

    def acknowledge(self, stream_id: int, size: int) -> None:
        if size:
            with contextlib.suppress(ProtocolError, StreamClosedError):
                self.h2.acknowledge_received_data(size, stream_id)

    def stream_closed(self, stream: H2Stream) -> None:
        if self.streams.pop(stream.stream_id, None) is not None:
            self._idle_or_busy()

    def drain(self) -> None:
        """Shutdown or reload, in two steps so that no request is refused or cut (RFC 9113
        §6.8, as Go's and nghttp2's servers do): a GOAWAY naming the highest possible stream
        and a PING; the client opens no stream after reading them, so once it answers the
        PING every stream it opened has arrived. Then the final GOAWAY naming the last one,
        those finish, and the connection closes."""
        if self._closed or self._draining:
            return
        self._draining = True
        self._flush_now()  # what h2 queued goes first
        self._write_goaway(MAX_STREAM_ID)
        with contextlib.suppress(ProtocolError):
            self.h2.ping(DRAIN_PING)
        self._flush_now()
        self._drain_timer = self.loop.call_later(DRAIN_PING_TIMEOUT, self._final_goaway)

    def _final_goaway(self) -> None:
        """The second step of a drain: refuse any later stream, close once the others end."""
        self._drain_timer = None
        if self._closed or self._goaway_at is not None:
            return
        self._goaway_at = self.h2.highest_inbound_stream_id
        if self.streams:
            self._write_goaway(self._goaway_at)
        self._idle_or_busy()

    def _write_goaway(self, last_stream_id: int) -> None:
        # written by hand: h2 treats its own GOAWAY as the end of every stream
        if self.transport is not None:
            frame = GoAwayFrame(0, last_stream_id=last_stream_id, error_code=0).serialize()
            self._bytes.sent += len(frame)
            self.transport.write(frame)

    def abort(self) -> None:
        """Grace time is over: cut the connection and every stream on it."""
        self._closed = True
        self._drop_streams()
        if self.transport is not None:
            self.transport.abort()

    # -- events ------------------------------------------------------------------------------

    def _on_request(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        assert stream_id is not None
        assert event.headers is not None
        if self._goaway_at is not None and stream_id > self._goaway_at:
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        self.guard.stream_opened()
        fields: list[Header] = event.headers
        request = map_request(fields, self._limits)
        method = request.method if isinstance(request, H2Request) else b"GET"
        stream = H2Stream(self, stream_id, method)
        framer = H2Framer(stream)
        self.streams[stream_id] = stream
        self._idle_or_busy()
        ended = event.stream_ended is not None
        stream.request_done = ended
        if isinstance(request, int):
            framer.send_local(client_error(request), False, False)
            return
        settings = self.settings
        head = split_request_headers(
            request.headers,
            replace_x_forwarded=settings.x_forwarded,
            replace_forwarded=settings.forwarded,
        )
        head.upgrade = None  # h2 refused any Upgrade field already
        if ended:
            if head.kind is LENGTH_BODY and head.length:
                framer.send_local(client_error(400), False, False)  # a length, and no body
                return
            head.kind = NO_BODY
        elif not request.has_length:
            # a body of unknown length: chunked to the server
            head.kind = CHUNKED_BODY
            head.te = b"chunked"
        max_body = settings.max_body_size
        if max_body and head.kind is LENGTH_BODY and head.length > max_body:
            framer.send_local(client_error(413), False, False)
            return
        # streams end, connections stay: "keep-alive" is always true for a stream
        exchange = Exchange(
            stream, framer, request.method, request.target, "2.0", request.headers, head, True
        )
        stream.exchange = exchange
        if not ended:
            stream._deadline.set(settings.body_timeout)
        exchange.begin()

    def _on_data(self, event: DataReceived) -> None:
        stream_id = event.stream_id
        assert stream_id is not None
        data = event.data or b""
        length = event.flow_controlled_length or 0
        stream = self.streams.get(stream_id)
        if stream is None:
            self.acknowledge(stream_id, length)
            return
        if (
            not data
            and event.stream_ended is None
            and not self.guard.control_frame(self.loop.time())
        ):
            self._abuse("empty DATA frames flood")
            return
        stream.on_data(data, length)

    def _on_stream_ended(self, event: StreamEnded) -> None:
        stream = self.streams.get(event.stream_id or 0)
        if stream is not None:
            stream.on_request_end()

    def _on_stream_reset(self, event: StreamReset) -> None:
        stream = self.streams.get(event.stream_id or 0)
        if stream is not None:
            exchange = stream.exchange
            early = exchange is not None and not exchange.finished  # before its response ended
            stream.on_reset()
            if early and not self.guard.early_reset():
                self._abuse("rapid reset")
                return
        if not self.guard.control_frame(self.loop.time()):
            self._abuse("RST_STREAM flood")

    def _on_window_updated(self, event: WindowUpdated) -> None:
        if not self.guard.window_update():
            self._abuse("WINDOW_UPDATE flood")
            return
        stream_id = event.stream_id
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None and (stream._pending or stream._end_pending):
                stream.push()
        else:
            self._push_all()

    def _on_settings(self, event: RemoteSettingsChanged) -> None:
        if not self.guard.control_frame(self.loop.time()):
            self._abuse("SETTINGS flood")
            return
        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._push_all()

    def _on_control(self, event: Event) -> None:
        if not self.guard.control_frame(self.loop.time()):
            self._abuse(f"{type(event).__name__} flood")

    def _on_ping_ack(self, event: PingAckReceived) -> None:
        """The client read the drain's first GOAWAY: every stream it opened has arrived."""
        if self._draining and event.ping_data == DRAIN_PING:
            timer = self._drain_timer
            if timer is not None:
                timer.cancel()
            self._final_goaway()

    def _on_terminated(self, event: ConnectionTerminated) -> None:
        # the client said goodbye: h2 allows nothing more to be sent on any stream
        self._closed = True
        self._drop_streams()
        if self.transport is not None:
            self.transport.close()

    # -- internals -----------------------------------------------------------------------------

    def _start(self) -> None:
        self.context.remember(self)
        h2 = self.h2
        h2.initiate_connection()
        window = self.settings.http2.connection_window_size if self.settings.http2 else 0
        if window > 65535:
            h2.increment_flow_control_window(window - 65535)
        self._flush_now()
        self._deadline.set(self.settings.header_timeout)

    def _push_all(self) -> None:
        streams = list(self.streams.values())
        if len(streams) > 1:
            # a different stream goes first each time, so that none waits behind the others
            self._rotation = turn = (self._rotation + 1) % len(streams)
            streams = streams[turn:] + streams[:turn]
        for stream in streams:
            if stream._pending or stream._end_pending:
                stream.push()

    def _idle_or_busy(self) -> None:
        if self._closed:
            return
        if self.streams:
            if not self.write_paused:
                self._deadline.clear()
        elif self._goaway_at is not None:
            self._close()
        else:
            self._deadline.set(self.settings.keepalive_timeout)

    def _on_timeout(self) -> None:
        if self._closed:
            return
        if self.write_paused:
            self._fail("client stopped reading")
        elif not self.streams:
            self._close()

    def _close(self) -> None:
        """Close cleanly: GOAWAY without error, then a lingering close (frames the client
        sent meanwhile, a WINDOW_UPDATE or a PING, must not make our end reset the
        connection under the GOAWAY: RFC 9113 §6.8 asks to close only after it is read)."""
        if self._closed:
            return
        with contextlib.suppress(ProtocolError):
            self.h2.close_connection()
        self._in_events = False
        self._flush_now()
        self._closed = True
        self._drop_streams()
        if self.transport is not None:
            self._linger(self.transport)

    def _abuse(self, what: str, queued: bool = False) -> None:
        """Close an abusive connection: GOAWAY ENHANCE_YOUR_CALM (or the error h2 `queued`)."""
        log.warning("HTTP/2 client %s: %s; connection closed", self.client_ip, what)
        self.context.stats.h2_abuse(self.settings.name)
        if not queued:
            with contextlib.suppress(ProtocolError):
                self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
        self._fail(what, quiet=True)

    def _fail(self, why: str, quiet: bool = False, goaway: ErrorCodes | None = None) -> None:
        """Send what h2 queued (its GOAWAY), then close; every stream is cancelled. `goaway`:
        the error to send when h2 queued nothing (it raises on a broken connection preface
        without a GOAWAY, which RFC 9113 §3.4 asks for: PROTOCOL_ERROR)."""
        if self._closed:
            return
        if not quiet:
            log.info("HTTP/2 client %s: %s; connection closed", self.client_ip, why)
        self._in_events = False
        data = self.h2.take_data()
        if not data and goaway is not None:
            with contextlib.suppress(ProtocolError):
                self.h2.close_connection(goaway)
            data = self.h2.take_data()
        self._closed = True
        self._drop_streams()
        transport = self.transport
        if transport is None:
            return
        if not data or transport.get_write_buffer_size() >= CONTROL_BACKLOG:
            transport.abort()
            return
        # the GOAWAY must reach the client: closing with its unread bytes in our socket would
        # send a reset that can destroy it
        self._bytes.sent += len(data)
        transport.write(data)
        self._linger(transport)

    def _linger(self, transport: asyncio.Transport) -> None:
        """Stop writing, read and discard for a moment, then close (as the HTTP/1 listener's
        lingering close); the client's own close ends it sooner (`eof_received`)."""
        self._lingered = 0
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER_TIME, transport.close)

    def _drop_streams(self) -> None:
        self._deadline.cancel()
        timer, self._drain_timer = self._drain_timer, None
        if timer is not None:
            timer.cancel()
        for stream in list(self.streams.values()):
            stream.on_reset()
        self.streams.clear()


# h2 event -> handler; plain functions rather than bound methods kept on each connection, so
# that a closed connection is not kept alive by a cycle through its own methods
_DISPATCH: dict[type[Event], Callable[[H2ClientConnection, Any], None]] = {
    RequestReceived: H2ClientConnection._on_request,
    DataReceived: H2ClientConnection._on_data,
    StreamEnded: H2ClientConnection._on_stream_ended,
    StreamReset: H2ClientConnection._on_stream_reset,
    WindowUpdated: H2ClientConnection._on_window_updated,
    RemoteSettingsChanged: H2ClientConnection._on_settings,
    PingReceived: H2ClientConnection._on_control,
    PingAckReceived: H2ClientConnection._on_ping_ack,
    PriorityUpdated: H2ClientConnection._on_control,
    UnknownFrameReceived: H2ClientConnection._on_control,
    ConnectionTerminated: H2ClientConnection._on_terminated,
}
