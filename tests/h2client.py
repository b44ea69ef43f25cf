"""A small synchronous HTTP/2 client for tests: the `h2` library's state machine over a real
socket (plain, for h2c with prior knowledge, or TLS after ALPN "h2").

Nothing here sleeps: every wait reads frames until what is expected has arrived, each read
bounded by the socket's timeout and the whole wait by a deadline.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    InformationalResponseReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.settings import SettingCodes
from hyperframe.frame import Frame, GoAwayFrame

Header = tuple[bytes, bytes]
WAIT = 15.0  # a bound on any one wait for frames
GOAWAY_TYPE = GoAwayFrame.type


@dataclass
class H2Response:
    """What came back on one stream."""

    stream_id: int
    headers: list[Header] = field(default_factory=list)
    interim: list[list[Header]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    trailers: list[Header] = field(default_factory=list)
    ended: bool = False
    reset: int | None = None  # the error code, if the server reset the stream

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None

    @property
    def status(self) -> int:
        value = self.header(":status")
        assert value is not None, f"stream {self.stream_id} has no response head"
        return int(value)

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        for key, value in self.headers:
            if key == wanted:
                return value.decode("latin-1")
        return None

    def all(self, name: str) -> list[str]:
        wanted = name.lower().encode()
        return [v.decode("latin-1") for k, v in self.headers if k == wanted]


class H2Client:
    """One HTTP/2 connection as a client sees it.

    `initial_window` sets the window the client grants each stream for response bodies;
    streams listed in `hold` never get their window back (only the connection's), as a client
    that stopped reading one response would behave.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        authority: str = "test.local",
        scheme: str = "http",
        initial_window: int | None = None,
        settings: dict[int, int] | None = None,
    ) -> None:
        self.sock = sock
        self.authority = authority.encode()
        self.scheme = scheme.encode()
        # outbound checks off: tests send some header blocks a server must refuse
        self.conn = H2Connection(
            H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False)
        )
        self.streams: dict[int, H2Response] = {}
        self.hold: set[int] = set()
        self.goaway: GoAwayFrame | None = None
        self.eof = False
        self._inbound = bytearray()
        self.conn.initiate_connection()
        wanted = dict(settings or {})
        if initial_window is not None:
            wanted[SettingCodes.INITIAL_WINDOW_SIZE] = initial_window
        if wanted:
            self.conn.update_settings(wanted)
        self.flush()

    # -- sending ---------------------------------------------------------------------------------

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(
        self,
        method: str = "GET",
        path: str = "/",
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
        *,
        end: bool = True,
        authority: str | None = None,
        fields: list[Header] | None = None,
    ) -> int:
        """Start a request; with `body`, send it (within flow control) and end the stream.
        `end=False` leaves the stream open for `send`. `fields` replaces the whole header
        block (pseudo-headers included) with one sent as it is."""
        stream_id = self.conn.get_next_available_stream_id()
        if fields is None:
            fields = [
                (b":method", method.encode()),
                (b":scheme", self.scheme),
                (b":authority", authority.encode() if authority is not None else self.authority),
                (b":path", path.encode()),
            ]
            fields += [(k.lower().encode(), v.encode()) for k, v in headers]
        self.streams[stream_id] = H2Response(stream_id)
        self.conn.send_headers(stream_id, fields, end_stream=end and body is None)
        self.flush()
        if body is not None:
            self.send(stream_id, body, end=end)
        return stream_id

    def send(self, stream_id: int, data: bytes, *, end: bool = True) -> None:
        """Send request body bytes as the windows allow, reading frames while they are shut."""
        view = memoryview(data)
        deadline = time.monotonic() + WAIT
        while view:
            window = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                stream = self.streams[stream_id]
                if stream.done:
                    return  # answered (or reset) before the body was all sent
                assert time.monotonic() < deadline, "no window to send the body"
                self.read_once()
                continue
            chunk, view = view[:window], view[window:]
            self.conn.send_data(stream_id, bytes(chunk), end_stream=end and not view)
            self.flush()
        if end and not data:
            self.conn.end_stream(stream_id)
            self.flush()

    def reset(self, stream_id: int, code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        self.conn.reset_stream(stream_id, code)
        self.flush()

    # -- receiving ---------------------------------------------------------------------------

    def read_once(self) -> None:
        """Read what arrives within the socket's timeout and handle its frames."""
        try:
            data = self.sock.recv(1 << 20)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            raise EOFError("the server closed the connection")
        for event in self.conn.receive_data(self._take_goaway(data)):
            self._handle(event)
        with contextlib.suppress(OSError):
            self.flush()

    def _take_goaway(self, data: bytes) -> bytes:
        """The bytes to give h2, less any GOAWAY frame: h2 takes a GOAWAY as the end of every
        stream and refuses the frames of the streams the server still finishes (RFC 9113 §6.8
        lets it), so the GOAWAY is kept here instead."""
        buffer = self._inbound
        buffer += data
        out = bytearray()
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            raw = bytes(buffer[: 9 + length])
            del buffer[: 9 + length]
            if raw[3] == GOAWAY_TYPE:
                frame, _ = Frame.parse_frame_header(memoryview(raw[:9]))
                frame.parse_body(memoryview(raw[9:]))
                assert isinstance(frame, GoAwayFrame)
                self.goaway = frame
            else:
                out += raw
        return bytes(out)

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            self.read_once()

    def response(self, stream_id: int, timeout: float = WAIT) -> H2Response:
        stream = self.streams[stream_id]
        self.wait(lambda: stream.done, f"the response on stream {stream_id}", timeout)
        return stream

    def get(self, path: str = "/", **kwargs: object) -> H2Response:
        return self.response(self.request("GET", path, **kwargs))  # type: ignore[arg-type]

    def wait_goaway(self, timeout: float = WAIT) -> GoAwayFrame:
        self.wait(lambda: self.goaway is not None, "a GOAWAY", timeout)
        assert self.goaway is not None
        return self.goaway

    def read_until_eof(self, timeout: float = WAIT) -> None:
        """Keep handling frames until the server closes the connection."""
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, "the server did not close the connection"
            try:
                self.read_once()
            except EOFError:
                return

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close_connection()
            self.flush()
        self.sock.close()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _handle(self, event: object) -> None:
        if isinstance(event, ResponseReceived):
            self.streams[event.stream_id].headers = list(event.headers)
        elif isinstance(event, InformationalResponseReceived):
            self.streams[event.stream_id].interim.append(list(event.headers))
        elif isinstance(event, TrailersReceived):
            self.streams[event.stream_id].trailers = list(event.headers)
        elif isinstance(event, DataReceived):
            stream_id = event.stream_id
            assert stream_id is not None
            self.streams[stream_id].body += event.data or b""
            size = event.flow_controlled_length or 0
            if size:
                with contextlib.suppress(Exception):
                    if stream_id in self.hold:  # the connection's window only
                        self.conn.increment_flow_control_window(size)
                    else:
                        self.conn.acknowledge_received_data(size, stream_id)
        elif isinstance(event, StreamEnded):
            self.streams[event.stream_id].ended = True
        elif isinstance(event, StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.reset = int(event.error_code)


def tls_client_socket(port: int, context: ssl.SSLContext, server_name: str) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname=server_name)


# -- raw frames, for clients that break the rules on purpose ----------------------------------


def read_frames_until_closed(
    sock: socket.socket, timeout: float = WAIT
) -> tuple[list[Frame], bool]:
    """Every frame the server sends until it closes the connection, and whether it closed it
    cleanly (EOF) rather than with a reset."""
    buffer = bytearray()
    deadline = time.monotonic() + timeout
    clean = True
    while True:
        assert time.monotonic() < deadline, "the server did not close the connection"
        try:
            data = sock.recv(1 << 20)
        except ConnectionResetError:
            clean = False
            break
        if not data:
            break
        buffer += data
    frames: list[Frame] = []
    view = memoryview(bytes(buffer))
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        if len(view) < 9 + length:
            break
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames, clean


def goaway_of(frames: list[Frame]) -> GoAwayFrame | None:
    found = [f for f in frames if isinstance(f, GoAwayFrame)]
    return found[-1] if found else None


def send_all_quietly(sock: socket.socket, data: bytes) -> None:
    """Send an attack's bytes; the server may cut the connection before they are all taken."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)
