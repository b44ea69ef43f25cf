"""Python cost of one request over HTTP/2, without sockets: `hotpath.py` for the h2 listener.

Drives a real H2ClientConnection through fake transports as h2load does (`-m10`): one read
carries the HEADERS of `--streams` requests, each goes to a pooled server connection, the
responses (`--size` bytes of body) come back, and the loop's next turn writes the frames. The
client is the h2 library on the other side of the fake socket; its own work is not counted.
Prints CPU microseconds per request, so a change to the HTTP/2 path can be judged in seconds:

    .venv/bin/python bench/h2hotpath.py [--requests N] [--streams 10] [--size 5]
    .venv/bin/python bench/h2hotpath.py --profile [--sort cumtime] [--lines 40]

For counts that do not depend on the machine's load, run it under callgrind with collection
on only inside the proxy's side (each batch runs inside `itertools.starmap`'s C `starmap_next`):

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=starmap_next \\
        --callgrind-out-file=/tmp/h2.cg .venv/bin/python bench/h2hotpath.py --requests 2000
    callgrind_annotate /tmp/h2.cg | head -1     # instructions; divide by --requests

or, free of the start-up's and warm-up's share, the difference of two run lengths (e.g.
--requests 1000 and 2000; for 1 MiB bodies --requests 20 and 40 with --warmup 2).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import pstats
import time
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, StreamEnded
from h2.settings import SettingCodes, Settings

from portico.config.load import parse_config
from portico.listeners.h2 import H2ClientConnection
from portico.upstreams.connections import UpstreamConnection
from portico.worker import Worker

CONFIG = """
workers: 1
listeners:
  - name: web
    bind: 127.0.0.1:0
    default_pool: app
    http2: true
pools:
  app:
    servers:
      - address: 127.0.0.1:9001
      - address: 127.0.0.1:9002
      - address: 127.0.0.1:9003
"""
# what h2load sends
REQUEST = [
    (b":method", b"GET"),
    (b":path", b"/small"),
    (b":scheme", b"https"),
    (b":authority", b"127.0.0.1:8444"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
]


def response(size: int) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 12:00:00 GMT\r\n"
        b"Content-Type: text/plain\r\nContent-Length: %d\r\nConnection: keep-alive\r\n"
        b"X-Backend: 9001\r\n\r\n" % size
    ) + b"x" * size


class FakeTransport(asyncio.Transport):
    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        super().__init__()
        self.peer = peer
        self.out: list[bytes] = []
        self.writes = 0
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def write(self, data: Any) -> None:
        self.writes += 1
        self.out.append(bytes(data))

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.write(part)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closing

    def set_protocol(self, protocol: Any) -> None:
        pass

    def close(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _turn() -> None:
    """Nothing: running it lets the loop run what was scheduled (the connection's flush)."""


class Harness:
    def __init__(self, args: argparse.Namespace, loop: asyncio.AbstractEventLoop) -> None:
        self.args = args
        self.loop = loop
        config = parse_config(CONFIG, "<h2hotpath>")
        worker = Worker(loop, config, {})
        settings = worker.settings["web"]
        client = self.client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        # h2load's -w30 (its default): set as the initial value, so that the SETTINGS frame
        # carries it (`update()` would only stage it, and the frame say 65,535)
        client.local_settings = Settings(
            client=True, initial_values={SettingCodes.INITIAL_WINDOW_SIZE: 2**30 - 1}
        )
        client.initiate_connection()
        client.increment_flow_control_window(2**30 - 1 - 65535)
        self.transport = FakeTransport()
        self.conn = H2ClientConnection(settings, worker.context)
        self.conn.adopt(self.transport, "127.0.0.1", None, False, client.data_to_send())
        # the settings exchange completed both ways, as h2load's: until the proxy's SETTINGS
        # ACK reaches it, the client's large windows are not in force on its side, and it
        # would send a WINDOW_UPDATE for every 32 KiB it reads (h2load, one in 512 MiB)
        client.receive_data(b"".join(self.transport.out))
        self.transport.out.clear()
        self.conn.data_received(client.data_to_send())
        self.transport.out.clear()
        for backend in settings.pool.backends:
            for _ in range(args.streams):
                up = UpstreamConnection(backend, 30.0, 30.0)
                up.transport = FakeTransport(("127.0.0.1", 9001))
                up._deadline = None  # no timers
                backend.put_idle(up, 0.0)
        self.body = response(args.size)
        self.stream_id = 1
        self.requests = 0
        self.bytes_out = 0

    def server(self, data: bytes, ids: list[int]) -> None:
        """The proxy's side of one batch: requests in, the servers' answers, the loop's turn."""
        conn = self.conn
        conn.data_received(data)
        for sid in ids:
            stream = conn.streams.get(sid)
            if stream is not None and stream.exchange is not None:
                upstream = stream.exchange._upstream
                assert upstream is not None
                upstream.data_received(self.body)
        self.loop.run_until_complete(_turn())

    def acks(self, data: bytes) -> None:
        """The client's WINDOW_UPDATEs (if any), and the loop's next turn."""
        if data:
            self.conn.data_received(data)
        self.loop.run_until_complete(_turn())

    def batch(self, measure: Any) -> None:
        """One batch; `measure(fn, *args)` runs the proxy's parts (timed or profiled)."""
        client = self.client
        ids = []
        for _ in range(self.args.streams):
            client.send_headers(self.stream_id, REQUEST, end_stream=True)
            ids.append(self.stream_id)
            self.stream_id += 2
        data = client.data_to_send()
        self.transport.out.clear()
        measure(self.server, data, ids)
        ended = 0
        for _ in range(1000):  # big bodies take turns (OUTBOUND_TURN bytes a turn)
            out = b"".join(self.transport.out)
            self.transport.out.clear()
            self.bytes_out += len(out)
            for event in client.receive_data(out):
                if isinstance(event, StreamEnded):
                    ended += 1
                elif isinstance(event, DataReceived):
                    size = event.flow_controlled_length
                    client.acknowledge_received_data(size, event.stream_id)
            ack = client.data_to_send()
            if ended == self.args.streams:
                if ack:
                    measure(self.acks, ack)
                break
            measure(self.acks, ack)
        assert ended == self.args.streams, ended
        self.requests += self.args.streams


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--size", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sort", default="tottime", help="--profile's order (cumtime, ...)")
    parser.add_argument("--lines", type=int, default=30, help="--profile's rows")
    parser.add_argument("--asyncio", action="store_true", help="asyncio's loop, not uvloop")
    parser.add_argument(
        "--warmup",
        type=int,
        default=100,
        help="batches run first, not measured (a few for "
        "1 MiB bodies under callgrind, which simulates them all the same)",
    )
    args = parser.parse_args()
    if args.asyncio:
        loop = asyncio.new_event_loop()
    else:
        import uvloop

        loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    harness = Harness(args, loop)

    def plain(fn: Any, *a: Any) -> None:
        fn(*a)

    for _ in range(args.warmup):
        harness.batch(plain)
    harness.requests = harness.bytes_out = 0
    writes = harness.transport.writes
    rounds = args.requests // args.streams
    if args.profile:
        profiler = cProfile.Profile()

        def profiled(fn: Any, *a: Any) -> None:
            profiler.runcall(fn, *a)

        for _ in range(rounds):
            harness.batch(profiled)
        print_profile(pstats.Stats(profiler).sort_stats(args.sort), args.lines)
        return
    spent = 0.0

    def timed(fn: Any, *a: Any) -> None:
        nonlocal spent
        start = time.process_time()
        list(itertools.starmap(fn, (a,)))  # callgrind's toggle: see the docstring
        spent += time.process_time() - start

    for _ in range(rounds):
        harness.batch(timed)
    done = harness.requests
    print(
        f"{spent / done * 1e6:.2f} us of CPU per request over HTTP/2 ({args.streams} streams "
        f"a read, {args.size}-byte bodies; {(harness.transport.writes - writes) / rounds:.2f} "
        f"socket writes per batch, {harness.bytes_out / done:.0f} bytes out per request)"
    )


def print_profile(stats: pstats.Stats, lines: int) -> None:
    stats.print_stats(lines)
    by_package: dict[str, float] = {}
    for (filename, _, name), row in stats.stats.items():  # type: ignore[attr-defined]
        if "site-packages/" in filename:
            where = filename.split("site-packages/")[1].split("/")[0]
        elif "portico/" in filename:
            where = "portico (interpreted)"
        elif filename == "~":
            where = "builtins: " + name.split(" of ")[-1].strip("'>")
        else:
            where = filename.rsplit("/", 2)[-2] if "/" in filename else filename
        by_package[where] = by_package.get(where, 0.0) + row[2]
    total = sum(by_package.values())
    print("own time by package:")
    for where, spent in sorted(by_package.items(), key=lambda kv: -kv[1])[:15]:
        print(f"{spent / total:6.1%}  {where}")


if __name__ == "__main__":
    main()
