"""Demo backends: small HTTP servers that say who they are.

Each answers every request with `X-Backend: <name>` and a body naming itself, so a user (or a
test) sees which server Portico chose. `/slow?ms=N` waits N ms first; `/bytes?n=N` sends N
bytes. Never meant to face real traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import cast
from urllib.parse import parse_qs, urlsplit

import httptools


class DemoHandler(asyncio.Protocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        keep_alive = self.parser.should_keep_alive()
        method = self.parser.get_method()
        asyncio.get_running_loop().create_task(self.respond(self.url, method, keep_alive))

    async def respond(self, url: bytes, method: bytes, keep_alive: bool) -> None:
        parts = urlsplit(url.decode("latin-1"))
        query = parse_qs(parts.query)
        if parts.path == "/slow":
            await asyncio.sleep(int(query.get("ms", ["100"])[0]) / 1000)
        if parts.path == "/bytes":
            body = b"x" * int(query.get("n", ["1024"])[0])
        else:
            body = f"Hello from {self.name} ({method.decode()} {parts.path})\n".encode()
        head = (
            f"HTTP/1.1 200 OK\r\nX-Backend: {self.name}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"{'' if keep_alive else 'Connection: close' + chr(13) + chr(10)}\r\n"
        ).encode()
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(head if method == b"HEAD" else head + body)
        if not keep_alive:
            self.transport.close()


async def serve(ports: list[int], host: str = "127.0.0.1") -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for index, port in enumerate(ports, start=1):
        name = f"backend-{index}"
        servers.append(
            await loop.create_server(lambda name=name: DemoHandler(name), host, port)  # type: ignore[misc]
        )
        print(f"demo backend {name} on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="portico-demo-backends")
    parser.add_argument("ports", nargs="+", type=int)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.ports, args.host))
    return 0


if __name__ == "__main__":
    sys.exit(main())
