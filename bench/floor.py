"""The floor: the least CPU a Python proxy on uvloop and httptools spends per keep-alive request.

Not Portico: about fifty lines that do less than any real proxy may. Each client connection gets
its own server connection (round robin at connect time), the request's bytes go to the server
unchanged (no header rewritten, no Host, no routing, no limits, no timeouts, no logs, no
statistics), and the response's bytes go back unchanged. httptools parses both directions only
as far as a proxy must to know where a message ends and what it asked for (the URL and the
header names and values are handed to Python, as llhttp's callbacks do for any user).

What it is for: issue #18 asks for Portico's small keep-alive requests at ≥ 0.65 x HAProxy's
requests per proxy CPU-second. This sets the ceiling any design on this stack can reach:
`bench/wakeups.py --floor` runs it beside Portico and HAProxy in the same cycles.

    .venv/bin/python bench/floor.py [--port 8088]      # serves until killed; origins on 9001-9003
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys

import httptools
import uvloop

ORIGINS = [("127.0.0.1", 9001), ("127.0.0.1", 9002), ("127.0.0.1", 9003)]


class Server(asyncio.Protocol):
    """The server side: response bytes go to the client as they come."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client.server_ready(self)

    def data_received(self, data: bytes) -> None:
        self.client.write(data)
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        pass

    def on_message_complete(self) -> None:
        pass


class Client(asyncio.Protocol):
    """The client side: a request's bytes go to this connection's server as they come."""

    def __init__(self, origins: itertools.cycle[tuple[str, int]]) -> None:
        self.origins = origins
        self.parser = httptools.HttpRequestParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""
        self.early: list[bytes] = []
        self.server: Server | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.write = self.transport.write
        host, port = next(self.origins)
        loop = asyncio.get_running_loop()
        self.connecting = loop.create_task(loop.create_connection(lambda: Server(self), host, port))

    def server_ready(self, server: Server) -> None:
        self.server = server
        if self.early:
            assert server.transport is not None
            server.transport.write(b"".join(self.early))

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)
        if self.server is not None and self.server.transport is not None:
            self.server.transport.write(data)
        else:
            self.early.append(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        self.headers = []

    def connection_lost(self, exc: Exception | None) -> None:
        if self.server is not None and self.server.transport is not None:
            self.server.transport.close()


async def serve(port: int) -> None:
    origins = itertools.cycle(ORIGINS)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(origins), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8088)
    args = parser.parse_args(argv)
    uvloop.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
