"""portico.http.h2wire against the h2 library it stands in for: run side by side with h2's own
`H2Connection` on the same input, `WireConnection` must send the same bytes, raise the same
errors, report the same events and keep the same flow-control windows and stream states;
`received_fields` must accept and refuse exactly the header blocks h2 does."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import (
    ConnectionInputs,
    ConnectionState,
    H2Connection,
    H2ConnectionStateMachine,
)
from h2.errors import ErrorCodes
from h2.events import RequestReceived, StreamEnded
from h2.exceptions import ProtocolError
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes, Settings
from h2.stream import H2Stream, H2StreamStateMachine, StreamClosedBy, StreamInputs, StreamState
from h2.utilities import (
    HeaderValidationFlags,
    SizeLimitDict,
    normalize_inbound_headers,
    validate_headers,
)
from h2.windows import WindowManager
from hpack.struct import HeaderTuple, NeverIndexedHeaderTuple
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    RstStreamFrame,
    WindowUpdateFrame,
)

from portico.http.h2wire import (
    EVENTS_FAST,
    HEADERS_FAST,
    HOLD_FROM,
    MACHINE_FIELDS,
    WINDOW_FIELDS,
    WRITTEN_FOR,
    LibraryConnection,
    WireConnection,
    WireConnectionMachine,
    WireFrameBuffer,
    WireStream,
    WireStreamMachine,
    WireWindow,
    connection_class,
    forget,
    headers_frame,
    received_fields,
    request_received,
    stream_ended,
)

REQUEST = [
    (b":method", b"GET"),
    (b":path", b"/"),
    (b":scheme", b"https"),
    (b":authority", b"example.com"),
]


def h2_fields(headers: list[Any], trailer: bool, response: bool) -> list[Any]:
    flags = HeaderValidationFlags(False, trailer, response, False)
    return list(validate_headers(normalize_inbound_headers(headers, flags), flags))


def outcome(fn: Callable[[], list[Any]]) -> tuple[str, Any]:
    try:
        return "ok", [(type(h), tuple(h)) for h in fn()]
    except ProtocolError as exc:
        return "error", str(exc)


NAMES = [
    b":method", b":path", b":scheme", b":authority", b":status", b":protocol", b":bogus",
    b"host", b"cookie", b"te", b"connection", b"keep-alive", b"upgrade", b"accept",
    b"proxy-connection", b"transfer-encoding",
    b"content-length", b"x-a", b"", b"Upper", b"bad name", b"a:b", b"\x7f", b"caf\xc3\xa9",
]  # fmt: skip
VALUES = [
    b"GET", b"CONNECT", b"/", b"", b"https", b"example.com", b"other.com", b"trailers",
    b"TRAILERS", b"gzip", b" lead", b"trail\t", b"a\x00b", b"a\nb", b"a\rb", b"200", b"x y",
    b"websocket", b"\xff",
]  # fmt: skip


def random_block(rng: random.Random) -> list[Any]:
    block: list[Any] = []
    if rng.random() < 0.7:  # mostly near-valid requests, so that the later checks are reached
        block = [HeaderTuple(n, v) for n, v in REQUEST if rng.random() < 0.9]
        rng.shuffle(block) if rng.random() < 0.2 else None
    for _ in range(rng.randrange(0, 6)):
        block.insert(
            rng.randrange(0, len(block) + 1), HeaderTuple(rng.choice(NAMES), rng.choice(VALUES))
        )
    return block


def test_received_fields_accepts_and_refuses_exactly_what_h2_does() -> None:
    rng = random.Random(18)
    seen = {"ok": 0, "error": 0}
    for _ in range(6000):
        block = random_block(rng)
        trailer = rng.random() < 0.1
        response = not trailer and rng.random() < 0.1
        ours = outcome(partial(received_fields, list(block), trailer, response))
        theirs = outcome(partial(h2_fields, list(block), trailer, response))
        assert ours == theirs, block
        seen[ours[0]] += 1
    assert seen["ok"] > 300  # both sides of every check exercised
    assert seen["error"] > 500


@pytest.mark.parametrize("size", [1, 2, 62, 63, 64, 65, 300])
@pytest.mark.parametrize("bad", [b"\x00", b"\n", b"\r", b"\t", b" ", b"\x0b", b"\x7f"])
def test_a_field_value_of_any_length_is_checked_as_h2_checks_it(size: int, bad: bytes) -> None:
    """A value's illegal characters found alike, short (one compiled pass) or long (searched):
    at its start, middle and end."""
    for where in (0, size // 2, size - 1):
        value = bytearray(b"v" * size)
        value[where : where + 1] = bad
        block = [*REQUEST, (b"x-value", bytes(value))]
        ours = outcome(partial(received_fields, block, False, False))
        assert ours == outcome(partial(h2_fields, block, False, False)), (where, value)


def test_cookie_crumbs_are_joined_last_and_never_indexed() -> None:
    block = [
        HeaderTuple(b"cookie", b"a=1"),
        *(HeaderTuple(n, v) for n, v in REQUEST),
        HeaderTuple(b"cookie", b"b=2"),
        HeaderTuple(b"accept", b"*/*"),
    ]
    out = received_fields(block, False, False)
    assert out[-1] == (b"cookie", b"a=1; b=2")
    assert isinstance(out[-1], NeverIndexedHeaderTuple)
    assert out[:-1] == [*REQUEST, (b"accept", b"*/*")]


# -- connections side by side ---------------------------------------------------------------


class Pair:
    """A client, and the same bytes fed to h2's server connection and to Portico's."""

    def __init__(self, client_window: int = 65535, max_frame: int = 16384, **inbound: Any) -> None:
        self.client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.client.local_settings = Settings(
            client=True,
            initial_values={
                SettingCodes.INITIAL_WINDOW_SIZE: client_window,
                SettingCodes.MAX_FRAME_SIZE: max_frame,
            },
        )
        self.client.initiate_connection()
        self.servers: list[H2Connection] = []
        for cls in (H2Connection, WireConnection):
            server = cls(
                H2Configuration(
                    **{
                        "client_side": False,
                        "header_encoding": None,
                        "validate_outbound_headers": False,
                        "normalize_outbound_headers": False,
                        **inbound,
                    }
                )
            )
            server.initiate_connection()
            self.servers.append(server)
        self.feed(self.client.data_to_send())
        self.client.receive_data(self.take())

    def take(self) -> bytes:
        """Both servers' output, which must be the same."""
        theirs, ours = (bytes(s.data_to_send()) for s in self.servers)
        assert ours == theirs
        return ours

    def feed(self, data: bytes) -> tuple[str, Any]:
        results = [
            outcome_of(lambda s=s: [repr(e) for e in s.receive_data(data)]) for s in self.servers
        ]
        assert results[0] == results[1]
        self.same_state()
        return results[0]

    def both(self, method: str, *args: Any, **kwargs: Any) -> tuple[str, Any]:
        results = [
            outcome_of(lambda s=s: getattr(s, method)(*args, **kwargs)) for s in self.servers
        ]
        assert results[0] == results[1], method
        self.same_state()
        return results[0]

    def same_state(self) -> None:
        theirs, ours = self.servers
        assert ours.outbound_flow_control_window == theirs.outbound_flow_control_window
        assert ours.inbound_flow_control_window == theirs.inbound_flow_control_window
        assert ours.state_machine.state == theirs.state_machine.state
        assert ours.streams.keys() == theirs.streams.keys()
        assert ours._closed_streams == theirs._closed_streams
        assert ours.highest_inbound_stream_id == theirs.highest_inbound_stream_id
        for sid, stream in theirs.streams.items():
            mine = ours.streams[sid]
            assert machine_state(mine.state_machine) == machine_state(stream.state_machine)
            assert window_state(mine._inbound_window_manager) == window_state(
                stream._inbound_window_manager
            )
            assert mine._expected_content_length == stream._expected_content_length
            assert mine.request_method == stream.request_method
            assert mine.outbound_flow_control_window == stream.outbound_flow_control_window
            assert mine.inbound_flow_control_window == stream.inbound_flow_control_window
            assert ours.local_flow_control_window(sid) == theirs.local_flow_control_window(sid)

    def request(self, sid: int, end: bool = True) -> None:
        self.client.send_headers(sid, REQUEST, end_stream=end)
        self.feed(self.client.data_to_send())


def outcome_of(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except Exception as exc:  # the same class and message from both
        return type(exc).__name__, str(exc)


def test_data_frames_are_byte_identical_and_windows_exact() -> None:
    pair = Pair(client_window=100000)
    pair.request(1)
    pair.request(3)
    pair.both("send_headers", 1, [(b":status", b"200")])
    pair.both("send_headers", 3, [(b":status", b"200")])
    body = bytes(range(256)) * 200
    pair.both("send_data", 1, body[:16384])
    pair.both("send_data", 1, memoryview(body)[100:16000])  # a view: as a stream's queue holds
    pair.both("send_data", 3, b"")
    pair.both("send_data", 3, bytearray(b"abc"), end_stream=True)
    out = pair.take()
    frames = [f for f in parse_all(out)]
    assert [type(f) for f in frames] == [
        HeadersFrame, HeadersFrame, DataFrame, DataFrame, DataFrame, DataFrame,
    ]  # fmt: skip
    assert frames[-1].flags == {"END_STREAM"}
    assert frames[-1].data == b"abc"
    # larger than a frame may be, or past the window: h2's errors, nothing sent
    assert pair.both("send_data", 1, body[:16385])[0] == "FrameTooLargeError"
    pair.both("send_data", 1, body[:16384])
    pair.both("send_data", 1, body[:16384])
    pair.take()
    _status, window = pair.both("local_flow_control_window", 1)
    assert 0 < window < 16384
    assert pair.both("send_data", 1, body[: window + 1])[0] == "FlowControlError"
    assert pair.take() == b""
    # on a stream we ended, or one that does not exist: h2's errors
    assert pair.both("send_data", 3, b"x")[0] == "StreamClosedError"
    assert pair.both("send_data", 99, b"x")[0] == "NoSuchStreamError"
    assert pair.both("send_data", 1, b"x", pad_length=3) == ("ok", None)  # padding: h2's own
    pair.both("send_data", 1, b"", end_stream=True)
    pair.take()


def test_window_updates_let_more_data_through_exactly_as_h2() -> None:
    pair = Pair(client_window=20000)
    pair.request(1)
    pair.both("send_headers", 1, [(b":status", b"200")])
    pair.both("send_data", 1, b"x" * 16384)
    pair.both("send_data", 1, b"x" * 3616)
    assert pair.both("local_flow_control_window", 1) == ("ok", 0)
    pair.client.receive_data(pair.take())
    pair.client.increment_flow_control_window(5000, stream_id=1)
    pair.feed(pair.client.data_to_send())
    assert pair.both("local_flow_control_window", 1) == ("ok", 5000)
    pair.both("send_data", 1, b"y" * 5000, end_stream=True)
    events = pair.client.receive_data(pair.take())
    assert [type(e).__name__ for e in events] == ["DataReceived", "StreamEnded"]


def test_protocol_errors_from_the_client_still_apply() -> None:
    pair = Pair()
    # a header name in upper case: h2's connection error, GOAWAY PROTOCOL_ERROR from both
    block = pair.client.encoder.encode([*REQUEST, (b"X-Upper", b"1")])
    frame = HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"])
    assert pair.feed(frame.serialize())[0] == "ProtocolError"
    assert pair.take()[3] == 0x7  # a GOAWAY


def test_frames_on_reset_and_closed_streams_are_answered_as_h2_does() -> None:
    pair = Pair()
    pair.request(1, end=False)
    pair.both("reset_stream", 1, ErrorCodes.CANCEL)
    pair.take()
    # DATA and WINDOW_UPDATE on the stream we reset: RST_STREAM (a stream error), no GOAWAY
    pair.feed(DataFrame(1, b"late").serialize())
    pair.feed(WindowUpdateFrame(1, window_increment=10).serialize())
    out = pair.take()
    assert {type(f) for f in parse_all(out)} <= {RstStreamFrame, WindowUpdateFrame}
    # a stream id going backwards: h2's connection error
    pair.request(5)
    assert pair.feed(HeadersFrame(3, b"", flags=["END_HEADERS"]).serialize())[0] != "ok"
    pair.take()


def test_take_data_hands_over_the_buffer_once() -> None:
    conn = WireConnection(H2Configuration(client_side=False))
    conn.initiate_connection()
    first = conn.take_data()
    assert first[3] == 0x4  # the SETTINGS frame
    assert conn.take_data() == b""
    conn.ping(b"12345678")
    assert bytes(conn.take_data()) != bytes(first)
    assert bytes(first)[3] == 0x4  # what was handed over is never written again


def test_large_payloads_held_until_taken_leave_in_the_order_sent() -> None:
    """DATA payloads from HOLD_FROM bytes are held, not copied, until `take_data`: the bytes
    that leave are h2's, in h2's order, among control frames queued between them; a
    payload that could change under us (a bytearray, a view of one) is copied at once."""
    pair = Pair(client_window=2**20)
    for sid in (1, 3):
        pair.request(sid)
        pair.both("send_headers", sid, [(b":status", b"200")])
    body = bytes(range(256)) * 64  # 16 KiB
    mutable = bytearray(body)
    ours = pair.servers[1]
    for taking in ("take_data", "data_to_send"):
        pair.both("send_data", 1, body[: HOLD_FROM - 1])  # copied: small
        pair.both("send_data", 1, body)  # held
        pair.both("ping", b"12345678")  # a control frame between two held payloads
        pair.both("send_data", 3, memoryview(body)[1 : HOLD_FROM + 1])  # held: a read-only view
        pair.both("send_data", 3, mutable)  # copied: may change
        pair.both("send_data", 1, memoryview(mutable)[:HOLD_FROM])  # copied too
        pair.both("send_data", 3, body[:HOLD_FROM], end_stream=taking == "data_to_send")
        assert ours._held  # what this test is about
        mutable[:] = bytes(len(mutable))  # after the fact: must not show
        theirs = bytes(pair.servers[0].data_to_send())
        assert bytes(getattr(ours, taking)()) == theirs
        assert ours.take_data() == b""
        mutable[:] = body
    # partial reads and clearing count what is held
    pair.both("send_data", 1, body)
    pair.both("ping", b"87654321")
    for amount in (5, 9, 16384, 100):
        assert pair.both("data_to_send", amount)[0] == "ok"
    pair.take()
    pair.both("send_data", 1, body)
    pair.both("clear_outbound_data_buffer")
    assert pair.take() == b""


@pytest.mark.parametrize("end", [False, True])
@pytest.mark.parametrize("state", list(StreamState))
def test_data_in_every_stream_state_moves_both_alike(state: StreamState, end: bool) -> None:
    """`send_data` skips h2's state machine only where h2's own table makes SEND_DATA a move
    to the same state with nothing run: in every state, the same outcome as h2's."""
    pair = Pair()
    pair.request(1)
    pair.both("send_headers", 1, [(b":status", b"200")])
    pair.take()
    for server in pair.servers:
        server.streams[1].state_machine.state = state
    pair.both("send_data", 1, b"x" * 10, end_stream=end)
    pair.both("send_data", 1, b"", end_stream=end)
    pair.take()


def test_data_on_a_closed_connection_or_an_unknown_stream_fails_in_both() -> None:
    pair = Pair()
    pair.request(1, end=False)
    pair.both("send_headers", 1, [(b":status", b"200")])
    assert pair.both("send_data", 7, b"")[0] == "KeyError"  # h2's, as it looks the stream up
    pair.both("close_connection")
    pair.take()
    assert pair.both("send_data", 1, b"x")[0] == "ProtocolError"
    assert pair.both("send_data", 1, b"")[0] == "ProtocolError"


def parse_all(data: bytes) -> list[Any]:
    from hyperframe.frame import Frame

    frames = []
    view = memoryview(data)
    while view:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames


@pytest.mark.parametrize("size", [0, 1, 255, 256, 16383, 16384])
def test_a_data_frame_header_is_hyperframe_s(size: int) -> None:
    pair = Pair()
    pair.request(1)
    pair.both("send_headers", 1, [(b":status", b"200")])
    pair.take()
    pair.both("send_data", 1, b"z" * size, end_stream=True)
    assert pair.take() == DataFrame(1, b"z" * size, flags=["END_STREAM"]).serialize()


def test_response_heads_and_trailers_are_byte_identical() -> None:
    pair = Pair()
    for sid in (1, 3, 5, 7, 9, 11):
        pair.request(sid, end=sid != 9)
    pair.both("send_headers", 1, [(b":status", b"103"), (b"link", b"</a.css>; rel=preload")])
    pair.both("send_headers", 1, [(b":status", b"200"), (b"content-length", b"3")])
    pair.both("send_data", 1, b"abc", end_stream=True)
    # a head and an end in one frame; a never-indexed field stays never indexed
    secret = NeverIndexedHeaderTuple(b"set-cookie", b"s=1")
    pair.both("send_headers", 3, [(b":status", b"204"), secret], end_stream=True)
    # trailers: must end the stream
    pair.both("send_headers", 5, [(b":status", b"200")])
    assert pair.both("send_headers", 5, [(b"grpc-status", b"0")])[0] == "ProtocolError"
    pair.both("send_headers", 7, [(b":status", b"200")])
    pair.both("send_headers", 7, [(b"grpc-status", b"0")], end_stream=True)
    # informational with END_STREAM: refused; str fields: encoded as h2 encodes them
    assert pair.both("send_headers", 9, [(b":status", b"100")], end_stream=True)[0] == (
        "ProtocolError"
    )
    pair.both("send_headers", 11, [(":status", "200"), ("x-str", "é")], end_stream=True)
    # a head bigger than a frame: HEADERS then CONTINUATION frames
    big = [(b":status", b"200")] + [(b"x-%d" % i, b"v" * 1000) for i in range(40)]
    pair.both("send_headers", 9, big, end_stream=True)
    out = pair.take()
    assert [type(f).__name__ for f in parse_all(out)].count("ContinuationFrame") == 2
    # on a closed stream, an unknown one, or with priority: h2's errors and path
    assert pair.both("send_headers", 1, [(b":status", b"200")])[0] == "StreamClosedError"
    assert pair.both("send_headers", 13, [(b":status", b"200")])[0] != "ok"
    assert pair.both("send_headers", 5, [(b"x", b"1")], True, 16)[0] != "ok"
    pair.take()
    events = pair.client.receive_data(out)
    assert sum(type(e).__name__ == "StreamEnded" for e in events) == 5  # not 5's


def event_state(event: Any) -> tuple[str, dict[str, Any]]:
    """An event's class and public fields."""
    names = [n for n in dir(event) if not n.startswith("_")]
    return type(event).__name__, {n: getattr(event, n) for n in names}


def machine_state(machine: Any) -> list[tuple[str, Any]]:
    """A state machine's attributes as h2's has them (a stream's: names in its order)."""
    if isinstance(machine, (H2StreamStateMachine, WireStreamMachine)):
        return [(name, getattr(machine, name)) for name in MACHINE_FIELDS]
    return list(vars(machine).items())


def run_machine(machine: Any, state: Any, step: Any, **attrs: Any) -> tuple[Any, ...]:
    machine.state = state
    for name, value in attrs.items():
        setattr(machine, name, value)
    result = outcome_of(lambda: [event_state(e) for e in machine.process_input(step)])
    return result, machine.state, machine_state(machine)


@pytest.mark.parametrize("client", [None, True, False])
@pytest.mark.parametrize("sent", [None, True])
@pytest.mark.parametrize("trailers", [None, True])
def test_the_stream_state_machine_moves_as_h2_s_in_every_state(
    client: bool | None, sent: bool | None, trailers: bool | None
) -> None:
    attrs = {
        "client": client,
        "headers_sent": sent,
        "headers_received": sent,
        "trailers_sent": trailers,
        "trailers_received": trailers,
    }
    for state in StreamState:
        for step in StreamInputs:
            theirs = run_machine(H2StreamStateMachine(1), state, step, **attrs)
            ours = run_machine(WireStreamMachine(1), state, step, **attrs)
            assert ours == theirs, (state, step)
    with pytest.raises(ValueError, match="StreamInputs"):
        WireStreamMachine(1).process_input("SEND_DATA")  # type: ignore[arg-type]


def test_the_connection_state_machine_moves_as_h2_s_in_every_state() -> None:
    for state in ConnectionState:
        for step in ConnectionInputs:
            theirs = run_machine(H2ConnectionStateMachine(), state, step)
            ours = run_machine(WireConnectionMachine(), state, step)
            assert ours == theirs, (state, step)


def test_received_heads_trailers_and_windows_move_both_alike() -> None:
    pair = Pair()
    # a body's length announced, then a second, conflicting one, or one not a number
    pair.request(1, end=False)
    head = [*REQUEST, (b"content-length", b"3")]
    pair.client.send_headers(3, head)
    pair.feed(pair.client.data_to_send())
    pair.client.send_data(3, b"abc")
    pair.client.send_headers(3, [(b"x-trailer", b"1")], end_stream=True)  # trailers
    assert pair.feed(pair.client.data_to_send())[0] == "ok"
    # a window update on a stream, on the connection, and one that overflows a stream's
    # window: a stream error, RST_STREAM FLOW_CONTROL_ERROR from both
    pair.feed(WindowUpdateFrame(1, window_increment=1000).serialize())
    pair.feed(WindowUpdateFrame(0, window_increment=1000).serialize())
    pair.feed(WindowUpdateFrame(1, window_increment=2**31 - 1).serialize())
    assert RstStreamFrame in {type(f) for f in parse_all(pair.take())}
    # a priority on a HEADERS frame: PriorityUpdated beside RequestReceived
    pair.client.send_headers(5, REQUEST, end_stream=True, priority_weight=200)
    assert "PriorityUpdated" in " ".join(pair.feed(pair.client.data_to_send())[1])
    pair.take()
    # the connection's window overflowing: a connection error from both
    assert pair.feed(WindowUpdateFrame(0, window_increment=2**31 - 1).serialize())[0] != "ok"
    pair.take()


@pytest.mark.parametrize(
    "inbound",
    [
        {"header_encoding": "utf-8"},
        {"normalize_inbound_headers": False},
        {"validate_inbound_headers": False},
    ],
)
def test_received_blocks_under_other_settings_take_h2_s_path_alike(inbound: Any) -> None:
    pair = Pair(**inbound)
    head = [*REQUEST, (b"cookie", b"a=1"), (b"cookie", b"b=2")]
    pair.client.send_headers(1, head)
    assert pair.feed(pair.client.data_to_send())[0] == "ok"
    pair.client.send_headers(1, [(b"x-trailer", b"1")], end_stream=True)
    assert pair.feed(pair.client.data_to_send())[0] == "ok"
    block = pair.client.encoder.encode([*REQUEST, (b"Upper", b"1")])  # an upper-case name
    pair.feed(HeadersFrame(3, block, flags=["END_HEADERS", "END_STREAM"]).serialize())


@pytest.mark.parametrize(
    "fields",
    [
        [(b"content-length", b"3"), (b"content-length", b"4")],
        [(b"content-length", b"x")],
        [(b"content-length", b"-1")],
    ],
)
def test_a_bad_content_length_is_a_protocol_error_from_both(fields: list[Any]) -> None:
    pair = Pair()
    block = pair.client.encoder.encode([*REQUEST, *fields])
    assert pair.feed(HeadersFrame(1, block, flags=["END_HEADERS"]).serialize())[0] == (
        "ProtocolError"
    )


def test_trailers_without_end_stream_are_refused_by_both() -> None:
    pair = Pair()
    pair.request(1, end=False)
    block = pair.client.encoder.encode([(b"x-trailer", b"1")])
    assert pair.feed(HeadersFrame(1, block, flags=["END_HEADERS"]).serialize())[0] == (
        "ProtocolError"
    )


def test_streams_past_the_concurrency_limit_and_closed_ones_are_counted_alike() -> None:
    pair = Pair()
    for server in pair.servers:
        server.local_settings = Settings(client=False, initial_values={0x3: 5})
    for sid in range(1, 10, 2):
        pair.request(sid, end=False)
    for sid in (1, 3):  # two answered: closed, forgotten at the next new stream
        pair.client.send_data(sid, b"", end_stream=True)
        pair.feed(pair.client.data_to_send())
        pair.both("send_headers", sid, [(b":status", b"204")], end_stream=True)
    pair.request(11, end=False)
    pair.request(13, end=False)
    pair.client.send_headers(15, REQUEST, end_stream=True)
    assert pair.feed(pair.client.data_to_send())[0] == "TooManyStreamsError"


def test_a_header_block_split_over_continuation_frames_arrives_whole_in_both() -> None:
    pair = Pair()
    block = pair.client.encoder.encode([*REQUEST, (b"x-big", b"v" * 3000)])
    parts = [block[i : i + 1000] for i in range(0, len(block), 1000)]
    data = HeadersFrame(1, parts[0], flags=["END_STREAM"]).serialize()
    for i, part in enumerate(parts[1:], 1):
        flags = ["END_HEADERS"] if i == len(parts) - 1 else []
        data += ContinuationFrame(1, part, flags=flags).serialize()
    for cut in (5, 9, 1010, len(data) - 1):  # frames split across reads anywhere
        pair = Pair()  # a fresh decoder: the block's first encoding decodes alone
        assert pair.feed(data[:cut]) == ("ok", [])
        status, events = pair.feed(data[cut:])
        assert status == "ok"
        assert "RequestReceived" in events[0]


def test_a_frame_interleaved_in_a_header_block_or_too_large_is_refused_by_both() -> None:
    pair = Pair()
    block = pair.client.encoder.encode(REQUEST)
    data = HeadersFrame(1, block[:5], flags=["END_STREAM"]).serialize()
    data += DataFrame(1, b"x").serialize()
    assert pair.feed(data) == ("ProtocolError", "Invalid frame during header block.")
    pair = Pair()
    assert pair.feed(DataFrame(1, b"x" * 16385).serialize())[0] == "FrameTooLargeError"


def test_a_continuation_flood_is_cut_off_by_both() -> None:
    pair = Pair()
    data = HeadersFrame(1, b"", flags=["END_STREAM"]).serialize()
    data += ContinuationFrame(1, b"").serialize() * 70
    assert pair.feed(data) == ("ProtocolError", "Too many continuation frames received.")


def test_the_fast_paths_serve_only_under_the_h2_release_they_copy() -> None:
    import h2

    # the lock pins the release the copies were checked against: these tests ran on it
    assert h2.__version__ == WRITTEN_FOR
    assert connection_class(WRITTEN_FOR) is WireConnection
    # another release: the library's own connection, which still talks
    other = connection_class("4.5.0")
    assert other is LibraryConnection
    server = other(H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    assert server.take_data().startswith(b"\x00\x00")  # its SETTINGS frame


def frame_state(frame: Any) -> tuple[Any, ...]:
    """A parsed frame as h2 can see it: class, attributes in order, flags and their checks."""
    fields = {k: v for k, v in vars(frame).items() if k != "flags"}
    return type(frame), list(vars(frame)), fields, vars(frame.flags)


def test_a_headers_frame_is_built_as_hyperframe_builds_it() -> None:
    assert HEADERS_FAST  # this hyperframe still has the shape the fast path copies
    for sid in (1, 3, 2**31 - 1):
        for flag_byte in range(256):
            theirs = HeadersFrame(sid)
            theirs.parse_flags(flag_byte)
            ours = headers_frame(sid, flag_byte)
            assert frame_state(ours) == frame_state(theirs), (sid, flag_byte)
            assert ours.flags._valid_flags is not theirs.flags._valid_flags
    with pytest.raises(ValueError, match="Unexpected flag"):  # hyperframe's flag check kept
        headers_frame(1, 0).flags.add("ACK")


def window_state(window: Any) -> list[tuple[str, Any]]:
    """A window manager's attributes, as h2's has them."""
    return [(name, getattr(window, name)) for name in WINDOW_FIELDS]


@pytest.mark.parametrize("seed", range(6))
def test_a_stream_s_window_moves_as_h2_s_window_manager(seed: int) -> None:
    """Received, processed and opened in a random order (past the limits too): the same
    increments, errors and state from both."""
    assert list(vars(WindowManager(65535))) == list(WINDOW_FIELDS)  # h2's shape, still
    rng = random.Random(seed)
    size = rng.choice([0, 1, 100, 65535, 2**31 - 1])
    ours, theirs = WireWindow(size), WindowManager(size)
    for _ in range(300):
        method = rng.choice(["window_consumed", "window_opened", "process_bytes"])
        amount = rng.choice([0, 1, 10, 1000, 40000, 70000, 2**31])
        results = [outcome_of(partial(getattr(w, method), amount)) for w in (ours, theirs)]
        assert results[0] == results[1], (method, amount)
        assert window_state(ours) == window_state(theirs)
    with pytest.raises(AssertionError):  # h2's check on the size, kept
        WireWindow(2**31)


def test_closed_streams_are_remembered_and_dropped_as_h2_s_dict_does() -> None:
    ours: Any = SizeLimitDict(size_limit=3)
    theirs: Any = SizeLimitDict(size_limit=3)
    causes = [StreamClosedBy.SEND_END_STREAM, StreamClosedBy.RECV_RST_STREAM, None]
    for sid in range(1, 16, 2):
        forget(ours, sid, causes[sid % 3])
        theirs[sid] = causes[sid % 3]
        assert list(ours.items()) == list(theirs.items())
    assert list(ours) == [11, 13, 15]  # the oldest dropped past the limit
    forget(ours, 13, None)  # a stream id stored again keeps its place, as in theirs
    theirs[13] = None
    assert list(ours.items()) == list(theirs.items())
    unlimited: Any = SizeLimitDict()
    plain: dict[int, Any] = {}
    for closed in (unlimited, plain):
        for sid in range(1, 400, 2):
            forget(closed, sid, None)
        assert len(closed) == 200


def parsed(buffer: Any, data: bytes) -> tuple[str, Any]:
    buffer.add_data(data)
    return outcome_of(lambda: [frame_state(f) for f in buffer])


@pytest.mark.parametrize(
    "data",
    [
        HeadersFrame(1, b"block", flags=["END_HEADERS", "END_STREAM"]).serialize(),
        HeadersFrame(7, b"", flags=["END_HEADERS"]).serialize(),
        HeadersFrame(1, b"block", flags=["END_HEADERS", "PADDED"], pad_length=3).serialize(),
        HeadersFrame(
            1, b"block", flags=["END_HEADERS", "PRIORITY"], depends_on=3, stream_weight=9
        ).serialize(),
        b"\x00\x00\x02\x01\x0c\x00\x00\x00\x01\x05x",  # padding longer than the frame
        b"\x00\x00\x02\x01\x24\x00\x00\x00\x01ab",  # priority data cut short
        b"\x00\x00\x00\x01\x0c\x00\x00\x00\x01",  # padded, no pad length
        b"\x00\x00\x01\x01\x04\x00\x00\x00\x00x",  # stream 0
        b"\x00\x00\x01\x01\x05\x80\x00\x00\x01x",  # the reserved bit set
        HeadersFrame(1, b"part").serialize()  # a block over a CONTINUATION
        + ContinuationFrame(1, b"rest", flags=["END_HEADERS"]).serialize(),
        HeadersFrame(3, b"block", flags=["END_HEADERS"]).serialize()[:12],  # not all here yet
    ],
)
def test_headers_frames_are_parsed_as_h2_s_buffer_parses_them(data: bytes) -> None:
    theirs, ours = FrameBuffer(server=False), WireFrameBuffer(server=False)
    for buffer in (theirs, ours):
        buffer.max_frame_size = 16384
    assert parsed(ours, data) == parsed(theirs, data)
    assert ours._data == theirs._data  # what is left for the next read


def test_a_headers_frame_with_bad_padding_ends_both_connections_alike() -> None:
    pair = Pair()
    assert pair.feed(b"\x00\x00\x02\x01\x0d\x00\x00\x00\x01\x05x") == (
        "ProtocolError",
        "Received frame with invalid padding.",
    )
    pair.take()  # the same GOAWAY from both


def test_a_bad_or_oversized_header_block_is_refused_by_both() -> None:
    pair = Pair()
    bad = HeadersFrame(1, b"\xbe", flags=["END_HEADERS", "END_STREAM"]).serialize()
    assert pair.feed(bad)[1].startswith("Error decoding header block")
    pair.take()  # the same GOAWAY
    pair = Pair()
    for server in pair.servers:
        server.decoder.max_header_list_size = 100
    pair.client.send_headers(1, [*REQUEST, (b"x-big", b"v" * 200)], end_stream=True)
    assert pair.feed(pair.client.data_to_send())[0] == "DenialOfServiceError"


def quietly(fn: Callable[[], Any]) -> None:
    """A client's move, or nothing where its own h2 refuses it."""
    with contextlib.suppress(Exception):
        fn()


@pytest.mark.parametrize("seed", range(8))
def test_open_streams_are_counted_and_closed_ones_forgotten_as_h2_does(seed: int) -> None:
    """Streams opened, pushed, ended, answered and reset in a random order: the open ones of
    either parity counted alike at every step, the closed ones forgotten in the same order
    (`same_state` compares `_closed_streams`, an ordered dict)."""
    rng = random.Random(seed)
    pair = Pair()
    for server in pair.servers:
        server.local_settings = Settings(client=False, initial_values={0x3: 8})
    client = pair.client
    next_id, pushed = 1, 2
    for _ in range(200):
        theirs, ours = pair.servers
        live = sorted(  # open at both ends (the client's h2 fails on frames after its reset)
            i
            for i, s in ours.streams.items()
            if not s.closed and i in client.streams and not client.streams[i].closed
        )
        action = rng.randrange(8) if live else 0
        sid = rng.choice(live) if live else 0
        if action in (2, 3) and sid % 2 == 0:
            action = 0  # the client ends or resets only its own requests
        if action <= 1 and ours.open_inbound_streams == 8:  # at the limit: none opened
            action, sid = 5, rng.choice(live or [i for i, s in ours.streams.items() if s.open])
        if action <= 1:  # a new request, ended or not
            client.send_headers(next_id, REQUEST, end_stream=action == 0)
            next_id += 2
        elif action == 2:
            quietly(partial(client.send_data, sid, b"", end_stream=True))
        elif action == 3:
            quietly(partial(client.reset_stream, sid, ErrorCodes.CANCEL))
        elif action == 4 and not ours.streams[sid].state_machine.headers_sent:
            pair.both("send_headers", sid, [(b":status", b"200")], end_stream=rng.random() < 0.7)
        elif action == 4:
            pair.both("send_headers", sid, [(b"x-trailer", b"1")], end_stream=True)
        elif action == 5:
            pair.both("reset_stream", sid, ErrorCodes.INTERNAL_ERROR)
        elif action == 6 and sid in client.streams and client.streams[sid].open:
            # a push: an even stream of ours, reserved then open
            pushing = pair.both("push_stream", sid, pushed, [*REQUEST[:3], (b":authority", b"a")])
            if pushing[0] == "ok":
                pair.both("send_headers", pushed, [(b":status", b"200")])
                pushed += 2
        else:
            if not ours.streams[sid].state_machine.headers_sent:
                pair.both("send_headers", sid, [(b":status", b"200")])
            pair.both("send_data", sid, b"x", end_stream=True)
        result = pair.feed(client.data_to_send())
        assert ours.state_machine.state != ConnectionState.CLOSED, result
        quietly(partial(client.receive_data, pair.take()))
        for remainder in (0, 1):
            pair.both("_open_streams", remainder)
        assert (
            ours.open_inbound_streams
            == theirs.open_inbound_streams
            == sum(s.open and i % 2 == 1 for i, s in theirs.streams.items())
        )
        assert ours.open_outbound_streams == theirs.open_outbound_streams
    assert next_id > 40  # streams of both kinds were made
    assert pushed > 4
    assert len(pair.servers[1]._closed_streams) >= 20  # ... closed, and forgotten


def test_streams_taken_out_by_other_code_are_counted_by_h2_s_walk() -> None:
    pair = Pair()
    for sid in (1, 3, 5, 7):
        pair.request(sid, end=False)
    for server in pair.servers:
        del server.streams[3]  # not h2's doing: the tally no longer knows the streams
    assert pair.both("_open_streams", 1) == ("ok", 3)
    pair.both("send_headers", 5, [(b":status", b"200")], end_stream=True)
    pair.client.send_data(5, b"", end_stream=True)
    pair.feed(pair.client.data_to_send())  # 5 closed: forgotten at the next count
    assert pair.both("_open_streams", 1) == ("ok", 2)
    pair.request(9)
    assert pair.both("_open_streams", 1) == ("ok", 3)


def test_a_stream_has_every_method_and_property_of_h2_s() -> None:
    """h2's connection calls these on its streams: each is compiled, or h2's own run on
    the compiled stream."""
    for name, member in vars(H2Stream).items():
        if callable(member) or isinstance(member, property):
            assert hasattr(WireStream, name), name
    pair = Pair()
    pair.request(1, end=False)
    theirs, ours = (s.streams[1] for s in pair.servers)
    for name in ("open", "closed", "closed_by", "inbound_flow_control_window"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert repr(ours) == repr(theirs).replace("H2Stream", "WireStream")
    # h2's own paths on the compiled stream: a body received, acknowledged, then a reset
    pair.client.send_data(1, b"body")
    pair.feed(pair.client.data_to_send())
    pair.both("acknowledge_received_data", 4, 1)
    pair.both("increment_flow_control_window", 100, stream_id=1)
    pair.both("reset_stream", 1)
    pair.take()
    assert ours.closed
    assert ours.closed_by == theirs.closed_by


def test_streams_closed_out_of_order_are_forgotten_in_the_order_they_were_made() -> None:
    pair = Pair()
    for sid in (1, 3, 5, 7):
        pair.request(sid)
    for sid in (5, 1, 7, 3):  # answered newest first, mostly
        pair.both("send_headers", sid, [(b":status", b"204")], end_stream=True)
    pair.request(9)  # forgets them (`same_state` compares the ordered `_closed_streams`)
    assert list(pair.servers[1]._closed_streams) == [1, 3, 5, 7]


def test_a_request_s_events_are_built_as_h2_builds_them() -> None:
    assert EVENTS_FAST  # this h2 still builds them as the fast path does
    for sid in (1, 3, 2**31 - 1):
        for ours, theirs in (
            (request_received(sid), RequestReceived(stream_id=sid)),
            (stream_ended(sid), StreamEnded(stream_id=sid)),
        ):
            assert type(ours) is type(theirs)
            assert list(vars(ours).items()) == list(vars(theirs).items())
            assert ours == theirs
            assert repr(ours) == repr(theirs)


@pytest.mark.parametrize("cut", [0, 5, 9, 20])
def test_a_whole_header_block_is_read_alike_when_split_over_reads_too_large_or_inside_another(
    cut: int,
) -> None:
    """The plain HEADERS frame (`PlainHeaders`, not hyperframe's object) and h2's agree:
    arriving in two reads, longer than the frame size allowed, or inside a held block."""
    pair = Pair()
    block = pair.client.encoder.encode(REQUEST)
    data = HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]).serialize()
    pair.feed(data[:cut])
    assert "RequestReceived" in " ".join(pair.feed(data[cut:])[1])
    pair.take()
    pair = Pair()
    big = pair.client.encoder.encode([*REQUEST, (b"x-big", b"v" * 30000)])
    too_large = HeadersFrame(1, big, flags=["END_HEADERS", "END_STREAM"]).serialize()
    assert pair.feed(too_large[: 9 + cut])[0] == "ok"  # the header alone: not yet read
    assert pair.feed(too_large[9 + cut :])[0] == "FrameTooLargeError"
    pair.take()
    pair = Pair()
    held = HeadersFrame(1, block[:5], flags=["END_STREAM"]).serialize()
    assert pair.feed(held + data.replace(b"\x00\x00\x00\x01", b"\x00\x00\x00\x03", 1)) == (
        "ProtocolError",
        "Invalid frame during header block.",
    )
