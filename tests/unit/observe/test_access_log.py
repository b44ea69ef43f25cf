"""Access log lines (exact NGINX `combined`, JSON) and the writer's batching, dropping, reopen."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import select
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from portico.observe import access_log
from portico.observe.access_log import (
    AccessLogWriter,
    AccessRecord,
    escape,
    format_combined,
    format_json,
    split_lines,
)

# Apache's documented example request: 10/Oct/2000:13:55:36 -0700, plus half a second.
START = 971_211_336.5


def record(**changes: Any) -> AccessRecord:
    base = AccessRecord(
        start=START,
        client_ip="127.0.0.1",
        method=b"GET",
        target=b"/apache_pb.gif",
        version="1.0",
        status=200,
        bytes_sent=2326 + 150,
        body_bytes_sent=2326,
        bytes_received=120,
        referer=b"http://www.example.com/start.html",
        user_agent=b"Mozilla/4.08 [en] (Win98; I ;Nav)",
        host=b"www.example.com",
        request_id=b"5f2b0c7e9d1a4b3c8e6f7a9b0c1d2e3f",
        listener="web",
        route="images",
        pool="static",
        backend="static-1",
        duration=0.0123,
        upstream_connect=0.0011,
        upstream_response=0.0104,
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def tz() -> Iterator[Callable[[str], None]]:
    """Set the process's time zone for a test (POSIX TZ strings: no tz database needed)."""
    saved = os.environ.get("TZ")

    def set_tz(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()
        access_log._reset_time_caches()

    yield set_tz
    if saved is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = saved
    time.tzset()
    access_log._reset_time_caches()


# A parser for combined lines, as a log shipper would have it: quoted fields end at the first
# unescaped quote, so any forged field or line shows up as a mismatch.
COMBINED = re.compile(
    rb'(?P<addr>\S+) - - \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) '
    rb'(?P<bytes>\d+) "(?P<referer>[^"]*)" "(?P<ua>[^"]*)" rid=(?P<rid>\S+) route=(?P<route>\S+) '
    rb"pool=(?P<pool>\S+) backend=(?P<backend>\S+) rt=(?P<rt>\S+) uct=(?P<uct>\S+) "
    rb"urt=(?P<urt>\S+)\n"
)


def parse(line: bytes) -> dict[str, bytes]:
    match = COMBINED.fullmatch(line)
    assert match is not None, line
    return match.groupdict()


# -- combined ----------------------------------------------------------------------------------


def test_combined_line_is_nginx_combined_then_portico_fields(tz: Callable[[str], None]) -> None:
    tz("MST+7")
    assert format_combined(record()) == (
        b'127.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 '
        b'"http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)" '
        b"rid=5f2b0c7e9d1a4b3c8e6f7a9b0c1d2e3f route=images pool=static backend=static-1 "
        b"rt=0.012 uct=0.001 urt=0.010\n"
    )


def test_combined_time_follows_the_local_zone_with_its_offset(tz: Callable[[str], None]) -> None:
    tz("UTC0")
    assert b"[10/Oct/2000:20:55:36 +0000]" in format_combined(record())
    tz("IST-5:30")
    assert b"[11/Oct/2000:02:25:36 +0530]" in format_combined(record())
    tz("NST+3:30")
    assert b"[10/Oct/2000:17:25:36 -0330]" in format_combined(record())


def test_combined_time_changes_with_the_second(tz: Callable[[str], None]) -> None:
    tz("UTC0")
    assert b"[10/Oct/2000:20:55:36 +0000]" in format_combined(record(start=START + 0.4))
    assert b"[10/Oct/2000:20:55:37 +0000]" in format_combined(record(start=START + 0.5))
    assert b"[01/Jan/2030:00:00:00 +0000]" in format_combined(record(start=1_893_456_000.0))


def test_combined_absent_values_are_dashes_and_empty_headers_stay_empty() -> None:
    line = format_combined(
        record(
            referer=None,
            user_agent=b"",
            request_id=b"",
            route=None,
            pool=None,
            backend=None,
            upstream_connect=None,
            upstream_response=None,
            status=0,
            body_bytes_sent=0,
        )
    )
    fields = parse(line)
    assert fields["referer"] == b"-"
    assert fields["ua"] == b""  # NGINX logs an empty header as "", an absent one as "-"
    assert fields["status"] == b"000"
    assert fields["bytes"] == b"0"
    for name in ("rid", "route", "pool", "backend", "uct", "urt"):
        assert fields[name] == b"-"


def test_combined_escapes_like_nginx_quotes_backslashes_controls_and_non_ascii() -> None:
    line = format_combined(
        record(
            target=b"/a\x7fb?q=%22",
            referer=b'say "hi"\\',
            user_agent="curl/8 \x1b[31mé\t".encode(),
        )
    )
    fields = parse(line)
    assert fields["request"] == b"GET /a\\x7Fb?q=%22 HTTP/1.0"
    assert fields["referer"] == b"say \\x22hi\\x22\\x5C"
    assert fields["ua"] == b"curl/8 \\x1B[31m\\xC3\\xA9\\x09"


def test_a_client_cannot_forge_a_line_or_a_field() -> None:
    forged = b'x" "y"\n10.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET /admin HTTP/1.1" 200 1 "-" "'
    line = format_combined(record(user_agent=forged, referer=b'\r\n"', request_id=b'a"b\\c'))
    assert line.count(b"\n") == 1
    assert line.endswith(b"\n")
    assert b"\r" not in line
    fields = parse(line)
    assert fields["addr"] == b"127.0.0.1"
    assert fields["ua"].startswith(b"x\\x22 \\x22y\\x22\\x0A10.0.0.1")
    assert fields["referer"] == b"\\x0D\\x0A\\x22"
    assert fields["rid"] == b"a\\x22b\\x5Cc"


def test_portico_fields_stay_one_token_each() -> None:
    fields = parse(format_combined(record(backend="web 1", route="r")))
    assert fields["backend"] == b"web\\x201"


def test_escape_leaves_safe_bytes_alone_and_is_the_same_object() -> None:
    value = b"/path?x=1&y=~!@#$%^*()[]{}|;:',.<>/"
    assert escape(value) is value
    assert escape(bytes(range(256))) == b"".join(
        b"\\x%02X" % b if b < 0x20 or b in (0x22, 0x5C) or b >= 0x7F else bytes([b])
        for b in range(256)
    )


# -- JSON --------------------------------------------------------------------------------------

JSON_KEYS = [
    "time",
    "client_ip",
    "method",
    "target",
    "version",
    "status",
    "bytes_sent",
    "body_bytes_sent",
    "bytes_received",
    "referer",
    "user_agent",
    "host",
    "request_id",
    "listener",
    "route",
    "pool",
    "backend",
    "duration",
    "upstream_connect",
    "upstream_response",
]


def test_json_line_round_trips_with_stable_keys_in_order(tz: Callable[[str], None]) -> None:
    tz("MST+7")  # the JSON time is UTC whatever the local zone
    line = format_json(record())
    assert line.endswith(b"}\n")
    assert line.count(b"\n") == 1
    obj = json.loads(line)
    assert list(obj) == JSON_KEYS
    assert [f.name for f in dataclasses.fields(AccessRecord)][1:] == JSON_KEYS[1:]
    assert obj == {
        "time": "2000-10-10T20:55:36.500Z",
        "client_ip": "127.0.0.1",
        "method": "GET",
        "target": "/apache_pb.gif",
        "version": "1.0",
        "status": 200,
        "bytes_sent": 2476,
        "body_bytes_sent": 2326,
        "bytes_received": 120,
        "referer": "http://www.example.com/start.html",
        "user_agent": "Mozilla/4.08 [en] (Win98; I ;Nav)",
        "host": "www.example.com",
        "request_id": "5f2b0c7e9d1a4b3c8e6f7a9b0c1d2e3f",
        "listener": "web",
        "route": "images",
        "pool": "static",
        "backend": "static-1",
        "duration": 0.012,
        "upstream_connect": 0.001,
        "upstream_response": 0.01,
    }


def test_json_absent_values_are_null() -> None:
    absent = record(
        referer=None,
        user_agent=None,
        host=None,
        route=None,
        pool=None,
        backend=None,
        upstream_connect=None,
        upstream_response=None,
    )
    obj = json.loads(format_json(absent))
    for key in ("referer", "user_agent", "host", "route", "pool", "backend"):
        assert obj[key] is None
    assert obj["upstream_connect"] is None
    assert obj["upstream_response"] is None


def test_json_keeps_utf8_escapes_controls_and_shows_invalid_bytes_as_text() -> None:
    line = format_json(record(user_agent='é "q"\n\x1b'.encode(), target=b"/\xff\xfe"))
    assert "é".encode() in line  # ensure_ascii=False: UTF-8 as is
    assert line.count(b"\n") == 1
    obj = json.loads(line)
    assert obj["user_agent"] == 'é "q"\n\x1b'
    assert obj["target"] == "/\\xff\\xfe"


def test_json_escapes_c1_controls_and_line_separators() -> None:
    agent = "a\u009b31m b\u2028c\u2029d é"
    line = format_json(record(user_agent=agent.encode()))
    for raw in ("\u009b", "\u2028", "\u2029"):
        assert raw.encode() not in line
    assert b"\\u009b" in line
    assert json.loads(line)["user_agent"] == agent


def test_json_time_rounds_to_the_millisecond_across_a_second() -> None:
    assert json.loads(format_json(record(start=START + 0.4996)))["time"] == (
        "2000-10-10T20:55:37.000Z"
    )
    assert json.loads(format_json(record(start=START - 0.5)))["time"] == (
        "2000-10-10T20:55:36.000Z"
    )
    assert json.loads(format_json(record(start=START + 0.123)))["time"] == (
        "2000-10-10T20:55:36.623Z"
    )


# -- the writer --------------------------------------------------------------------------------


class FakeSink:
    """Records each write; with `gate`, a write waits for it (a stalled disk)."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.gate = gate
        self.fail = fail
        self.writing = threading.Event()

    def write(self, data: bytes | memoryview, /) -> int:
        self.writing.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail:
            raise OSError(28, "No space left on device")
        self.writes.append(bytes(data))
        return len(data)

    def close(self) -> None:
        self.closed = True


class FakeHandle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """call_later that only records: the test runs the callbacks."""

    def __init__(self) -> None:
        self.timers: list[tuple[float, Callable[[], object], FakeHandle]] = []

    def call_later(self, delay: float, callback: Callable[[], object], /) -> FakeHandle:
        handle = FakeHandle()
        self.timers.append((delay, callback, handle))
        return handle


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def line(n: int, size: int = 20) -> bytes:
    text = b"line %d " % n
    return text + b"x" * (size - len(text) - 1) + b"\n"


def test_writer_writes_lines_in_order_with_one_write_per_flush() -> None:
    sink = FakeSink()
    writer = AccessLogWriter(None, opener=lambda: sink)
    for n in range(3):
        writer.append(line(n))
    writer.flush()
    writer.flush()  # nothing buffered: no write
    for n in range(3, 5):
        writer.append(line(n))
    writer.flush()
    assert writer.close()
    assert sink.writes == [line(0) + line(1) + line(2), line(3) + line(4)]
    assert sink.closed
    assert writer.dropped == 0
    assert writer.pending == 0


def test_writer_flushes_when_the_buffer_passes_its_size() -> None:
    sink = FakeSink()
    writer = AccessLogWriter(None, opener=lambda: sink, flush_size=50)
    for n in range(7):
        writer.append(line(n))  # 20 bytes each: a flush after every third
    assert writer.close()
    assert sink.writes == [
        line(0) + line(1) + line(2),
        line(3) + line(4) + line(5),
        line(6),  # by close
    ]


def test_writer_log_formats_in_its_format() -> None:
    sink = FakeSink()
    writer = AccessLogWriter(None, "json", opener=lambda: sink)
    writer.log(record())
    writer.close()
    assert sink.writes == [format_json(record())]


def test_writer_timer_flushes_every_interval_until_closed() -> None:
    sink = FakeSink()
    loop = FakeLoop()
    writer = AccessLogWriter(None, opener=lambda: sink, interval=0.1)
    writer.start(loop)
    writer.start(loop)  # once only
    assert [t[0] for t in loop.timers] == [0.1]
    writer.append(line(0))
    loop.timers[0][1]()
    assert len(loop.timers) == 2  # re-armed
    writer.append(line(1))
    loop.timers[1][1]()
    writer.close()
    assert loop.timers[2][2].cancelled
    assert sink.writes == [line(0), line(1)]


def test_a_stalled_writer_drops_and_counts_lines_and_warns_at_most_once_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = threading.Event()
    sink = FakeSink(gate)
    clock = FakeClock()
    writer = AccessLogWriter(
        None, opener=lambda: sink, flush_size=1, max_pending=3 * 20, clock=clock
    )
    caplog.set_level(logging.WARNING, logger="portico.access_log")
    for n in range(3):
        writer.append(line(n))  # flushed at once: 60 bytes pending, the first write stuck
    assert sink.writing.wait(10)
    assert writer.pending == 60
    assert writer.dropped == 0
    for n in range(3, 8):
        writer.append(line(n))  # the loop never waits: dropped instead
    assert writer.dropped == 5
    assert len(caplog.records) == 1
    clock.now += 1.0
    writer.append(line(8))
    assert writer.dropped == 6
    assert len(caplog.records) == 2
    # the lines dropped since the last warning, and all so far
    assert "dropped 5 lines (6 in all)" in caplog.records[1].getMessage()
    gate.set()
    assert writer.close()
    assert sink.writes == [line(0), line(1), line(2)]


def test_drops_left_unreported_are_reported_by_a_later_flush(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = threading.Event()
    sink = FakeSink(gate)
    clock = FakeClock()
    writer = AccessLogWriter(None, opener=lambda: sink, flush_size=1, max_pending=20, clock=clock)
    caplog.set_level(logging.WARNING, logger="portico.access_log")
    writer.append(line(0))
    writer.append(line(1))
    writer.append(line(2))
    assert len(caplog.records) == 1  # the second drop waits for the next second
    clock.now += 1.0
    writer.flush()  # the timer's flush, with nothing buffered
    assert len(caplog.records) == 2
    assert "dropped 1 lines (2 in all)" in caplog.records[1].getMessage()
    gate.set()
    writer.close()


def test_a_failed_write_is_counted_and_logged_and_writing_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = FakeSink(fail=True)
    writer = AccessLogWriter(None, opener=lambda: sink)
    caplog.set_level(logging.ERROR, logger="portico.access_log")
    writer.append(line(0))
    writer.append(line(1))
    writer.flush()
    writer.append(line(2))
    writer.flush()
    assert writer.close()
    assert writer.dropped == 3
    assert writer.pending == 0
    errors = [r for r in caplog.records if "write failed" in r.getMessage()]
    assert len(errors) == 1  # at most one a second


def test_close_flushes_and_lines_after_close_are_dropped() -> None:
    sink = FakeSink()
    writer = AccessLogWriter(None, opener=lambda: sink)
    writer.append(line(0))
    assert writer.close()
    writer.append(line(1))
    writer.flush()
    assert writer.close()  # twice is fine
    assert sink.writes == [line(0)]
    assert writer.dropped == 1


def test_reopen_sends_earlier_lines_to_the_old_sink_and_later_ones_to_the_new() -> None:
    sinks = [FakeSink(), FakeSink()]
    opened = iter(sinks)
    writer = AccessLogWriter(None, opener=lambda: next(opened))
    writer.append(line(0))
    writer.reopen()
    writer.append(line(1))
    writer.close()
    assert sinks[0].writes == [line(0)]
    assert sinks[0].closed
    assert sinks[1].writes == [line(1)]
    assert sinks[1].closed


def test_a_failed_reopen_keeps_the_old_sink(caplog: pytest.LogCaptureFixture) -> None:
    sink = FakeSink()
    calls = 0

    def opener() -> FakeSink:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise PermissionError(13, "Permission denied")
        return sink

    writer = AccessLogWriter(None, opener=opener)
    caplog.set_level(logging.ERROR, logger="portico.access_log")
    writer.reopen()
    writer.append(line(0))
    writer.close()
    assert calls == 2
    assert sink.writes == [line(0)]
    assert any("cannot reopen" in r.getMessage() for r in caplog.records)


def test_file_writer_appends_and_reopens_after_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_bytes(b"earlier\n")
    writer = AccessLogWriter(str(path))
    writer.append(line(0))
    writer.flush()
    path.rename(tmp_path / "access.log.1")  # logrotate
    writer.reopen()
    writer.append(line(1))
    assert writer.close()
    assert (tmp_path / "access.log.1").read_bytes() == b"earlier\n" + line(0)
    assert path.read_bytes() == line(1)


def test_a_path_that_cannot_be_opened_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        AccessLogWriter(str(tmp_path / "missing" / "access.log"))


@pytest.mark.parametrize("path", [None, "-"])
def test_stdout_writer_writes_to_descriptor_1(
    path: str | None, capfd: pytest.CaptureFixture[str]
) -> None:
    writer = AccessLogWriter(path, "json")
    writer.log(record())
    assert writer.close()
    assert capfd.readouterr().out.encode() == format_json(record())


class PipeSink:
    """The write end of a real pipe, recording the size of each write."""

    def __init__(self, fd: int) -> None:
        self.file = open(fd, "wb", buffering=0, closefd=False)  # noqa: SIM115
        self.writes: list[bytes] = []

    def fileno(self) -> int:
        return self.file.fileno()

    def write(self, data: bytes | memoryview, /) -> int | None:
        self.writes.append(bytes(data))
        return self.file.write(data)

    def close(self) -> None:
        self.file.close()


def test_pipe_writes_are_whole_lines_of_at_most_pipe_buf_each() -> None:
    read_fd, write_fd = os.pipe()
    try:
        sink = PipeSink(write_fd)
        writer = AccessLogWriter(None, opener=lambda: sink)
        lines = [line(n, 100 + n % 50) for n in range(200)]  # about 25 KiB: fits the pipe
        for text in lines:
            writer.append(text)
        writer.flush()
        assert writer.close()
        os.close(write_fd)
        write_fd = -1
        data = b""
        while chunk := os.read(read_fd, 65536):
            data += chunk
        assert data == b"".join(lines)
        assert len(sink.writes) > 1
        assert all(len(w) <= select.PIPE_BUF and w.endswith(b"\n") for w in sink.writes)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def test_split_lines_cuts_after_newlines_within_the_limit() -> None:
    assert [bytes(p) for p in split_lines(b"aa\nbb\ncc\n", 6)] == [b"aa\nbb\n", b"cc\n"]
    assert [bytes(p) for p in split_lines(b"aa\nbb\n", 6)] == [b"aa\nbb\n"]
    # a line longer than the limit goes alone
    assert [bytes(p) for p in split_lines(b"a\n" + b"x" * 10 + b"\nb\n", 4)] == [
        b"a\n",
        b"x" * 10 + b"\n",
        b"b\n",
    ]
    assert [bytes(p) for p in split_lines(b"x" * 10, 4)] == [b"x" * 10]


def test_formatting_and_buffering_a_line_is_cheap() -> None:
    sink = FakeSink()
    writer = AccessLogWriter(None, opener=lambda: sink)
    rec = record()
    count = 20_000
    started = time.perf_counter()
    for _ in range(count):
        writer.log(rec)
    elapsed = time.perf_counter() - started
    assert writer.close()
    assert b"".join(sink.writes) == format_combined(rec) * count
    assert elapsed / count < 50e-6  # about 2 µs; a bound that survives coverage and slow CI
