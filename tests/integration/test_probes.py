"""Active health probes against real loopback servers: healthy, unhealthy and misbehaving ones.

Well-behaved answers come from `FakeBackend`s (a thread of their own); misbehaviour that needs
exact control of the bytes and of when they stop (a body that never ends, a head that never
ends, silence) comes from small asyncio servers in the test's own event loop, which also tell
when the probe hung up. Every probe runs under `asyncio.run`; nothing waits for a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from fakes import FakeBackend, Reply
from portico.health.probes import MAX_HEAD, HttpProbe, ProbeResult, TcpProbe, probe

MakeBackend = Callable[..., FakeBackend]
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run_probe(
    port: int, check: HttpProbe | TcpProbe | None = None, timeout: float = 5.0
) -> ProbeResult:
    return asyncio.run(probe("127.0.0.1", port, check or HttpProbe(), timeout))


@contextlib.asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A loopback server running `script` on each connection, in the running loop. Yields its
    port and an event set once a script ended: after the probe hung up, for scripts that read
    until EOF."""
    ended = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        except ConnectionError:
            pass  # the probe hung up on unread bytes (RST): what stopping early looks like
        finally:
            writer.close()
            ended.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1], ended


async def read_until_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


def endless_body(prefix: bytes) -> Script:
    """Announce a 1 GiB body, send `prefix` of it, then nothing until the probe hangs up: a
    probe that tried to read the whole body could only time out."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1 << 30) + prefix)
        await writer.drain()
        await read_until_eof(reader)

    return script


def probe_script(
    script: Script, check: HttpProbe | TcpProbe, timeout: float = 5.0
) -> tuple[ProbeResult, float]:
    """Probe a `scripted` server; the verdict and the seconds it took. Also checks that the
    probe closed its connection (the script, reading until EOF, ended)."""

    async def main() -> tuple[ProbeResult, float]:
        async with scripted(script) as (port, ended):
            started = time.monotonic()
            result = await probe("127.0.0.1", port, check, timeout)
            took = time.monotonic() - started
            await asyncio.wait_for(ended.wait(), 5.0)
            return result, took

    return asyncio.run(main())


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port bound but not listening: connecting is refused. Kept bound for the test
    so that no other socket takes it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port listening but never accepting: the kernel completes the handshake and
    takes the request, and nothing ever answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


# -- the verdict on well-formed answers ---------------------------------------------------------


def test_healthy_server_passes_and_sees_a_plain_close_request(backends: MakeBackend) -> None:
    backend = backends("a")
    assert run_probe(backend.port) == ProbeResult(True, "HTTP 200")
    [seen] = backend.seen
    assert (seen.method, seen.target, seen.version) == ("GET", "/", "1.1")
    assert seen.header("Host") == f"127.0.0.1:{backend.port}"
    assert seen.header("User-Agent") == "portico-health"
    assert seen.header("Connection") == "close"
    assert seen.body == b""


def test_unavailable_server_fails(backends: MakeBackend) -> None:
    backend = backends("a", lambda seen: Reply(status=503, reason="Unavailable"))
    assert run_probe(backend.port) == ProbeResult(False, "status 503 not in 200-399")


@pytest.mark.parametrize(
    ("status", "ok"), [(203, False), (204, True), (250, True), (302, True), (303, False)]
)
def test_status_range_is_inclusive(backends: MakeBackend, status: int, ok: bool) -> None:
    backend = backends("a", lambda seen: Reply(status=status))
    result = run_probe(backend.port, HttpProbe(expect_status=(204, 302)))
    assert result.ok is ok
    assert result.detail == (f"HTTP {status}" if ok else f"status {status} not in 204-302")


def test_interim_responses_are_skipped(backends: MakeBackend) -> None:
    backend = backends("a", lambda seen: Reply(interim=[100, 103], body=b"ready"))
    assert run_probe(backend.port, HttpProbe(expect_body=b"ready")) == ProbeResult(True, "HTTP 200")


def test_configured_method_path_and_host_are_sent(backends: MakeBackend) -> None:
    backend = backends("a")
    check = HttpProbe(method=b"HEAD", path=b"/healthz?deep=1", host=b"app.example:8443")
    assert run_probe(backend.port, check) == ProbeResult(True, "HTTP 200")
    [seen] = backend.seen
    assert (seen.method, seen.target) == ("HEAD", "/healthz?deep=1")
    assert seen.header("Host") == "app.example:8443"


@pytest.mark.parametrize(
    ("framing", "body"),
    [
        ("length", [b"status: OK\n"]),
        ("chunked", [b"status: O", b"K\n"]),  # split across chunks: found all the same
        ("close", [b"status: ", b"OK\n"]),  # ends when the server closes
    ],
)
def test_body_with_the_substring_passes(
    backends: MakeBackend, framing: str, body: list[bytes]
) -> None:
    backend = backends("a", lambda seen: Reply(body=body, framing=framing))
    assert run_probe(backend.port, HttpProbe(expect_body=b"OK")) == ProbeResult(True, "HTTP 200")


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_body_without_the_substring_fails(backends: MakeBackend, framing: str) -> None:
    backend = backends("a", lambda seen: Reply(body=[b"status: ", b"degraded"], framing=framing))
    result = run_probe(backend.port, HttpProbe(expect_body=b"OK"))
    assert result == ProbeResult(False, "body lacks 'OK'")


@pytest.mark.parametrize(("max_body", "ok"), [(12, True), (11, False)])
def test_only_the_first_max_body_bytes_count(
    backends: MakeBackend, max_body: int, ok: bool
) -> None:
    backend = backends("a", lambda seen: Reply(body=b"0123456789OK and more"))
    result = run_probe(backend.port, HttpProbe(expect_body=b"OK", max_body=max_body))
    assert result.ok is ok


def test_expected_body_with_a_bad_status_fails_on_the_status(backends: MakeBackend) -> None:
    backend = backends("a", lambda seen: Reply(status=500, body=b"OK"))
    result = run_probe(backend.port, HttpProbe(expect_body=b"OK"))
    assert result == ProbeResult(False, "status 500 not in 200-399")


# -- a huge body is not read ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "prefix", "expected"),
    [
        (HttpProbe(), b"x", ProbeResult(True, "HTTP 200")),
        (HttpProbe(expect_body=b"OK"), b"all OK", ProbeResult(True, "HTTP 200")),
        # the substring comes, but only after max_body bytes
        (
            HttpProbe(expect_body=b"OK", max_body=1000),
            b"x" * 2000 + b"OK",
            ProbeResult(False, "body lacks 'OK'"),
        ),
        (
            HttpProbe(expect_body=b"OK"),
            b"x" * (HttpProbe().max_body + 1),
            ProbeResult(False, "body lacks 'OK'"),
        ),
    ],
)
def test_probe_decides_without_reading_a_huge_body(
    check: HttpProbe, prefix: bytes, expected: ProbeResult
) -> None:
    result, took = probe_script(endless_body(prefix), check, timeout=5.0)
    assert result == expected
    assert took < 4.0  # decided, not timed out


# -- failures ------------------------------------------------------------------------------------


def test_refused_connection_fails(refused_port: int) -> None:
    assert run_probe(refused_port) == ProbeResult(False, "connect refused")


def test_server_that_never_answers_fails_within_the_timeout(silent_port: int) -> None:
    started = time.monotonic()
    result = run_probe(silent_port, timeout=0.5)
    assert time.monotonic() - started < 1.0
    assert result == ProbeResult(False, "timed out after 0.5s waiting for a response")


def test_server_that_reads_and_never_answers_is_hung_up_on() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_until_eof(reader)

    result, took = probe_script(script, HttpProbe(), timeout=0.5)
    assert took < 1.0
    assert result == ProbeResult(False, "timed out after 0.5s waiting for a response")


def test_body_that_stalls_times_out() -> None:
    result, took = probe_script(endless_body(b"no"), HttpProbe(expect_body=b"OK"), timeout=0.5)
    assert took < 1.0
    assert result == ProbeResult(False, "timed out after 0.5s reading the body")


def test_garbage_answer_is_malformed(backends: MakeBackend) -> None:
    backend = backends("a", lambda seen: Reply(raw=b"SSH-2.0-OpenSSH_9.6\r\n"))
    result = run_probe(backend.port)
    assert not result.ok
    assert result.detail.startswith("malformed response: ")


@pytest.mark.parametrize(
    "reply",
    [
        Reply(action="close"),  # reads the request, closes without a byte
        Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Le"),  # closes mid-head
    ],
)
def test_close_before_a_complete_head_fails(backends: MakeBackend, reply: Reply) -> None:
    backend = backends("a", lambda seen: reply)
    assert run_probe(backend.port) == ProbeResult(False, "closed before a response")


def test_close_mid_body_fails(backends: MakeBackend) -> None:
    backend = backends("a", lambda seen: Reply(body=[b"still ", b"OK"], action="truncate"))
    result = run_probe(backend.port, HttpProbe(expect_body=b"OK"))
    assert result == ProbeResult(False, "closed mid-body")


def test_endless_head_is_refused() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: 0123456789abcdef\r\n" * (MAX_HEAD // 10))
        await writer.drain()
        await read_until_eof(reader)

    result, _ = probe_script(script, HttpProbe())
    assert result == ProbeResult(False, f"malformed response: head larger than {MAX_HEAD} bytes")


def test_probe_never_raises() -> None:
    result = run_probe(70000)  # not a port: the socket layer raises OverflowError
    assert not result.ok
    assert "OverflowError" in result.detail


def test_a_caller_can_still_cancel_a_probe(silent_port: int) -> None:
    """Cancellation is not a probe failure: a control plane shutting down must stop probes."""

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(probe("127.0.0.1", silent_port, HttpProbe(), 30.0), 0.2)

    asyncio.run(main())


# -- TCP ---------------------------------------------------------------------------------------


def test_tcp_probe_passes_on_connect_and_hangs_up() -> None:
    received: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read())

    result, _ = probe_script(script, TcpProbe())
    assert result == ProbeResult(True, "connected")
    assert received == [b""]  # nothing sent, and the connection closed


def test_tcp_probe_fails_when_refused(refused_port: int) -> None:
    assert run_probe(refused_port, TcpProbe()) == ProbeResult(False, "connect refused")


# -- what a probe may send -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"path": b"/ HTTP/1.1\r\nX-Injected: 1\r\n"},
        {"path": b""},
        {"host": b"a\r\nb"},
        {"method": b"GE T"},
        {"expect_status": (400, 200)},
        {"expect_body": b""},
        {"max_body": -1},
    ],
)
def test_http_probe_refuses_what_would_corrupt_the_request(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (each field has its own message)
        HttpProbe(**fields)  # type: ignore[arg-type]
