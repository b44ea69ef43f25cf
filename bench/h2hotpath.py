"""Python cost of one request over HTTP/2, without sockets: `hotpath.py` for the h2 listener.

Drives a real H2ClientConnection through fake transports as h2load does (`-m10`): one read
carries the HEADERS of `--streams` requests, each goes to a pooled server connection, the
small (or `--size`) responses come back, and one loop turn later the frames go out. The client
is the h2 library on the other side of the fake socket; its own work is not timed. Prints
microseconds of CPU per request, so a change to the HTTP/2 path can be judged in seconds.

    .venv/bin/python bench/h2hotpath.py [--profile] [--requests N] [--streams 10] [--size 5]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, StreamEnded
from h2.settings import SettingCodes

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
# what h2load sends (nghttp2's defaults beside -m10)
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


async def drive(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    config = parse_config(CONFIG, "<h2hotpath>")
    worker = Worker(loop, config, {})
    settings = worker.settings["web"]
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.local_settings.update({SettingCodes.INITIAL_WINDOW_SIZE: 2**30 - 1})
    client.initiate_connection()
    client.increment_flow_control_window(2**30 - 1 - 65535)
    transport = FakeTransport()
    conn = H2ClientConnection(settings, worker.context)
    conn.adopt(transport, "127.0.0.1", None, False, client.data_to_send())
    for backend in settings.pool.backends:
        for _ in range(args.streams):
            up = UpstreamConnection(backend, 30.0, 30.0)
            up.transport = FakeTransport(("127.0.0.1", 9001))
            up._deadline = None  # no timers
            backend.put_idle(up, 0.0)
    body = response(args.size)
    stream_id = 1
    timed = 0.0
    done = 0
    bytes_out = 0

    def turn_in(data: bytes) -> list[Any]:
        conn.data_received(data)
        return [conn.streams[sid].exchange for sid in ids if sid in conn.streams]

    async def batch(timer: bool) -> None:
        nonlocal stream_id, timed, done, bytes_out
        ids.clear()
        for _ in range(args.streams):
            client.send_headers(stream_id, REQUEST, end_stream=True)
            ids.append(stream_id)
            stream_id += 2
        data = client.data_to_send()
        transport.out.clear()
        if profiler is not None:
            profiler.enable()
        start = time.process_time()
        exchanges = turn_in(data)
        for exchange in exchanges:
            upstream = exchange._upstream
            upstream.data_received(body)
        await asyncio.sleep(0)  # the loop turn that flushes
        if timer:
            timed += time.process_time() - start
        if profiler is not None:
            profiler.disable()
        out = b"".join(transport.out)
        bytes_out += len(out)
        ended = 0
        for event in client.receive_data(out):
            if isinstance(event, StreamEnded):
                ended += 1
            elif isinstance(event, DataReceived):
                client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        assert ended == args.streams, (ended, out[:200])
        ack = client.data_to_send()
        if ack:
            if profiler is not None:
                profiler.enable()
            start = time.process_time()
            conn.data_received(ack)
            await asyncio.sleep(0)
            if timer:
                timed += time.process_time() - start
            if profiler is not None:
                profiler.disable()
        done += args.streams

    ids: list[int] = []
    profiler: cProfile.Profile | None = None
    for _ in range(100):
        await batch(False)
    writes = transport.writes
    done = 0
    bytes_out = 0
    rounds = args.requests // args.streams
    if args.profile:
        profiler = cProfile.Profile()
        for _ in range(rounds):
            await batch(False)
        stats = pstats.Stats(profiler).sort_stats(args.sort)
        stats.print_stats(args.lines)
        return
    writes = transport.writes
    for _ in range(rounds):
        await batch(True)
    print(
        f"{timed / done * 1e6:.2f} us of Python per request over HTTP/2 "
        f"({args.streams} streams a read, {args.size}-byte bodies; "
        f"{(transport.writes - writes) / rounds:.2f} writes and {bytes_out / done:.0f} bytes "
        "out per request batch/request)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--size", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sort", default="tottime", help="--profile's order (cumtime, ...)")
    parser.add_argument("--lines", type=int, default=30, help="--profile's rows")
    parser.add_argument("--asyncio", action="store_true", help="asyncio's loop, not uvloop")
    args = parser.parse_args()
    if args.asyncio:
        asyncio.run(drive(args))
        return
    import uvloop

    uvloop.run(drive(args))


if __name__ == "__main__":
    main()
