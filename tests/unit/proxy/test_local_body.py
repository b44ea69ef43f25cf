"""Streaming a local answer (portico.proxy.local_body): what the framer is told for each kind
of body, back-pressure between reads, failures, and sendfile(2) on a real socket."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import uvloop

from portico.http.headers import Header
from portico.pipeline import TransformChain
from portico.pipeline.sources import ChunksBody, FileBody
from portico.proxy.framing import BODY_NONE, BODY_UNKNOWN, ResponseFramer
from portico.proxy.local_body import send_file, stream_local


class Framer:
    """What stream_local calls on a `ResponseFramer` (a compiled class in the compiled build:
    not subclassed here), recorded."""

    def __init__(self) -> None:
        self.keep = True
        self.calls: list[tuple[object, ...]] = []

    def send_response_head(
        self,
        status: int,
        reason: bytes,
        headers: list[Header],
        length: int,
        coding: bytes | None,
        keep: bool,
    ) -> int:
        self.calls.append(("head", status, list(headers), length))
        return 10

    def send_body(self, data: bytes | memoryview) -> None:
        self.calls.append(("body", bytes(data)))

    def send_end(self) -> None:
        self.calls.append(("end",))

    def cancel_response_head(self) -> None:
        self.calls.append(("cancel",))

    def raw_transport(self) -> asyncio.Transport | None:
        return None


class Exchange:
    def __init__(self, method: bytes = b"GET") -> None:
        self.method = method
        self.finished = False
        self.waits = 0
        self.started = False
        self.result: tuple[object, ...] | None = None

    async def wait_writable(self) -> None:
        self.waits += 1

    def local_started(self) -> None:
        self.started = True

    def local_sent(self, head_len: int, sent: int, keep: bool) -> None:
        self.result = ("sent", head_len, sent, keep)

    def local_failed(self, head_len: int, sent: int, error: str) -> None:
        self.result = ("failed", sent, error)


class Upper:
    def feed(self, data: bytes | memoryview) -> bytes:
        return bytes(data).upper()

    def flush(self) -> bytes:
        return b""

    def end(self) -> bytes:
        return b"!"

    def abort(self) -> None:
        pass


class Failing(Upper):
    def feed(self, data: bytes | memoryview) -> bytes:
        raise RuntimeError("broken")


async def pieces(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


def run(exchange: Exchange, framer: Framer, **kwargs: object) -> None:
    defaults: dict[str, object] = {
        "pipe": None,
        "status": 200,
        "reason": b"OK",
        "headers": [(b"Content-Length", b"3")],
        "body": b"abc",
        "source": None,
        "keep": True,
    }
    defaults.update(kwargs)
    asyncio.run(
        stream_local(
            exchange,
            cast(ResponseFramer, framer),
            defaults["pipe"],  # type: ignore[arg-type]
            defaults["status"],  # type: ignore[arg-type]
            defaults["reason"],  # type: ignore[arg-type]
            defaults["headers"],  # type: ignore[arg-type]
            defaults["body"],  # type: ignore[arg-type]
            defaults["source"],  # type: ignore[arg-type]
            defaults["keep"],  # type: ignore[arg-type]
            5.0,
        )
    )


def test_a_source_is_read_between_waits_for_writability_and_closed() -> None:
    exchange, framer = Exchange(), Framer()
    source = ChunksBody(pieces(b"a", b"b"))
    run(exchange, framer, headers=[], body=b"", source=source)
    assert framer.calls == [
        ("head", 200, [], BODY_UNKNOWN),
        ("body", b"a"),
        ("body", b"b"),
        ("end",),
    ]
    assert exchange.waits == 3  # before each read, the last one finding the end
    assert exchange.result == ("sent", 10, 2, True)


def test_a_transform_drops_the_length_and_adds_its_end() -> None:
    exchange, framer = Exchange(), Framer()
    run(exchange, framer, pipe=TransformChain([Upper()]))
    assert framer.calls == [
        ("head", 200, [], BODY_UNKNOWN),
        ("body", b"ABC"),
        ("body", b"!"),
        ("end",),
    ]


def test_head_gets_the_length_and_no_body(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"12345")
    exchange, framer = Exchange(b"HEAD"), Framer()
    run(exchange, framer, headers=[], body=b"", source=FileBody(tmp_path / "f"))
    assert framer.calls == [("head", 200, [(b"Content-Length", b"5")], BODY_NONE), ("end",)]


def test_a_failing_transform_is_reported_before_anything_is_sent() -> None:
    exchange, framer = Exchange(), Framer()
    run(exchange, framer, pipe=TransformChain([Failing()]))
    assert exchange.result is not None
    assert exchange.result[:2] == ("failed", 0)
    assert "Failing failed in feed" in str(exchange.result[2])


def test_a_client_gone_mid_stream_stops_reading_the_source() -> None:
    exchange, framer = Exchange(), Framer()

    async def gone_after_first() -> AsyncIterator[bytes]:
        yield b"first"
        exchange.finished = True
        yield b"never sent"

    run(exchange, framer, headers=[], body=b"", source=ChunksBody(gone_after_first()))
    assert ("body", b"never sent") not in framer.calls
    assert exchange.result is None  # the exchange already ended (client_gone)


def test_send_file_sends_a_file_range_to_a_slow_reader(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    path = tmp_path / "blob"
    path.write_bytes(data)
    exchange = Exchange()

    async def scenario() -> tuple[bytes, int]:
        sent: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                tcp = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
                tcp.write(b"HEAD")  # buffered bytes go first

                async def go() -> None:
                    body = FileBody(path, 100)
                    span = body.file_range()
                    assert span is not None
                    fd, offset, count = span
                    sent.set_result(await send_file(tcp, fd, offset, count, exchange, 5.0))
                    body.close()
                    tcp.close()

                asyncio.get_running_loop().create_task(go())

        server = await asyncio.get_running_loop().create_server(Server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
        got = bytearray()
        while chunk := await reader.read(1 << 16):
            got += chunk
            await asyncio.sleep(0)  # a reader slower than the sender: sendfile meets EAGAIN
        writer.close()
        server.close()
        return bytes(got), await sent

    got, sent = uvloop.run(scenario())
    assert sent == len(data) - 100
    assert got == b"HEAD" + data[100:]
