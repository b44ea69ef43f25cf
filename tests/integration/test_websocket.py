"""WebSocket through Portico: a real client and server library (websockets) on both ends."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection, serve

from fakes import connect, read_until_closed


class EchoServer:
    """A websockets echo server on a free port, in its own thread and loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.paths: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    async def _echo(self, ws: ServerConnection) -> None:
        self.paths.append(ws.request.path if ws.request else "")
        async for message in ws:
            await ws.send(message)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            async with serve(self._echo, "127.0.0.1", 0) as server:
                self.port = next(iter(server.sockets)).getsockname()[1]
                self.stop = asyncio.Event()
                self.ready.set()
                await self.stop.wait()

        self.loop.run_until_complete(main())
        self.loop.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


def _config(port: int, tunnel: str = "1h") -> str:
    return (
        "workers: 1\n"
        "listeners:\n"
        "  - name: web\n"
        "    bind: 127.0.0.1:0\n"
        "    default_pool: ws\n"
        f"    timeouts: {{tunnel: {tunnel}}}\n"
        "pools:\n"
        "  ws:\n"
        "    servers:\n"
        f"      - address: 127.0.0.1:{port}\n"
    )


def test_websocket_messages_flow_both_ways_through_portico(echo: EchoServer, portico) -> None:
    proxy = portico(_config(echo.port))

    async def talk() -> list[str | bytes]:
        got: list[str | bytes] = []
        async with ws_connect(f"ws://127.0.0.1:{proxy.port}/chat?room=1") as ws:
            for text in ("hello", "x" * 100_000, "bye"):
                await ws.send(text)
                got.append(await asyncio.wait_for(ws.recv(), 10))
            await ws.send(b"\x00\x01binary")
            got.append(await asyncio.wait_for(ws.recv(), 10))
        return got

    assert asyncio.run(talk()) == ["hello", "x" * 100_000, "bye", b"\x00\x01binary"]
    assert echo.paths == ["/chat?room=1"]


def test_idle_tunnel_is_closed_after_the_tunnel_timeout(echo: EchoServer, portico) -> None:
    proxy = portico(_config(echo.port, tunnel="300ms"))

    async def idle() -> float:
        loop = asyncio.get_running_loop()
        async with ws_connect(f"ws://127.0.0.1:{proxy.port}/", ping_interval=None) as ws:
            start = loop.time()
            with pytest.raises(Exception):  # noqa: B017,PT011 - the close is the behaviour
                await asyncio.wait_for(ws.recv(), 10)
            return loop.time() - start

    assert asyncio.run(idle()) < 5


def test_upgrade_refused_by_the_server_is_a_plain_response_then_close(backends, portico) -> None:
    plain = backends("plain")  # answers 200, not 101
    proxy = portico(_config(plain.port))
    with connect(proxy.port) as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b"plain")
    seen = plain.seen[0]
    assert seen.header("Upgrade") == "websocket"
    assert "upgrade" in (seen.header("Connection") or "").lower()


def test_open_websocket_survives_three_reloads(echo: EchoServer, portico) -> None:
    import signal

    proxy = portico(_config(echo.port))

    async def talk_across_reloads() -> list[str | bytes]:
        got: list[str | bytes] = []
        async with ws_connect(f"ws://127.0.0.1:{proxy.port}/live", ping_interval=None) as ws:
            for version in range(1, 4):
                proxy.proc.send_signal(signal.SIGHUP)
                line = await asyncio.to_thread(proxy.wait_stdout, "portico: reloaded")
                assert f"generation {version}" in line
                await ws.send(f"after reload {version}")
                got.append(await asyncio.wait_for(ws.recv(), 10))
        return got

    assert asyncio.run(talk_across_reloads()) == [f"after reload {v}" for v in (1, 2, 3)]
