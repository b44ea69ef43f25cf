"""Latency of small requests while big responses are being compressed (issue #13).

Starts `portico run` (one worker) in front of a small origin that serves a 10 MiB JSON body,
then measures the latency of small uncompressed requests (`/ping`, answered by a route) on
one keep-alive connection: first alone, then while `--clients` clients download the 10 MiB
body compressed (gzip level 5 unless --coding/--level say otherwise). Prints p50/p99/max of
both and their ratio. Bounded: `--seconds` per phase. Loopback only.

    .venv/bin/python bench/compress_latency.py [--clients 8] [--coding gzip] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BIG = 10 * 1024 * 1024


def json_body(size: int) -> bytes:
    rng = random.Random(1)
    out = bytearray(b"[")
    while len(out) < size - 1:
        record = {"id": rng.randrange(10**9), "name": rng.choice(["red", "green", "blue"]) * 3}
        out += json.dumps(record).encode() + b","
    return bytes(out[: size - 1]) + b"]"


def serve_origin(body: bytes, port_queue: Any) -> None:
    """A minimal HTTP/1.1 keep-alive origin: every request gets `body` as JSON."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(
        body
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                if not request:
                    return
                writer.write(head)
                writer.write(body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_queue.put(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def read_response(sock: socket.socket, buffer: bytearray) -> int:
    """Read one response (Content-Length or chunked) and return its body size on the wire."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?i)content-length: (\d+)", head)
    if match:
        need = int(match.group(1)) - len(rest)
        while need > 0:
            n = sock.recv_into(buffer, min(need, len(buffer)))
            if not n:
                raise ConnectionError("closed")
            need -= n
        return int(match.group(1))
    total = len(rest)
    tail = rest[-5:]
    while tail != b"0\r\n\r\n":
        n = sock.recv_into(buffer)
        if not n:
            raise ConnectionError("closed")
        total += n
        tail = (tail + bytes(buffer[:n]))[-5:]
    return total


def downloader(port: int, coding: str, stop: Any, done: Any) -> None:
    """One client in its own process (the measuring process must not share a GIL with it)."""
    buffer = bytearray(1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        request = f"GET /big HTTP/1.1\r\nHost: b\r\nAccept-Encoding: {coding}\r\n\r\n".encode()
        while not stop.is_set():
            sock.sendall(request)
            read_response(sock, buffer)
            with done.get_lock():
                done.value += 1


def pings(port: int, seconds: float) -> list[float]:
    buffer = bytearray(65536)
    out: list[float] = []
    deadline = time.monotonic() + seconds
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while time.monotonic() < deadline:
            started = time.perf_counter()
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: p\r\n\r\n")
            read_response(sock, buffer)
            out.append((time.perf_counter() - started) * 1000)
            time.sleep(0.002)
    return out


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    return f"p50 {statistics.median(ordered):.2f} ms, p99 {p99:.2f} ms, max {ordered[-1]:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--coding", default="gzip", choices=["gzip", "br", "zstd"])
    parser.add_argument("--level", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    ports: Any = multiprocessing.Queue()
    origin = multiprocessing.Process(target=serve_origin, args=(json_body(BIG), ports))
    origin.start()
    origin_port = ports.get(timeout=10)
    level = f", levels: {{{args.coding}: {args.level}}}" if args.level is not None else ""
    config = f"""
workers: {args.workers}
listeners:
  - name: web
    bind: 127.0.0.1:0
    default_pool: origin
    compression: {{algorithms: [{args.coding}]{level}}}
    routes:
      - match: {{path_exact: /ping}}
        respond: {{status: 200, body: "pong"}}
pools:
  origin:
    servers: [{{address: 127.0.0.1:{origin_port}}}]
"""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch, "portico.yaml")
        path.write_text(config)
        proc = subprocess.Popen(
            [sys.executable, "-m", "portico", "run", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            port = int(re.findall(r"http://[\d.]+:(\d+)", line)[0])
            alone = pings(port, args.seconds)
            stop = multiprocessing.Event()
            done = multiprocessing.Value("i", 0)
            clients = [
                multiprocessing.Process(target=downloader, args=(port, args.coding, stop, done))
                for _ in range(args.clients)
            ]
            for client in clients:
                client.start()
            time.sleep(0.5)  # the downloads are under way (a warm-up, not synchronisation)
            loaded = pings(port, args.seconds)
            stop.set()
            for client in clients:
                client.join(30)
                if client.is_alive():
                    client.terminate()
        finally:
            proc.terminate()
            proc.wait(30)
            origin.terminate()
            origin.join(10)
    p99_alone = sorted(alone)[int(len(alone) * 0.99) - 1]
    p99_loaded = sorted(loaded)[int(len(loaded) * 0.99) - 1]
    print(f"alone:  {summary(alone)} ({len(alone)} requests)")
    print(
        f"loaded: {summary(loaded)} ({len(loaded)} requests; {done.value} compressed "
        f"{args.coding} downloads of 10 MiB by {args.clients} clients)"
    )
    print(f"p99 ratio: {p99_loaded / p99_alone:.1f}x")


if __name__ == "__main__":
    main()
