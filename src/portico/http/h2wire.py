"""The h2 library's HTTP/2 connection with its hottest paths compiled and leaner (issue #18).

`WireConnection` is h2's `H2Connection`, the same state machines, flow-control windows and
protocol checks, with these methods done without the library's per-frame Python overhead:

- `send_data`: the DATA frame's 9-byte header and payload go straight into the send buffer
  (h2 builds a hyperframe `DataFrame`, copies a memoryview to bytes, serialises it, joins it,
  appends it); the connection's and stream's state machines and windows are moved exactly as
  h2 moves them, and its flow-control and frame-size errors are raised as it raises them.
- `receive_data`, `_receive_frame`: as h2's, without the `repr(frame)` it computes for a
  trace log that never prints (a hex dump of every DATA frame's payload); the frames read
  and handled by direct calls (`next_frame`, `receive_frame`, `receive_headers_frame`).
- received frames (`WireFrameBuffer`): h2's buffer as a loop; a HEADERS frame with a whole
  block and neither padding nor priority (what clients send) read as a `PlainHeaders`, no
  hyperframe object made; iterated (h2's way), one built as hyperframe builds it without
  its four `__init__`s and flag loops (`headers_frame`; checked at import that hyperframe's
  frame still has that shape).
- new streams (`new_stream`): no KeyError raised and caught per stream, settings read
  without h2's property chain (`setting`).
- open streams counted as streams move (`StreamTally`), not by a walk over every stream
  each time one opens (h2's `_open_streams`); the closed ones forgotten in h2's order.
- `_prepare_for_sending`: frames appended one by one, not joined first.
- `take_data`: what is queued to send, without the copy `data_to_send` makes; large DATA
  payloads are held by reference until then and joined once (appended to one growing
  buffer, a 1 MiB body was copied about 4.5 times: each time the buffer outgrew its block).
- received header blocks: h2's normalisation (split cookies joined) and validation (RFC 9113
  §8.2, §8.3) in one compiled pass (`received_fields`) instead of a chain of seven
  generators: the same checks, in the same order, with the same errors.
- sending (`wire_send_headers`, `wire_send_data`, `wire_window`): module functions the
  listener calls directly; the methods h2 and other callers use delegate to them.

A stream is a compiled (native) class of its own, not h2's: `WireStream` (h2's `H2Stream`:
its attributes and properties; the methods every request runs compiled, every other method
h2's own function run on it), `WireStreamMachine` (h2's stream state machine: its
attributes; its moves h2's tables, the common ones as compiled copies called directly) and
`WireWindow` (h2's `WindowManager`, copied). mypyc cannot compile a native class deriving
from a Python one, so the connection, its state machine and its frame buffer stay h2's
subclasses, non-native (`native_class=False`): ordinary Python classes whose methods are
compiled. tests/unit/http/test_h2wire.py runs each beside h2's own objects.
Pure otherwise: no sockets, no clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from struct import Struct
from typing import Any, Final

from h2.config import H2Configuration
from h2.connection import (
    AllowedStreamIDs,
    ConnectionInputs,
    ConnectionState,
    H2Connection,
    H2ConnectionStateMachine,
)
from h2.errors import ErrorCodes
from h2.events import (
    _LAZY_INIT,
    Event,
    InformationalResponseReceived,
    PushedStreamReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
    _PushedRequestSent,
    _ResponseSent,
    _TrailersSent,
)
from h2.exceptions import (
    DenialOfServiceError,
    FlowControlError,
    FrameDataMissingError,
    FrameTooLargeError,
    NoSuchStreamError,
    ProtocolError,
    StreamClosedError,
    StreamIDTooLowError,
    TooManyStreamsError,
)
from h2.frame_buffer import CONTINUATION_BACKLOG, FrameBuffer
from h2.settings import SettingCodes
from h2.stream import (
    H2Stream,
    H2StreamStateMachine,
    StreamClosedBy,
    StreamInputs,
    StreamState,
)
from h2.stream import _transitions as _stream_transitions
from h2.utilities import HeaderValidationFlags, SizeLimitDict, utf8_encode_headers
from hpack.exceptions import HPACKError, OversizedHeaderListError
from hpack.struct import NeverIndexedHeaderTuple
from hyperframe.exceptions import InvalidDataError, InvalidFrameError, InvalidPaddingError
from hyperframe.flags import Flags
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    HeadersFrame,
    PushPromiseFrame,
    RstStreamFrame,
    WindowUpdateFrame,
)

from portico.http.hpack import Decoder, Encoder
from portico.native import mypyc_attr

_H2_STREAM: Final[Any] = H2Stream  # h2's methods, run on a `WireStream` (duck-typed)

# hyperframe's frame header: length (24 bits, as 16 + 8), type, flags, stream id (31 bits)
_FRAME_HEADER: Final = Struct(">HBBBL")
_END_STREAM: Final = 0x01
_END_HEADERS: Final = 0x04
_LARGEST_WINDOW: Final = 2**31 - 1
# DATA payloads from this size are held by reference until `take_data` joins them (fewer
# copies); smaller ones are cheaper appended to the send buffer
HOLD_FROM: Final = 4096
_FLOW_CONTROL_ERROR: Final = ErrorCodes.FLOW_CONTROL_ERROR
_STREAM_CLOSED: Final = ErrorCodes.STREAM_CLOSED
# enum members, read as C statics rather than looked up on their class each time
_CLOSED: Final = StreamState.CLOSED
_OPEN: Final = StreamState.OPEN
_HALF_CLOSED_LOCAL: Final = StreamState.HALF_CLOSED_LOCAL
_HALF_CLOSED_REMOTE: Final = StreamState.HALF_CLOSED_REMOTE
_CONNECTION_CLOSED: Final = ConnectionState.CLOSED
_IDLE: Final = StreamState.IDLE
_CLOSED_BY_SEND_END_STREAM: Final = StreamClosedBy.SEND_END_STREAM
_SEND_DATA: Final = StreamInputs.SEND_DATA
_SEND_END_STREAM: Final = StreamInputs.SEND_END_STREAM
_SEND_HEADERS: Final = StreamInputs.SEND_HEADERS
_SEND_INFORMATIONAL_HEADERS: Final = StreamInputs.SEND_INFORMATIONAL_HEADERS
_RECV_HEADERS: Final = StreamInputs.RECV_HEADERS
_RECV_INFORMATIONAL_HEADERS: Final = StreamInputs.RECV_INFORMATIONAL_HEADERS
_RECV_END_STREAM: Final = StreamInputs.RECV_END_STREAM
_RECV_WINDOW_UPDATE: Final = StreamInputs.RECV_WINDOW_UPDATE
_C_SEND_DATA: Final = ConnectionInputs.SEND_DATA
_C_SEND_HEADERS: Final = ConnectionInputs.SEND_HEADERS
_C_RECV_HEADERS: Final = ConnectionInputs.RECV_HEADERS
_C_RECV_WINDOW_UPDATE: Final = ConnectionInputs.RECV_WINDOW_UPDATE

# a HEADERS frame's flag bits as hyperframe names them, and the frame as hyperframe builds it
# (attributes in its order): the shape `headers_frame` copies, checked at import
_HEADERS_FLAGS: Final[list[tuple[str, int]]] = [
    (flag.name, flag.bit) for flag in HeadersFrame.defined_flags
]
_HEADERS_VALID: Final = frozenset(name for name, _ in _HEADERS_FLAGS)
_HEADERS_PLAIN: Final = 0x08 | 0x20  # neither PADDED nor PRIORITY: the body is the block
_HEADERS_SHAPE: Final = (
    [
        "stream_id",
        "flags",
        "body_len",
        "depends_on",
        "stream_weight",
        "exclusive",
        "pad_length",
        "data",
    ],
    ["_valid_flags", "_flags"],
)

_INITIAL_WINDOW_SIZE: Final = SettingCodes.INITIAL_WINDOW_SIZE
_MAX_CONCURRENT_STREAMS: Final = SettingCodes.MAX_CONCURRENT_STREAMS

_SIGIL: Final = 0x3A  # ':'
_CONNECTION_HEADERS: Final = frozenset(
    [b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"]
)
_ALLOWED_PSEUDO: Final = frozenset(
    [b":method", b":scheme", b":authority", b":path", b":status", b":protocol"]
)
_REQUEST_ONLY: Final = frozenset([b":scheme", b":path", b":authority", b":method", b":protocol"])
_RESPONSE_ONLY: Final = frozenset([b":status"])
_CONNECT_ONLY: Final = frozenset([b":protocol"])


def received_fields(headers: Iterable[Any], trailer: bool, response: bool) -> list[Any]:
    """h2's `normalize_inbound_headers` then `validate_headers`, in one pass: split Cookie
    fields joined (last, never indexed), then every field checked. Raises `ProtocolError`
    where h2 raises it, with its message; h2's generators check one field through every
    stage before the next field, and so does this loop."""
    # fields as the decoders make them: tuples (a `HeaderTuple` is one), read as tuples
    fields: list[tuple[Any, ...]] = []
    cookies: list[bytes] = []
    for item in headers:
        header: tuple[Any, ...] = item
        key: bytes = header[0]
        if key == b"cookie":
            cookies.append(header[1])
        else:
            fields.append(header)
    if cookies:
        fields.append(NeverIndexedHeaderTuple(b"cookie", b"; ".join(cookies)))
    request = not (response or trailer)
    pseudo: set[bytes] = set()
    regular = False
    method: bytes | None = None
    authority: bytes | None = None
    host: bytes | None = None
    for field in fields:
        name: bytes = field[0]
        value: bytes = field[1]
        # h2's _reject_illegal_characters (bytes compared as ints: `b"x" in value` would
        # first try the needle as an int and raise and clear a TypeError, every time)
        colon = False
        for i in range(len(name)):
            c = name[i]
            if c <= 0x20 or c >= 0x7F or 0x41 <= c <= 0x5A:
                _illegal_name(name)
            if c == _SIGIL and i:
                colon = True
        if colon:
            raise ProtocolError(f"Illegal character ':' in header name: {name!r}")
        if value:
            size = len(value)
            if size < 64:
                # short (most values): one compiled pass, cheaper than three searches
                for i in range(size):
                    c = value[i]
                    if c <= 0x0D and (c == 0 or c == 0x0A or c == 0x0D):
                        _illegal_value(value)
            elif 0 in value or 0x0A in value or 0x0D in value:
                _illegal_value(value)
            first = value[0]
            last = value[-1]
            if first == 0x20 or first == 0x09 or last == 0x20 or last == 0x09:
                raise ProtocolError(f"Received header value surrounded by whitespace {value!r}")
        # _reject_empty_header_names
        if not name:
            raise ProtocolError("Received header name with zero length.")
        # _reject_te
        if name == b"te" and value.lower() != b"trailers":
            raise ProtocolError(f"Invalid value for TE header: {value!r}")
        # _reject_connection_header
        width = len(name)  # (7, 10, 16 and 17: the lengths of the connection-specific names)
        if (width == 7 or width == 10 or width >= 16) and name in _CONNECTION_HEADERS:
            raise ProtocolError(f"Connection-specific header field present: {name!r}.")
        # _reject_pseudo_header_fields
        if name[0] == _SIGIL:
            if name in pseudo:
                raise ProtocolError(f"Received duplicate pseudo-header field {name!r}")
            pseudo.add(name)
            if regular:
                raise ProtocolError(f"Received pseudo-header field out of sequence: {name!r}")
            if name not in _ALLOWED_PSEUDO:
                raise ProtocolError(f"Received custom pseudo-header field {name!r}")
            if name == b":method":
                method = value
        else:
            regular = True
        if request:
            # _validate_host_authority_header
            if name == b":authority":
                authority = value
            elif name == b"host":
                if host is not None:
                    raise ProtocolError("Request header block has multiple Host headers.")
                host = value
            # _check_path_header
            if name == b":path" and not value:
                raise ProtocolError("An empty :path header is forbidden")
    _check_pseudo(pseudo, method, trailer, response)
    if request:
        if authority is None and host is None:
            raise ProtocolError("Request header block does not have an :authority or Host header.")
        if authority is not None and host is not None and authority != host:
            raise ProtocolError(
                "Request header block has mismatched :authority and "
                f"Host headers: {authority!r} / {host!r}"
            )
    return fields


def _illegal_name(name: bytes) -> None:
    for c in name:
        if 0x41 <= c <= 0x5A:
            raise ProtocolError(f"Received uppercase header name {name!r}.")
        if c <= 0x20 or c >= 0x7F:
            raise ProtocolError(f"Illegal character '{chr(c)}' in header name: {name!r}")


def _illegal_value(value: bytes) -> None:
    for c in value:
        if c == 0 or c == 0x0A or c == 0x0D:
            raise ProtocolError(f"Illegal character '{chr(c)}' in header value: {value!r}")


def _require(name: bytes, pseudo: set[bytes]) -> None:
    if name not in pseudo:
        raise ProtocolError(f"Header block missing mandatory {name!r} header")


def _check_pseudo(pseudo: set[bytes], method: bytes | None, trailer: bool, response: bool) -> None:
    """h2's `_check_pseudo_header_field_acceptability` (RFC 9113 §8.3, RFC 8441 §4)."""
    if trailer and pseudo:
        raise ProtocolError(f"Received pseudo-header in trailer {pseudo}")
    if response:
        _require(b":status", pseudo)
        invalid = pseudo & _REQUEST_ONLY
        if invalid:
            raise ProtocolError(f"Encountered request-only headers {invalid}")
    elif not trailer:
        _require(b":method", pseudo)
        connect = method == b"CONNECT"
        extended = connect and b":protocol" in pseudo
        if connect and not extended:
            if b":scheme" in pseudo or b":path" in pseudo:
                raise ProtocolError("Ordinary CONNECT MUST NOT include :scheme or :path")
        else:
            _require(b":scheme", pseudo)
            _require(b":path", pseudo)
        # (each set has one name: looked up, not intersected, unless it is there)
        if b":status" in pseudo:
            raise ProtocolError(f"Encountered response-only headers {pseudo & _RESPONSE_ONLY}")
        if not connect and b":protocol" in pseudo:
            invalid = pseudo & _CONNECT_ONLY
            raise ProtocolError(f"Encountered connect-request-only headers {invalid!r}")


def _field_name(field: Any) -> bytes:
    """`field[0]`, read directly when the field is a tuple (as fields almost always are)."""
    if isinstance(field, tuple):
        name: bytes = field[0]
        return name
    other: bytes = field[0]
    return other


def _informational(fields: list[Any]) -> bool:
    """h2's `is_informational_response`: a :status of 1xx among the leading pseudo-fields."""
    for field in fields:
        name = _field_name(field)
        if not name.startswith(b":"):
            return False
        if name == b":status":
            value: bytes = field[1]
            return value.startswith(b"1")
    return False


def _method(fields: list[Any]) -> bytes | None:
    """h2's `extract_method_header` on bytes fields."""
    for field in fields:
        name = _field_name(field)
        if name == b":method":
            value: bytes = field[1]
            return value
    return None


# The state machines' transition tables, keyed by the enum members' ids: h2 looks a transition
# up by a tuple of two enum members, whose hash is Python code (`Enum.__hash__`) run twice
# for every frame sent or received. Built from h2's own tables, so the moves are h2's.
def _request_received(machine: WireStreamMachine, previous: Any) -> list[Event]:
    """h2's `H2StreamStateMachine.request_received`, compiled."""
    assert not machine.headers_received
    assert not machine.trailers_received
    machine.client = False
    machine.headers_received = True
    return [request_received(machine.stream_id)]


def _response_sent(machine: WireStreamMachine, previous: Any) -> list[Event]:
    """h2's `H2StreamStateMachine.response_sent`, compiled."""
    if not machine.headers_sent:
        if machine.client is True or machine.client is None:
            raise ProtocolError("Client cannot send responses.")
        machine.headers_sent = True
        return [_RESPONSE_SENT_EVENT()]
    assert not machine.trailers_sent
    machine.trailers_sent = True
    return [_TrailersSent()]


def _stream_half_closed(machine: WireStreamMachine, previous: Any) -> list[Event]:
    """h2's `H2StreamStateMachine.stream_half_closed`, compiled."""
    return [stream_ended(machine.stream_id)]


def _send_end_stream(machine: WireStreamMachine, previous: Any) -> list[Event]:
    """h2's `H2StreamStateMachine.send_end_stream`, compiled."""
    machine.stream_closed_by = _CLOSED_BY_SEND_END_STREAM
    return []


# the events that make a header block trailers, or a response's (`received_fields`)
_TRAILERS_RECEIVED: Final = TrailersReceived
_TRAILERS_SENT_EVENT: Final = _TrailersSent
_RESPONSE_RECEIVED: Final = ResponseReceived
_INFORMATIONAL_RECEIVED: Final = InformationalResponseReceived
_RESPONSE_SENT_EVENT: Final = _ResponseSent

# the transitions every request takes, run as the compiled copies above (called directly,
# by their number in a move: 0 is none, `_OTHER` h2's own function)
_REQUEST_RECEIVED: Final = 1
_RESPONSE_SENT: Final = 2
_STREAM_HALF_CLOSED: Final = 3
_SEND_END_STREAM_MOVE: Final = 4
_OTHER: Final = 5
_STREAM_COPIES: Final[dict[Any, int]] = {
    None: 0,
    H2StreamStateMachine.request_received: _REQUEST_RECEIVED,
    H2StreamStateMachine.response_sent: _RESPONSE_SENT,
    H2StreamStateMachine.stream_half_closed: _STREAM_HALF_CLOSED,
    H2StreamStateMachine.send_end_stream: _SEND_END_STREAM_MOVE,
}
# state id -> input id -> (the copy's number, h2's function, the state it moves to)
_STREAM_MOVES: Final[dict[int, dict[int, tuple[int, Any, Any]]]] = {}
for (_state, _input), (_func, _target) in _stream_transitions.items():
    _STREAM_MOVES.setdefault(id(_state), {})[id(_input)] = (
        _STREAM_COPIES.get(_func, _OTHER),
        _func,
        _target,
    )
_NO_STREAM_MOVES: Final[dict[int, tuple[int, Any, Any]]] = {}
_CONNECTION_MOVES: Final[dict[int, dict[int, tuple[Any, Any]]]] = {}
for (_cstate, _cinput), _cmove in H2ConnectionStateMachine._transitions.items():
    _CONNECTION_MOVES.setdefault(id(_cstate), {})[id(_cinput)] = _cmove
_NO_MOVES: Final[dict[int, tuple[Any, Any]]] = {}
# the states (ids) in which sending DATA is, in h2's tables, a move to the same state with no
# function run: nothing to do there (`WireConnection.send_data`)
_STREAM_DATA_STAYS: Final[frozenset[int]] = frozenset(
    id(_state)
    for (_state, _input), _move in _stream_transitions.items()
    if _input is StreamInputs.SEND_DATA and _move[0] is None and _move[1] is _state
)
_CONNECTION_DATA_STAYS: Final[frozenset[int]] = frozenset(
    id(_cstate)
    for (_cstate, _cinput), _cmove in H2ConnectionStateMachine._transitions.items()
    if _cinput is ConnectionInputs.SEND_DATA and _cmove[0] is None and _cmove[1] is _cstate
)


# a closed stream never opens again in h2's tables: what `StreamTally` counts on
TALLY_FAST: Final = all(
    _target is _CLOSED
    for (_state, _input), (_func, _target) in _stream_transitions.items()
    if _state is _CLOSED
)


def stream_step(machine: WireStreamMachine, input_: Any) -> list[Event]:
    """h2's `H2StreamStateMachine.process_input`, for a valid `StreamInputs` member: called
    directly from this module's compiled code, through `process_input` from h2's. Every
    move is told to the machine's `StreamTally`, if it has one."""
    previous = machine.state
    move = _STREAM_MOVES.get(id(previous), _NO_STREAM_MOVES).get(id(input_))
    if move is None:
        _move_to(machine, previous, _CLOSED)
        raise ProtocolError(f"Invalid input {input_} in state {previous}")
    copy, func, target = move
    if target is not previous:
        _move_to(machine, previous, target)
    if not copy:
        return []
    try:
        if copy == _REQUEST_RECEIVED:
            return _request_received(machine, previous)
        if copy == _RESPONSE_SENT:
            return _response_sent(machine, previous)
        if copy == _STREAM_HALF_CLOSED:
            return _stream_half_closed(machine, previous)
        if copy == _SEND_END_STREAM_MOVE:
            return _send_end_stream(machine, previous)
        events: list[Event] = func(machine, previous)
        return events
    except ProtocolError:
        _move_to(machine, target, _CLOSED)
        raise
    except AssertionError as err:
        _move_to(machine, target, _CLOSED)
        raise ProtocolError(err) from err


def _is_open(state: Any) -> bool:
    """h2's `STREAM_OPEN[state]`: open, or half closed either way (RFC 9113 §5.1.2)."""
    return state is _OPEN or state is _HALF_CLOSED_LOCAL or state is _HALF_CLOSED_REMOTE


def _move_to(machine: WireStreamMachine, previous: Any, target: Any) -> None:
    """`machine.state = target`, and the machine's tally (if any) told of the move."""
    machine.state = target
    tally = machine.tally
    if tally is None or target is previous:
        return
    was = _is_open(previous)
    now = _is_open(target)
    if was != now:
        delta = 1 if now else -1
        if machine.stream_id & 1:
            tally.odd += delta
        else:
            tally.even += delta
    if target is _CLOSED:
        tally.closed.append(machine)


def connection_step(machine: Any, input_: Any) -> list[Event]:
    """h2's `H2ConnectionStateMachine.process_input`, for a valid `ConnectionInputs` member."""
    previous = machine.state
    move = _CONNECTION_MOVES.get(id(previous), _NO_MOVES).get(id(input_))
    if move is None:
        machine.state = _CONNECTION_CLOSED
        raise ProtocolError(f"Invalid input {input_} in state {previous}")
    func, target = move
    machine.state = target
    if func is not None:
        events: list[Event] = func()
        return events
    return []


# h2's stream state machine's attributes, in the order its `__init__` sets them
MACHINE_FIELDS: Final = (
    "state",
    "stream_id",
    "client",
    "headers_sent",
    "trailers_sent",
    "headers_received",
    "trailers_received",
    "stream_closed_by",
)


class StreamTally:
    """A connection's open streams counted as they move (h2 counts them by walking every
    stream each time a stream opens), and those closed since they were last forgotten."""

    __slots__ = ("closed", "even", "made", "members", "odd")

    def __init__(self) -> None:
        self.even = 0  # open streams (RFC 9113 §5.1.2: open or half closed) with even ids
        self.odd = 0  # ... with odd ids
        self.closed: list[WireStreamMachine] = []  # closed, maybe not yet forgotten
        self.made = 0  # streams made: each machine's `order`
        self.members = 0  # streams the connection holds, as far as the tally knows


class WireStreamMachine:
    """h2's stream state machine (RFC 9113 §5.1): its attributes (`MACHINE_FIELDS`) and its
    moves (h2's tables, run by `stream_step`, or by h2's own functions on this object) in a
    compiled class; `tally` and `order` are the connection's count of open streams."""

    __slots__ = (
        "client",
        "headers_received",
        "headers_sent",
        "order",
        "state",
        "stream_closed_by",
        "stream_id",
        "tally",
        "trailers_received",
        "trailers_sent",
    )

    def __init__(self, stream_id: int) -> None:
        """h2's, compiled."""
        self.state: Any = _IDLE
        self.stream_id: int = stream_id
        self.client: Any = None
        self.headers_sent: Any = None
        self.trailers_sent: Any = None
        self.headers_received: Any = None
        self.trailers_received: Any = None
        self.stream_closed_by: Any = None
        self.tally: StreamTally | None = None
        self.order = 0  # when it was made, among its connection's streams

    def process_input(self, input_: StreamInputs) -> list[Event]:
        if not isinstance(input_, StreamInputs):
            raise ValueError("Input must be an instance of StreamInputs")
        return stream_step(self, input_)


@mypyc_attr(native_class=False)
class WireConnectionMachine(H2ConnectionStateMachine):
    """h2's connection state machine, its table looked up without `Enum.__hash__`."""

    def process_input(self, input_: ConnectionInputs) -> list[Event]:
        if not isinstance(input_, ConnectionInputs):
            raise ValueError("Input must be an instance of ConnectionInputs")
        return connection_step(self, input_)


class WireStream:
    """h2's stream (`H2Stream`) as a compiled class: its attributes (`STREAM_FIELDS`), its
    properties, the methods every request runs compiled (received header blocks checked by
    `received_fields`), and every other method h2's own, run on this object."""

    __slots__ = (
        "_actual_content_length",
        "_authority",
        "_expected_content_length",
        "_inbound_window_manager",
        "config",
        "max_outbound_frame_size",
        "outbound_flow_control_window",
        "request_method",
        "state_machine",
        "stream_id",
    )

    def __init__(
        self,
        stream_id: int,
        config: H2Configuration,
        inbound_window_size: int,
        outbound_window_size: int,
    ) -> None:
        # h2's H2Stream.__init__, with the compiled state machine
        self.state_machine = WireStreamMachine(stream_id)
        self.stream_id = stream_id
        self.max_outbound_frame_size: Any = None
        self.request_method: Any = None
        self.outbound_flow_control_window: int = outbound_window_size
        self._inbound_window_manager = WireWindow(inbound_window_size)
        self._expected_content_length: Any = None
        self._actual_content_length: int = 0
        self._authority: Any = None
        self.config: Any = config

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id:{self.stream_id} state:{self.state_machine.state!r}>"

    # -- h2's properties -------------------------------------------------------------------------

    @property
    def inbound_flow_control_window(self) -> int:
        size: int = self._inbound_window_manager.current_window_size  # (h2's `int`)
        return size

    @property
    def open(self) -> bool:
        return _is_open(self.state_machine.state)

    @property
    def closed(self) -> bool:
        return self.state_machine.state is _CLOSED

    @property
    def closed_by(self) -> Any:
        return self.state_machine.stream_closed_by

    # -- h2's own methods, run on this object ----------------------------------------------------

    def upgrade(self, *args: Any, **kwargs: Any) -> Any:
        return _H2_STREAM.upgrade(self, *args, **kwargs)

    def send_headers(self, *args: Any, **kwargs: Any) -> Any:
        return _H2_STREAM.send_headers(self, *args, **kwargs)

    def push_stream_in_band(self, *args: Any, **kwargs: Any) -> Any:
        return _H2_STREAM.push_stream_in_band(self, *args, **kwargs)

    def locally_pushed(self, *args: Any, **kwargs: Any) -> Any:
        return _H2_STREAM.locally_pushed(self, *args, **kwargs)

    def send_data(self, *args: Any, **kwargs: Any) -> Any:
        return _H2_STREAM.send_data(self, *args, **kwargs)

    def end_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _H2_STREAM.end_stream(self, *args, **kwargs)

    def advertise_alternative_service(self, *args: Any, **kwargs: Any) -> Any:
        return _H2_STREAM.advertise_alternative_service(self, *args, **kwargs)

    def increase_flow_control_window(self, *args: Any, **kwargs: Any) -> Any:
        return _H2_STREAM.increase_flow_control_window(self, *args, **kwargs)

    def receive_push_promise_in_band(self, *args: Any, **kwargs: Any) -> Any:
        return _H2_STREAM.receive_push_promise_in_band(self, *args, **kwargs)

    def remotely_pushed(self, *args: Any, **kwargs: Any) -> Any:
        return _H2_STREAM.remotely_pushed(self, *args, **kwargs)

    def receive_data(self, *args: Any, **kwargs: Any) -> Any:
        return _H2_STREAM.receive_data(self, *args, **kwargs)

    def receive_continuation(self, *args: Any, **kwargs: Any) -> Any:
        return _H2_STREAM.receive_continuation(self, *args, **kwargs)

    def receive_alt_svc(self, *args: Any, **kwargs: Any) -> Any:
        return _H2_STREAM.receive_alt_svc(self, *args, **kwargs)

    def reset_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _H2_STREAM.reset_stream(self, *args, **kwargs)

    def stream_reset(self, *args: Any, **kwargs: Any) -> Any:
        return _H2_STREAM.stream_reset(self, *args, **kwargs)

    def acknowledge_received_data(self, *args: Any, **kwargs: Any) -> Any:
        return _H2_STREAM.acknowledge_received_data(self, *args, **kwargs)

    def _build_headers_frames(self, *args: Any, **kwargs: Any) -> Any:
        return _H2_STREAM._build_headers_frames(self, *args, **kwargs)

    def _track_content_length(self, *args: Any, **kwargs: Any) -> Any:
        return _H2_STREAM._track_content_length(self, *args, **kwargs)

    def _inbound_flow_control_change_from_settings(self, *args: Any, **kwargs: Any) -> Any:
        return _H2_STREAM._inbound_flow_control_change_from_settings(self, *args, **kwargs)

    # -- compiled ----------------------------------------------------------------------------

    def receive_headers(
        self,
        headers: Any,
        end_stream: bool,
        header_encoding: bool | str | None,
    ) -> tuple[list[Frame], list[Event]]:
        """h2's, its helpers compiled."""
        if _informational(headers):
            if end_stream:
                raise ProtocolError("Cannot set END_STREAM on informational responses")
            step = _RECV_INFORMATIONAL_HEADERS
        else:
            step = _RECV_HEADERS
        machine = self.state_machine
        events = stream_step(machine, step)
        headers_event: Any = events[0]
        if end_stream:
            ended = stream_step(machine, _RECV_END_STREAM)
            headers_event.stream_ended = ended[0]
            events += ended
        self._initialize_content_length(headers)
        # the events' classes compared, not `isinstance`: h2 makes these classes, never
        # subclasses of them
        kind = type(headers_event)
        if kind is _TRAILERS_RECEIVED and not end_stream:
            raise ProtocolError("Trailers must have END_STREAM set")
        config: Any = self.config  # its fields read directly: h2's are Python descriptors
        if (
            isinstance(header_encoding, str)
            or not config._normalize_inbound_headers
            or not config._validate_inbound_headers
        ):
            flags = self._build_hdr_validation_flags(events)
            headers_event.headers = self._process_received_headers(headers, flags, header_encoding)
        else:
            # `_process_received_headers`'s fast path, without building h2's flags tuple (a
            # namedtuple made through its Python `__new__`) for the two of its fields it reads
            headers_event.headers = received_fields(
                headers,
                kind is _TRAILERS_RECEIVED or kind is _TRAILERS_SENT_EVENT,
                kind is _RESPONSE_RECEIVED
                or kind is _INFORMATIONAL_RECEIVED
                or kind is _RESPONSE_SENT_EVENT,
            )
        return [], events

    def receive_window_update(self, increment: int) -> tuple[list[Frame], list[Event]]:
        """h2's, without its debug log call."""
        events = stream_step(self.state_machine, _RECV_WINDOW_UPDATE)
        frames: list[Frame] = []
        if events:
            event: Any = events[0]
            event.delta = increment
            window = self.outbound_flow_control_window + increment
            if window > _LARGEST_WINDOW:
                # a stream error, not a connection error: reset the stream
                events = [
                    StreamReset(
                        stream_id=self.stream_id,
                        error_code=_FLOW_CONTROL_ERROR,
                        remote_reset=False,
                    )
                ]
                frames = self.reset_stream(_FLOW_CONTROL_ERROR)
            else:
                self.outbound_flow_control_window = window
        return frames, events

    def _initialize_content_length(self, headers: Any) -> None:
        """h2's: the request's content-length, checked (RFC 9110 §8.6)."""
        if self.request_method == b"HEAD":
            self._expected_content_length = 0
            return
        length: int | None = None
        for field in headers:
            name = _field_name(field)
            if name == b"content-length":
                value: bytes = field[1]
                if not value.isdigit():
                    raise ProtocolError(f"Invalid content-length header: {value!r}")
                try:
                    parsed = int(value, 10)
                except ValueError as err:
                    raise ProtocolError(f"Invalid content-length header: {value!r}") from err
                if length is None:
                    length = parsed
                elif parsed != length:
                    raise ProtocolError(
                        f"Conflicting content-length headers: {length} and {parsed}"
                    )
        self._expected_content_length = length

    def _build_hdr_validation_flags(self, events: Any) -> HeaderValidationFlags:
        first = events[0]
        return HeaderValidationFlags(
            is_client=self.state_machine.client or False,
            is_trailer=isinstance(first, (_TrailersSent, TrailersReceived)),
            is_response_header=isinstance(
                first, (_ResponseSent, ResponseReceived, InformationalResponseReceived)
            ),
            is_push_promise=isinstance(first, (PushedStreamReceived, _PushedRequestSent)),
        )

    def _process_received_headers(
        self,
        headers: Iterable[Any],
        header_validation_flags: HeaderValidationFlags,
        header_encoding: bool | str | None,
    ) -> list[Any]:
        config: Any = self.config  # its fields read directly: h2's are Python descriptors
        if (
            isinstance(header_encoding, str)
            or not config._normalize_inbound_headers
            or not config._validate_inbound_headers
        ):
            return _H2_STREAM._process_received_headers(  # type: ignore[no-any-return]
                self, headers, header_validation_flags, header_encoding
            )
        return received_fields(
            headers, header_validation_flags.is_trailer, header_validation_flags.is_response_header
        )


def setting(settings: Any, code: SettingCodes) -> int:
    """h2's `Settings` property for `code` (`settings.initial_window_size`, ...): the value in
    force, a KeyError if there is none, read without its property and `__getitem__`."""
    value: int | None = settings._settings[code][0]
    if value is None:
        raise KeyError
    return value


class WireWindow:
    """h2's `WindowManager` (a stream's inbound flow-control window, and when to give it
    back: RFC 9113 §6.9) as a compiled class: its attributes (`WINDOW_FIELDS`), its methods
    and its algorithm, h2's code copied; made once per stream."""

    __slots__ = ("_bytes_processed", "current_window_size", "max_window_size")

    def __init__(self, max_window_size: int) -> None:
        assert max_window_size <= _LARGEST_WINDOW
        self.max_window_size = max_window_size
        self.current_window_size = max_window_size
        self._bytes_processed = 0

    def window_consumed(self, size: int) -> None:
        """Bytes received from the peer: the window shrinks."""
        self.current_window_size -= size
        if self.current_window_size < 0:
            raise FlowControlError("Flow control window shrunk below 0")

    def window_opened(self, size: int) -> None:
        """The window grew (by hand, or a settings change): maybe its maximum too."""
        self.current_window_size += size
        if self.current_window_size > _LARGEST_WINDOW:
            raise FlowControlError(f"Flow control window mustn't exceed {_LARGEST_WINDOW}")
        self.max_window_size = max(self.current_window_size, self.max_window_size)

    def process_bytes(self, size: int) -> int | None:
        """The application processed `size` bytes: the increment to send, or None."""
        self._bytes_processed += size
        return self._maybe_update_window()

    def _maybe_update_window(self) -> int | None:
        """h2's rule: give back once half the window was processed, or (the window empty)
        1024 bytes or a quarter of it."""
        if not self._bytes_processed:
            return None
        max_increment = self.max_window_size - self.current_window_size
        increment = 0
        if (
            self.current_window_size == 0
            and self._bytes_processed > min(1024, self.max_window_size // 4)
        ) or self._bytes_processed >= (self.max_window_size // 2):
            increment = min(self._bytes_processed, max_increment)
            self._bytes_processed = 0
        self.current_window_size += increment
        return increment


def forget(closed: Any, stream_id: int, closed_by: Any) -> None:
    """`closed[stream_id] = closed_by` for h2's `_closed_streams`: a `SizeLimitDict` (an
    `OrderedDict` whose `__setitem__`, Python code, drops its oldest entries beyond its size
    limit) stored into as its `__setitem__` does, without that Python call; anything else
    (a subclass, another mapping) through its own `__setitem__`."""
    if type(closed) is not _SIZE_LIMIT_DICT:
        closed[stream_id] = closed_by
        return
    _ORDERED_SET(closed, stream_id, closed_by)
    limit: int | None = closed._size_limit
    if limit is not None:
        while len(closed) > limit:
            closed.popitem(last=False)


_new_object: Final[Any] = object.__new__
_EVEN_IDS: Final = AllowedStreamIDs.EVEN
_ODD_IDS: Final = AllowedStreamIDs.ODD
# h2's classes and values read on every request, as C statics (an imported name is looked up
# in the module's dict each time it is used)
_REQUEST_RECEIVED_EVENT: Final = RequestReceived
_STREAM_ENDED_EVENT: Final = StreamEnded
_LAZY: Final[Any] = _LAZY_INIT
_SIZE_LIMIT_DICT: Final = SizeLimitDict
_HEADERS_FRAME: Final = HeadersFrame
_ORDERED_SET: Final[Any] = OrderedDict.__setitem__  # what `forget` stores with


def request_received(stream_id: int) -> RequestReceived:
    """h2's `RequestReceived(stream_id=stream_id)`: the same object (its class, attributes in
    their order), built without the dataclass's `__init__` (Python code, once per request)
    while it has the shape checked at import."""
    if not EVENTS_FAST:
        return RequestReceived(stream_id=stream_id)
    event: Any = _new_object(_REQUEST_RECEIVED_EVENT)
    event.stream_id = stream_id
    event.headers = _LAZY
    event.stream_ended = None
    event.priority_updated = None
    built: RequestReceived = event
    return built


def stream_ended(stream_id: int) -> StreamEnded:
    """h2's `StreamEnded(stream_id=stream_id)`, as `request_received` builds its event."""
    if not EVENTS_FAST:
        return StreamEnded(stream_id=stream_id)
    event: Any = _new_object(_STREAM_ENDED_EVENT)
    event.stream_id = stream_id
    built: StreamEnded = event
    return built


def headers_frame(stream_id: int, flag_byte: int) -> HeadersFrame:
    """hyperframe's `HeadersFrame(stream_id)` after `parse_flags(flag_byte)`: the same object
    (its class, attributes and `Flags`), built without its four `__init__`s and flag loops.
    Stream 0 is hyperframe's own path (its error)."""
    frame: Any = HeadersFrame.__new__(HeadersFrame)
    frame.stream_id = stream_id
    flags: Any = Flags.__new__(Flags)
    flags._valid_flags = set(_HEADERS_VALID)
    names: set[str] = set()
    for name, bit in _HEADERS_FLAGS:
        if flag_byte & bit:
            names.add(name)
    flags._flags = names
    frame.flags = flags
    frame.body_len = 0
    frame.depends_on = 0
    frame.stream_weight = 0
    frame.exclusive = False
    frame.pad_length = 0
    frame.data = b""
    built: HeadersFrame = frame
    return built


def _shape(frame: Any) -> tuple[list[str], list[str]]:
    return list(vars(frame)), list(vars(frame.flags))


# the fast path only while hyperframe builds a HEADERS frame as `headers_frame` does
HEADERS_FAST: Final = _shape(HeadersFrame(1)) == _HEADERS_SHAPE == _shape(headers_frame(1, 0))

# the events' fast path only while h2 builds them as `request_received` and `stream_ended` do
EVENTS_FAST: Final = (
    list(vars(RequestReceived(stream_id=1)))
    == ["stream_id", "headers", "stream_ended", "priority_updated"]
    and list(vars(StreamEnded(stream_id=1))) == ["stream_id"]
    and RequestReceived.__new__ is object.__new__
    and StreamEnded.__new__ is object.__new__
)

# h2's WindowManager's attributes, in the order its `__init__` sets them (`WireWindow`'s)
WINDOW_FIELDS: Final = ("max_window_size", "current_window_size", "_bytes_processed")


def decode_headers(decoder: Any, block: bytes) -> Any:
    """h2's `_decode_headers`, compiled: HPACK's errors as h2's."""
    try:
        if isinstance(decoder, Decoder):  # Portico's compiled HPACK: called directly
            return decoder.decode(block, True)
        return decoder.decode(block, raw=True)
    except OversizedHeaderListError as e:
        raise DenialOfServiceError(f"Oversized header block: {e}") from e
    except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as e:
        raise ProtocolError(f"Error decoding header block: {e}") from e


def flagged(frame: Frame, name: str) -> bool:
    """`name in frame.flags`, from the set inside hyperframe's `Flags` (its `__contains__` is
    Python code), when it has the shape checked at import."""
    flags: Any = frame.flags
    if HEADERS_FAST and type(flags) is Flags:
        names: set[str] = flags._flags
        return name in names
    return name in flags


@mypyc_attr(native_class=False)
class WireFrameBuffer(FrameBuffer):
    """h2's FrameBuffer: the received bytes as frames, with its checks (frame size, header
    blocks and their CONTINUATION frames), a loop where h2 recurses."""

    def __next__(self) -> Frame:
        frame: Frame | None = next_frame(self, False)
        if frame is None:
            raise StopIteration
        return frame

    def _headers(self, frame: Frame) -> Frame | None:
        """h2's `_update_header_buffer` (`held_headers`)."""
        return held_headers(self, frame)


class PlainHeaders:
    """A HEADERS frame carrying a whole header block, without padding or priority (what a
    client sends for a request): what `receive_headers_frame` reads of hyperframe's
    `HeadersFrame`, without making one and its `Flags` per request. Only `next_frame`
    makes it, for `WireConnection.receive_data`; nothing else sees it."""

    __slots__ = ("data", "end_stream", "stream_id")

    def __init__(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        self.stream_id = stream_id
        self.data = data
        self.end_stream = end_stream


def next_frame(buffer: Any, light: bool) -> Any:
    """`next()` of a `WireFrameBuffer`, None where it raises StopIteration (a direct call
    from `WireConnection.receive_data`, not Python's iteration protocol). `light`: a plain
    HEADERS frame with its whole block (and none held) as a `PlainHeaders`."""
    while True:
        data = buffer._data
        if len(data) < 9:
            return None
        high, low, kind, flag_byte, stream_id = _FRAME_HEADER.unpack_from(data)
        stream_id &= 0x7FFFFFFF
        plain = False
        frame: Frame
        if kind == 0x1 and stream_id and HEADERS_FAST:
            length = (high << 8) + low
            plain = not flag_byte & _HEADERS_PLAIN
            if light and plain and flag_byte & _END_HEADERS and not buffer._headers_buffer:
                # the frame as hyperframe's would be read (the same checks, in order)
                if len(data) < length + 9:
                    return None
                limit: int = buffer.max_frame_size
                if length > limit:
                    raise FrameTooLargeError(
                        f"Received overlong frame: length {length}, max {limit}"
                    )
                block = bytes(data[9 : 9 + length])
                del data[: 9 + length]
                return PlainHeaders(stream_id, block, bool(flag_byte & _END_STREAM))
            # a request's HEADERS: hyperframe's frame, built directly (`headers_frame`)
            frame = headers_frame(stream_id, flag_byte)
        else:
            try:
                frame, length = Frame.parse_frame_header(memoryview(data[:9]))
            except (InvalidDataError, InvalidFrameError) as err:
                raise ProtocolError(f"Received frame with invalid header: {err!s}") from err
        if len(data) < length + 9:
            return None
        most: int = buffer.max_frame_size
        if length > most:
            raise FrameTooLargeError(f"Received overlong frame: length {length}, max {most}")
        try:
            if plain:
                # hyperframe's parse_body with no padding and no priority: the block
                frame.body_len = length
                frame.data = bytes(data[9 : 9 + length])  # type: ignore[attr-defined]
            else:
                frame.parse_body(memoryview(data[9 : 9 + length]))
        except InvalidDataError as err:
            raise ProtocolError("Received frame with non-compliant data") from err
        except InvalidFrameError as err:
            raise FrameDataMissingError("Frame data missing or invalid") from err
        del data[: 9 + length]
        complete = held_headers(buffer, frame)
        if complete is not None:
            return complete


def held_headers(buffer: Any, frame: Frame) -> Frame | None:
    """h2's `_update_header_buffer`: a header block split over CONTINUATION frames is held
    until its last one, then handed on whole."""
    held: list[Any] = buffer._headers_buffer
    if held:
        if not (isinstance(frame, ContinuationFrame) and frame.stream_id == held[0].stream_id):
            raise ProtocolError("Invalid frame during header block.")
        held.append(frame)
        if len(held) > CONTINUATION_BACKLOG:
            raise ProtocolError("Too many continuation frames received.")
        if flagged(frame, "END_HEADERS"):
            first = held[0]
            first.flags.add("END_HEADERS")
            first.data = b"".join(part.data for part in held)
            buffer._headers_buffer = []
            return first  # type: ignore[no-any-return]
        return None
    if isinstance(frame, (HeadersFrame, PushPromiseFrame)) and not flagged(frame, "END_HEADERS"):
        held.append(frame)
        return None
    return frame


@mypyc_attr(native_class=False)
class WireConnection(H2Connection):
    """h2's connection with the per-frame paths above done lean; see the module."""

    def __init__(self, config: H2Configuration) -> None:
        H2Connection.__init__(self, config)
        self.state_machine = WireConnectionMachine()
        self.incoming_buffer = WireFrameBuffer(server=not config.client_side)
        # what is queued to send before `_data_to_send` (which always holds the newest
        # bytes): filled send buffers and large DATA payloads, held rather than copied in
        # (`send_data`), joined once by `take_data`
        self._held: list[bytes | bytearray | memoryview] = []
        # the open streams counted as they move, not by a walk over all of them per new one
        self._tally: StreamTally | None = StreamTally() if TALLY_FAST else None

    def take_data(self) -> bytes | bytearray:
        """What is queued to send, as `data_to_send()`: the buffer itself when nothing is
        held (no copy; it is never written to again), else everything joined once."""
        data = self._data_to_send
        self._data_to_send = bytearray()
        held = self._held
        if not held:
            return data
        if data:
            held.append(data)
        self._held = []
        return b"".join(held)

    def data_to_send(self, amount: int | None = None) -> bytes:
        """h2's, counting what is held."""
        if self._held:
            self._data_to_send = bytearray(self.take_data())
        return H2Connection.data_to_send(self, amount)

    def clear_outbound_data_buffer(self) -> None:
        """h2's, the held parts dropped too."""
        self._held = []
        self._data_to_send = bytearray()

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        if not frames:
            return
        buffer = self._data_to_send
        limit = self.max_outbound_frame_size
        for frame in frames:
            buffer += frame.serialize()
            assert frame.body_len <= limit

    def send_data(
        self,
        stream_id: int,
        data: bytes | memoryview,
        end_stream: bool = False,
        pad_length: Any = None,
    ) -> None:
        """h2's (`wire_send_data`)."""
        wire_send_data(self, stream_id, data, end_stream, pad_length)

    def send_headers(
        self,
        stream_id: int,
        headers: Iterable[Any],
        end_stream: bool = False,
        priority_weight: int | None = None,
        priority_depends_on: int | None = None,
        priority_exclusive: bool | None = None,
    ) -> None:
        """h2's (`wire_send_headers`)."""
        wire_send_headers(
            self,
            stream_id,
            headers,
            end_stream,
            priority_weight,
            priority_depends_on,
            priority_exclusive,
        )

    def _get_or_create_stream(self, stream_id: int, allowed_ids: AllowedStreamIDs) -> Any:
        """h2's, without a KeyError raised and caught for every new stream."""
        stream = self.streams.get(stream_id)
        if stream is not None:
            return stream
        return new_stream(self, stream_id, allowed_ids)

    def _begin_new_stream(self, stream_id: int, allowed_ids: AllowedStreamIDs) -> Any:
        """h2's, making a `WireStream`."""
        return new_stream(self, stream_id, allowed_ids)

    def _get_stream_by_id(self, stream_id: int | None) -> Any:
        """h2's."""
        if not stream_id:
            raise NoSuchStreamError(-1)
        stream = self.streams.get(stream_id)
        if stream is not None:
            return stream
        config: Any = self.config
        outbound = stream_id % 2 == int(config._client_side)
        highest = self.highest_outbound_stream_id if outbound else self.highest_inbound_stream_id
        if stream_id > highest:
            raise NoSuchStreamError(stream_id)
        raise StreamClosedError(stream_id)

    def local_flow_control_window(self, stream_id: int) -> int:
        """h2's (`wire_window`)."""
        return wire_window(self, stream_id)

    def _open_streams(self, remainder: int) -> int:
        """h2's: the open streams with this parity, forgetting the closed ones."""
        return open_streams(self, remainder)

    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Frame], list[Event]]:
        """h2's, compiled (`receive_headers_frame`)."""
        return receive_headers_frame(self, frame)

    def _receive_window_update_frame(
        self, frame: WindowUpdateFrame
    ) -> tuple[list[Frame], list[Event]]:
        """h2's, compiled."""
        events = connection_step(self.state_machine, _C_RECV_WINDOW_UPDATE)
        increment = frame.window_increment
        if frame.stream_id:
            try:
                stream = self._get_stream_by_id(frame.stream_id)
                frames, stream_events = stream.receive_window_update(increment)
            except StreamClosedError:
                return [], events
        else:
            window = self.outbound_flow_control_window + increment
            if window > _LARGEST_WINDOW:
                raise FlowControlError(
                    f"May not increment flow control window past {_LARGEST_WINDOW}"
                )
            self.outbound_flow_control_window = window
            stream_events = [WindowUpdated(stream_id=0, delta=increment)]
            frames = []
        return frames, events + stream_events

    def receive_data(self, data: Any) -> list[Event]:
        """h2's, compiled (its loop over the received frames), without the trace log call."""
        events: list[Event] = []
        buffer: Any = self.incoming_buffer
        buffer.add_data(data)
        buffer.max_frame_size = self.max_inbound_frame_size
        try:
            if type(buffer) is WireFrameBuffer:
                # the frames read and handled by direct calls, not through Python's
                # iteration protocol and the connection's methods
                while True:
                    frame = next_frame(buffer, True)
                    if frame is None:
                        break
                    events.extend(receive_frame(self, frame))
            else:
                for frame in buffer:
                    events.extend(self._receive_frame(frame))
        except InvalidPaddingError as e:
            self._terminate_connection(ErrorCodes.PROTOCOL_ERROR)
            raise ProtocolError("Received frame with invalid padding.") from e
        except ProtocolError as e:
            # h2 queues a GOAWAY before the error goes up
            self._terminate_connection(e.error_code)
            raise
        return events

    def _receive_frame(self, frame: Frame) -> list[Event]:
        """h2's, without the eager `repr(frame)` for its trace log."""
        return receive_frame(self, frame)


def receive_frame(conn: Any, frame: Any) -> list[Event]:
    """h2's `_receive_frame` for `conn` (a `WireConnection`), without the eager `repr(frame)`
    for its trace log; a HEADERS frame handled by a direct call (`receive_headers_frame`,
    which the connection's dispatch table calls too)."""
    events: list[Event]
    try:
        if type(frame) is PlainHeaders or type(frame) is _HEADERS_FRAME:
            frames, events = receive_headers_frame(conn, frame)
        else:
            frames, events = conn._frame_dispatch_table[frame.__class__](frame)
    except StreamClosedError as e:
        # closed by RST_STREAM: a stream error, answered with RST_STREAM; else h2 raises
        if conn._stream_is_closed_by_reset(e.stream_id):
            f = RstStreamFrame(e.stream_id)
            f.error_code = e.error_code
            conn._prepare_for_sending([f])
            events = e._events
        else:
            raise
    except StreamIDTooLowError as e:
        if conn._stream_is_closed_by_reset(e.stream_id):
            f = RstStreamFrame(e.stream_id)
            f.error_code = _STREAM_CLOSED
            conn._prepare_for_sending([f])
            events = []
        elif conn._stream_is_closed_by_end(e.stream_id):
            raise StreamClosedError(e.stream_id) from e
        else:
            raise
    else:
        if frames:
            conn._prepare_for_sending(frames)
    return events


def receive_headers_frame(conn: Any, frame: Any) -> tuple[list[Frame], list[Event]]:
    """h2's `_receive_headers_frame` for `conn` (a `WireConnection`), compiled: `frame` is
    hyperframe's `HeadersFrame` or a `PlainHeaders`."""
    config: Any = conn.config
    client = config._client_side
    end_stream: bool
    priority = False
    if isinstance(frame, PlainHeaders):
        end_stream = frame.end_stream
    else:
        end_stream = flagged(frame, "END_STREAM")
        priority = flagged(frame, "PRIORITY")
    stream_id: int = frame.stream_id
    streams: dict[int, Any] = conn.streams
    if stream_id not in streams:
        limit = setting(conn.local_settings, _MAX_CONCURRENT_STREAMS)
        count = open_streams(conn, 0 if client else 1)
        if count + 1 > limit:
            raise TooManyStreamsError(f"Max inbound streams is {limit}, {count} open")
    headers = decode_headers(conn.decoder, frame.data)
    events = connection_step(conn.state_machine, _C_RECV_HEADERS)
    found: Any = streams.get(stream_id)  # h2's _get_or_create_stream
    if found is None:
        found = new_stream(conn, stream_id, _EVEN_IDS if client else _ODD_IDS)
    stream: WireStream = found
    frames, stream_events = stream.receive_headers(headers, end_stream, config._header_encoding)
    if priority:
        p_frames, p_events = conn._receive_priority_frame(frame)
        first: Any = stream_events[0]
        first.priority_updated = p_events[0]
        stream_events.extend(p_events)
        assert not p_frames
    return frames, events + stream_events


def wire_send_data(
    conn: Any,
    stream_id: int,
    data: bytes | memoryview,
    end_stream: bool = False,
    pad_length: Any = None,
) -> None:
    """h2's `send_data` for `conn` (a `WireConnection`), the same checks and state changes
    in the same order, the frame written straight to the send buffer (padding, which
    Portico never sends, is h2's)."""
    if pad_length is not None:
        H2Connection.send_data(conn, stream_id, data, end_stream, pad_length)
        return
    size = len(data)
    streams: dict[int, Any] = conn.streams
    stream: Any = streams.get(stream_id)
    if size > 0:
        if stream is None:
            conn.local_flow_control_window(stream_id)  # h2's error for that stream id
        found: WireStream = stream
        # h2's local_flow_control_window, its two windows read once
        shared: int = conn.outbound_flow_control_window
        window = min(shared, found.outbound_flow_control_window)
        if size > window:
            raise FlowControlError(f"Cannot send {size} bytes, flow control window is {window}")
    limit: int = conn.max_outbound_frame_size
    if size > limit:
        raise FrameTooLargeError(f"Cannot send frame size {size}, max frame size is {limit}")
    # the state machines: in the states where h2's tables make SEND_DATA a move to the
    # same state with nothing run (an open connection, an open stream), there is nothing
    # to do; any other state takes h2's transition (and its error)
    machine: Any = conn.state_machine
    if id(machine.state) not in _CONNECTION_DATA_STAYS:
        connection_step(machine, _C_SEND_DATA)
    if stream is None:
        stream = streams[stream_id]  # h2's KeyError (an empty frame, unknown stream)
    wire: WireStream = stream
    machine = wire.state_machine
    if id(machine.state) not in _STREAM_DATA_STAYS:
        stream_step(machine, _SEND_DATA)
    flags = 0
    if end_stream:
        stream_step(machine, _SEND_END_STREAM)
        flags = _END_STREAM
    remaining: int = wire.outbound_flow_control_window - size
    wire.outbound_flow_control_window = remaining
    assert remaining >= 0 or size == 0
    buffer: bytearray = conn._data_to_send
    buffer += _FRAME_HEADER.pack(
        (size >> 8) & 0xFFFF, size & 0xFF, 0, flags, stream_id & 0x7FFFFFFF
    )
    if size >= HOLD_FROM and (type(data) is bytes or (type(data) is memoryview and data.readonly)):
        # held, not copied: appended to a growing buffer, the bytes of a large body were
        # copied about 4.5 times (each time the buffer outgrew its block); joined once
        # by `take_data` instead. Immutable payloads only, so holding equals copying.
        held = conn._held
        held.append(buffer)
        held.append(data)
        conn._data_to_send = bytearray()
    else:
        buffer += data
    remaining = conn.outbound_flow_control_window - size
    conn.outbound_flow_control_window = remaining
    assert remaining >= 0 or size == 0


def wire_send_headers(
    conn: Any,
    stream_id: int,
    headers: Iterable[Any],
    end_stream: bool = False,
    priority_weight: int | None = None,
    priority_depends_on: int | None = None,
    priority_exclusive: bool | None = None,
) -> None:
    """h2's `send_headers` on `conn` (a `WireConnection`) for a server's response head or
    trailers on an open stream, with outbound normalisation and validation off (Portico's
    fields are built valid): the same state changes, HPACK encoding and frames, serialised
    straight to the send buffer. Anything else (a new stream, priority, a client) is h2's
    own path."""
    streams: dict[int, Any] = conn.streams
    stream: Any = streams.get(stream_id)
    config: Any = conn.config  # its fields read directly: h2's are Python descriptors
    if (
        stream is None
        or config._client_side
        or config._normalize_outbound_headers
        or config._validate_outbound_headers
        or priority_weight is not None
        or priority_depends_on is not None
        or priority_exclusive is not None
    ):
        H2Connection.send_headers(
            conn,
            stream_id,
            headers,
            end_stream,
            priority_weight,
            priority_depends_on,
            priority_exclusive,
        )
        return
    wire: WireStream = stream
    connection_step(conn.state_machine, _C_SEND_HEADERS)
    fields = list(headers)
    for field in fields:
        if type(field) is tuple:  # as fields almost always are: read as one
            pair: tuple[Any, ...] = field
            if isinstance(pair[0], bytes) and isinstance(pair[1], bytes):
                continue
        elif isinstance(field[0], bytes) and isinstance(field[1], bytes):
            continue
        fields = utf8_encode_headers(fields)
        break
    machine = wire.state_machine
    step = _SEND_HEADERS
    if not machine.client and _informational(fields):
        if end_stream:
            raise ProtocolError("Cannot set END_STREAM on informational responses.")
        step = _SEND_INFORMATIONAL_HEADERS
    stream_step(machine, step)
    encoder: Any = conn.encoder  # Any: h2 declares hpack's; Portico's is called directly
    block = encoder.encode(fields, True) if isinstance(encoder, Encoder) else encoder.encode(fields)
    size: int = wire.max_outbound_frame_size or 0
    if 0 < len(block) <= size:
        blocks = [block]  # one frame: the block as it is, not a copy
    else:
        blocks = [block[i : i + size] for i in range(0, len(block), size)]
    first = blocks[0]  # h2 fails here too on an empty block (no :status: never ours)
    flags = 0
    if end_stream:
        stream_step(machine, _SEND_END_STREAM)
        flags = _END_STREAM
    if machine.trailers_sent and not end_stream:
        raise ProtocolError("Trailers must have END_STREAM set.")
    wire.request_method = _method(fields)
    buffer: bytearray = conn._data_to_send
    sid = stream_id & 0x7FFFFFFF
    last = len(blocks) - 1
    if not last:
        flags |= _END_HEADERS
    length = len(first)
    buffer += _FRAME_HEADER.pack((length >> 8) & 0xFFFF, length & 0xFF, 0x1, flags, sid)
    buffer += first
    for index in range(1, last + 1):
        part = blocks[index]
        length = len(part)
        flags = _END_HEADERS if index == last else 0
        buffer += _FRAME_HEADER.pack((length >> 8) & 0xFFFF, length & 0xFF, 0x9, flags, sid)
        buffer += part


def wire_window(conn: Any, stream_id: int) -> int:
    """h2's `local_flow_control_window` for `conn` (a `WireConnection`): how much DATA the
    stream may send now, the smaller of its window and the connection's."""
    streams: dict[int, Any] = conn.streams
    stream: Any = streams.get(stream_id) if stream_id else None
    if stream is None:
        stream = conn._get_stream_by_id(stream_id)  # h2's errors
    wire: WireStream = stream
    window: int = conn.outbound_flow_control_window
    return min(window, wire.outbound_flow_control_window)


def new_stream(conn: Any, stream_id: int, allowed_ids: AllowedStreamIDs) -> WireStream:
    """h2's `_begin_new_stream` for `conn` (a `WireConnection`): a `WireStream`, counted in
    the connection's tally."""
    config: Any = conn.config
    client: bool = config._client_side
    outbound = stream_id % 2 == (1 if client else 0)  # h2's _stream_id_is_outbound
    highest: int = conn.highest_outbound_stream_id if outbound else conn.highest_inbound_stream_id
    if stream_id <= highest:
        raise StreamIDTooLowError(stream_id, highest)
    # the enum's members told apart by identity: `int()` of one is a call through Python's
    parity = 1 if allowed_ids is _ODD_IDS else 0 if allowed_ids is _EVEN_IDS else int(allowed_ids)
    if (stream_id % 2) != parity:
        raise ProtocolError("Invalid stream ID for peer.")
    stream = WireStream(
        stream_id,
        config,
        setting(conn.local_settings, _INITIAL_WINDOW_SIZE),
        setting(conn.remote_settings, _INITIAL_WINDOW_SIZE),
    )
    stream.max_outbound_frame_size = conn.max_outbound_frame_size
    streams: dict[int, Any] = conn.streams
    streams[stream_id] = stream
    tally: StreamTally | None = conn._tally
    if tally is not None:
        machine = stream.state_machine
        machine.tally = tally
        tally.made += 1
        machine.order = tally.made
        tally.members += 1
    if outbound:
        conn.highest_outbound_stream_id = stream_id
    else:
        conn.highest_inbound_stream_id = stream_id
    return stream


def open_streams(conn: Any, remainder: int) -> int:
    """h2's `_open_streams` for `conn` (a `WireConnection`): how many of its streams with
    ids of this parity are open (RFC 9113 §5.1.2), after forgetting the closed ones (into
    `_closed_streams`, in the order h2 forgets them: the order the streams were made). Read
    from the tally the streams' moves keep; h2's walk over every stream when there is none,
    or when the streams are not those the tally counted (a stream put in or taken out by
    other code than h2's)."""
    streams: dict[int, Any] = conn.streams
    tally: StreamTally | None = conn._tally
    if tally is None or tally.members != len(streams):
        return walk_streams(conn, remainder)
    closed = tally.closed
    if closed:
        tally.closed = []
        last = 0
        for machine in closed:
            if machine.order < last:
                closed.sort(key=_made)
                break
            last = machine.order
        remember = conn._closed_streams
        for machine in closed:
            stream_id = machine.stream_id
            stream = streams.get(stream_id)
            if stream is not None and stream.state_machine is machine:
                del streams[stream_id]
                tally.members -= 1
                forget(remember, stream_id, machine.stream_closed_by)
    return tally.odd if remainder else tally.even


def _made(machine: WireStreamMachine) -> int:
    return machine.order


def walk_streams(conn: Any, remainder: int) -> int:
    """h2's `_open_streams` as h2 does it (every stream looked at), then a new tally of the
    streams that are left (none, if one of them is not a `WireStream`)."""
    count = 0
    even = odd = 0
    closed: list[int] = []
    streams: dict[int, Any] = conn.streams
    for stream_id, stream in streams.items():
        if stream.open:
            if stream_id % 2 == remainder:
                count += 1
            if stream_id & 1:
                odd += 1
            else:
                even += 1
        elif stream.closed:
            closed.append(stream_id)
    remember = conn._closed_streams
    for stream_id in closed:
        gone = streams.pop(stream_id)
        forget(remember, stream_id, gone.closed_by)
    if conn._tally is not None:
        tally: StreamTally | None = StreamTally()
        for stream in streams.values():
            if type(stream) is not WireStream:
                tally = None
                break
        if tally is not None:
            tally.even = even
            tally.odd = odd
            tally.members = len(streams)
            for stream in streams.values():
                machine: WireStreamMachine = stream.state_machine
                machine.tally = tally
                tally.made += 1
                machine.order = tally.made
        conn._tally = tally
    return count


# The h2 release whose internals the classes above copy, and which tests/unit/http/test_h2wire.py
# checks them against (h2's own classes run beside them). The project's lock pins it; moving
# the pin means reading h2's changes to these methods and running those tests.
WRITTEN_FOR: Final = "4.4.1"


@mypyc_attr(native_class=False)
class LibraryConnection(H2Connection):
    """h2's connection as the library has it, with `take_data` (as `data_to_send()`): what
    the listener uses under any other h2 release, slower but never out of step with it."""

    def take_data(self) -> bytes:
        return self.data_to_send()


def connection_class(h2_version: str) -> type[WireConnection] | type[LibraryConnection]:
    """`WireConnection` under the h2 release it was written for, else the library's own."""
    return WireConnection if h2_version == WRITTEN_FOR else LibraryConnection
