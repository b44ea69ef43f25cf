"""Python cost of accepting one client connection, in-process over loopback: the Acceptor's
accept(2), its hand-over to the loop's transport, a protocol that answers one request and
closes. For instruction counts of the accept path (bench/run's `Connection: close` row),
deterministic under `valgrind --tool=callgrind` whatever the machine's load: run it with two
counts and take the difference per connection.

    .venv/bin/python bench/accept_path.py [--connections N]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time

from portico.listeners.acceptor import Acceptor


class Answer(asyncio.Protocol):
    """Answers the first bytes it reads with one byte, then closes."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"x")
        self.transport.close()


async def connect_many(loop: asyncio.AbstractEventLoop, port: int, count: int) -> None:
    for _ in range(count):
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, ("127.0.0.1", port))
        await loop.sock_sendall(client, b"GET / HTTP/1.1\r\n\r\n")
        while await loop.sock_recv(client, 16):
            pass
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args()
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    acceptor = Acceptor(loop, listener, "bench", lambda _peer: Answer())
    acceptor.start()
    port = listener.getsockname()[1]
    loop.run_until_complete(connect_many(loop, port, 100))
    start = time.process_time()
    loop.run_until_complete(connect_many(loop, port, args.connections))
    elapsed = time.process_time() - start
    acceptor.close()
    loop.close()
    print(f"{elapsed / args.connections * 1e6:.1f} us per connection (both ends, in one process)")


if __name__ == "__main__":
    main()
