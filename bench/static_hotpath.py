"""Python cost of one static small-file request, without sockets: the static path in isolation.

Drives a real ClientConnection through a fake transport: a keep-alive `GET /s/1k` in, the
file's answer out (as bench/run --content's static-1k row, whose listener also has
compression routes, so the response-head stages run). Prints microseconds per request (CPU
time of this process); `--profile` prints where they go. Run it under
`valgrind --tool=callgrind` with two `--requests` counts for instruction counts.

    .venv/bin/python bench/static_hotpath.py [--profile] [--requests N] [--size BYTES]
                                             [--no-compression | --all-stages]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import pstats
import tempfile
import time
from pathlib import Path

from hotpath import FakeTransport

from portico.config.load import parse_config
from portico.worker import Worker

CONFIG = """
workers: 1
listeners:
  - name: web
    bind: 127.0.0.1:0
    default_pool: app
    routes:
      - match: {{path_prefix: /s/}}
        strip_prefix: /s
        static: {{root: {root}}}
{compression}pools:
  app:
    servers:
      - address: 127.0.0.1:9001
"""
COMPRESSION_ROUTE = """\
      - match: {path_prefix: /j/gzip/}
        strip_prefix: /j/gzip
        pool: app
        compression: {algorithms: [gzip], levels: {gzip: 5}}
"""
CONFIG = CONFIG.replace("{compression}", COMPRESSION_ROUTE.replace("{", "{{").replace("}", "}}"))
REQUEST = b"GET /s/1k HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: bench\r\n\r\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--no-compression", action="store_true", help="without the listener's compression route"
    )
    parser.add_argument(
        "--all-stages",
        action="store_true",
        help="the listener's response stages on every route, as before they were chosen per "
        "route (the compression stage then also runs, doing nothing, on the static route)",
    )
    args = parser.parse_args()
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    root = Path(tempfile.mkdtemp(prefix="static-hotpath-"))
    (root / "1k").write_bytes(b"x" * args.size)
    text = CONFIG.format(root=root)
    if args.no_compression:
        text = text.replace(COMPRESSION_ROUTE, "")
    config = parse_config(text, "<static_hotpath>")
    worker = Worker(loop, config, {})
    settings = worker.settings["web"]
    if args.all_stages:
        settings = dataclasses.replace(settings, route_response_stages=None)
    from portico.listeners.http import ClientConnection

    client = ClientConnection(settings, worker.context)
    transport = FakeTransport()
    client.connection_made(transport)

    def run(n: int) -> None:
        for _ in range(n):
            client.data_received(REQUEST)
            if client.active is not None:  # streamed: let the loop finish it
                loop.run_until_complete(asyncio.sleep(0))

    run(1000)
    assert bytes(transport.last).endswith(b"x" * 16), transport.last
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run(args.requests)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        return
    start = time.process_time()
    run(args.requests)
    elapsed = time.process_time() - start
    print(f"{elapsed / args.requests * 1e6:.2f} us of Python per static request")


if __name__ == "__main__":
    main()
