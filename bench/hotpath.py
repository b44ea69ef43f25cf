"""Python cost of one proxied request, without sockets: the hot path in isolation.

Drives a real ClientConnection and UpstreamConnection through fake transports: a keep-alive
client request in, the request head out to a pooled server connection, a small response in,
the response out. Prints microseconds per request (CPU time of this process), so a change to
the hot path can be judged in seconds without the noise of a loaded machine.

    .venv/bin/python bench/hotpath.py [--profile] [--requests N] [--plugin] [--route | --rewrite]
                                      [--close] [--body N] [--vary | --unique]

`--plugin` puts one do-nothing plugin filter (`Noop` below: an `on_request` that returns
None) on the listener: the difference is what a plugin filter costs a request. `--close`: a new
client connection per request (`Connection: close`): its protocol object made, connected, its
request answered and the connection lost, as in bench/run's close row (the loop's own transport
and accept(2) are not in it). The loop never runs here, so what a connection leaves for it to
free stays: until each connection stopped making a loop timer of its own (timers.Timers), the
cancelled TimerHandles piled up and their garbage collection inflated the `--close` count.
`--body N`: the response's body is N bytes instead of 5 (bench/run's /16k row: 16384), read
by the server connection in one piece with its head, as a loopback origin's usually arrives.
`--vary`: every request and response differs from the one before (two targets, two servers'
heads, alternating): the memos of repeated heads (a client's request read again, the head sent
to a server, a server's response head and the client head made of it) never hit, and what
they cost then is in the count.
`--unique`: every request as bench/configs/vary.lua makes them (bench/run's "small, varied
requests" row): a counter in the query and in an `X-Request-Id` field, so no request repeats
any before it, while the server's response repeats as a real origin's does (its head memo
hits): what a client's new request costs, alone.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import pstats
import time
from pathlib import Path
from typing import Any

from portico.config.load import parse_config
from portico.plugins import Filter, Request, Response
from portico.upstreams.connections import UpstreamConnection
from portico.worker import Worker

CONFIG = """
workers: 1
listeners:
  - name: web
    bind: 127.0.0.1:0
    default_pool: app
pools:
  app:
    servers:
      - address: 127.0.0.1:9001
      - address: 127.0.0.1:9002
      - address: 127.0.0.1:9003
"""
PLUGIN = """    filters:
      - use: hotpath:Noop
"""
# `--route`: one route (the request matches it) that only chooses a pool; `--rewrite`: the same
# route with a path rewrite (/small to /small: the same target): its route_actions stage runs
ROUTE = """    routes:
      - match: {path: /small}
        pool: app
"""
REWRITE = ROUTE + "        strip_prefix: /small\n        replace_prefix: /small\n"
REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
# `--unique`: made per request by one %-format (its cost, ~1% of a request's, is in the count)
UNIQUE = b"GET /small?n=%d HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nX-Request-Id: %d\r\n\r\n"
CLOSE_REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: close\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 12:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 5\r\nConnection: keep-alive\r\n"
    b"X-Backend: 9001\r\n\r\nhello"
)


def sized_response(size: int) -> bytes:
    """RESPONSE with a body of `size` bytes (`--body`)."""
    head = RESPONSE[: RESPONSE.index(b"\r\n\r\n") + 4]
    return head.replace(b"Content-Length: 5", b"Content-Length: %d" % size) + b"x" * size


class Noop(Filter):
    """A plugin filter that lets every request go on, untouched."""

    def on_request(self, request: Request) -> Response | None:
        return None


class FakeTransport(asyncio.Transport):
    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        super().__init__()
        self.peer = peer
        self.written = 0
        self.last: Any = b""
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def write(self, data: Any) -> None:
        self.written += len(data)
        self.last = data

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.write(part)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # (what ClientConnection.connection_made sets: nothing is buffered here)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--plugin", action="store_true", help="one do-nothing plugin filter")
    parser.add_argument("--route", action="store_true", help="one route without actions")
    parser.add_argument("--rewrite", action="store_true", help="one route with a path rewrite")
    parser.add_argument("--close", action="store_true", help="a new connection per request")
    parser.add_argument("--body", type=int, default=0, help="N-byte response bodies, not 5")
    parser.add_argument("--vary", action="store_true", help="no head repeats the one before")
    parser.add_argument("--unique", action="store_true", help="vary.lua's requests, one response")
    args = parser.parse_args()
    response = sized_response(args.body) if args.body else RESPONSE
    requests = [REQUEST]
    responses = [response]
    if args.vary:
        requests.append(REQUEST.replace(b"/small", b"/smal2"))
        responses.append(response.replace(b"X-Backend: 9001", b"X-Backend: 9002"))
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    text = CONFIG
    if args.plugin:
        here = Path(__file__).resolve().parent
        text = CONFIG.replace("    default_pool: app\n", "    default_pool: app\n" + PLUGIN)
        text = f"plugins:\n  path: ['{here}']\n" + text
    if args.route or args.rewrite:
        route = REWRITE if args.rewrite else ROUTE
        text = text.replace("    default_pool: app\n", "    default_pool: app\n" + route)
    config = parse_config(text, "<hotpath>")
    worker = Worker(loop, config, {})
    settings = worker.settings["web"]
    from portico.listeners.http import ClientConnection

    client = ClientConnection(settings, worker.context)
    client.connection_made(FakeTransport())
    uppers = []
    for backend in settings.pool.backends:
        conn = UpstreamConnection(backend, 30.0, 30.0)
        conn.transport = FakeTransport(("127.0.0.1", 9001))
        conn._deadline = None  # no timers without a running loop
        backend.put_idle(conn, 0.0)
        uppers.append(conn)

    def run(n: int) -> None:
        kinds = len(requests)
        for i in range(n):
            client.data_received(requests[i % kinds])
            exchange = client.active
            assert exchange is not None
            upstream = exchange._upstream
            assert upstream is not None
            upstream.data_received(responses[i % kinds])

    def run_close(n: int) -> None:
        for _ in range(n):
            conn = ClientConnection(settings, worker.context)
            transport = FakeTransport()
            conn.connection_made(transport)
            conn.data_received(CLOSE_REQUEST)
            exchange = conn.active
            assert exchange is not None
            upstream = exchange._upstream
            assert upstream is not None
            upstream.data_received(response)
            assert transport.closing
            conn.connection_lost(None)

    serial = itertools.count()  # the counter, never reset (warm-up included)

    def run_unique(n: int) -> None:
        for _ in range(n):
            k = next(serial)
            client.data_received(UNIQUE % (k, k))
            exchange = client.active
            assert exchange is not None
            upstream = exchange._upstream
            assert upstream is not None
            upstream.data_received(response)

    if args.close:
        run = run_close
    elif args.unique:
        run = run_unique
    run(1000)
    if not args.close:
        assert bytes(client.transport.last).endswith(response[-5:])  # type: ignore[union-attr]
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run(args.requests)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return
    start = time.process_time()
    run(args.requests)
    elapsed = time.process_time() - start
    print(f"{elapsed / args.requests * 1e6:.2f} us of Python per proxied request")


if __name__ == "__main__":
    main()
