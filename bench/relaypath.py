"""What one worker spends per relayed request, in instructions: deterministic under
`valgrind --tool=callgrind` however loaded the machine is, where bench/run's CPU seconds
swing by a quarter from run to run.

Three processes on loopback, every port chosen by the kernel (no clash with bench/run's fixed
ports, no lock needed): an origin (asyncio, answers each read with nginx's 5-byte `/small`
response), `h2load --h1 -n N -c C` as the client, and, in between, one Portico `Worker` in
this script's own process, with either

- `--mode l4`: a `protocol: tcp` listener (bench/run's L4 rows: the TCP relay; in the compiled
  build its native engine, `PORTICO_L4_ENGINE=python` for the Python copy),
- `--mode tls`: a `protocol: https` listener with a throwaway self-signed RSA-2048
  certificate (bench/run's "HTTP/1.1 over TLS" rows: TLS records plus the HTTP/1.1 path), or
- `--mode http`: the same `protocol: http` listener without TLS, whose count `tls`'s less
  is what TLS adds to a request.

`--chunked`: the origin answers chunked (no Content-Length), and Portico frames the body
chunked again for the client. `--body N`: the origin's body is N bytes (Content-Length;
bench/run's /16k row is `--body 16384`) instead of 5, written with its head in one write.
`--close` (http, tls): every request says `Connection: close`, so each comes on a new client
connection (h2load connects again) while the server connection is kept and reused: bench/run's
close row, accept(2) and the loop's transport included.

Only the worker's process is measured. With `--callgrind` the script runs the worker twice
under callgrind, for N and for 3N requests over the same C connections, and prints
(instructions of the second - of the first) ÷ 2N: the cost of one request at steady state,
without start-up, connection set-up or handshakes (`--keep DIR` keeps both profiles for
`callgrind_annotate`). Without it: the worker's user and kernel CPU µs per request (noisy).

    .venv/bin/python bench/relaypath.py [--mode l4|tls|http] [--chunked | --body N] [--close]
                                        [--requests N] [--connections C]
                                        [--callgrind [--keep DIR]] [--profile]

Needs `h2load` (Debian's nghttp2-client, as bench/run) and, for `--callgrind`, valgrind.
A run of `--callgrind` takes two to four minutes on the shared 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 12:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 5\r\nConnection: keep-alive\r\n"
    b"X-Backend: 9001\r\n\r\nhello"
)
CHUNKED = (  # `--chunked`: the same body, its length unknown up front
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 12:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n"
    b"X-Backend: 9001\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
)
CONFIG = """\
workers: 1
listeners:
  - name: front
    bind: 127.0.0.1:0
    protocol: {protocol}
    default_pool: app
{tls}pools:
  app:
    servers:
      - address: 127.0.0.1:{origin}
"""
TLS = """\
    tls:
      certificates:
        - cert: {dir}/cert.pem
          key: {dir}/key.pem
"""
H2LOAD_TIMEOUT = 600.0  # seconds for one h2load run (callgrind slows the worker ~50x)


class Origin(asyncio.Protocol):
    """Answers every read with one response: h2load --h1 sends one request at a time."""

    transport: asyncio.Transport
    response = RESPONSE

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(self.response)


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def sized_response(size: int) -> bytes:
    """RESPONSE with a body of `size` bytes (`--body`)."""
    head = RESPONSE[: RESPONSE.index(b"\r\n\r\n") + 4].replace(
        b"Content-Length: 5", b"Content-Length: %d" % size
    )
    return head + b"x" * size


def run_origin(chunked: bool, body: int) -> None:
    """`--origin`: serve until stdin closes; the port goes to stdout."""
    if chunked:
        Origin.response = CHUNKED
    elif body:
        Origin.response = sized_response(body)
    loop = new_loop()
    server = loop.run_until_complete(loop.create_server(Origin, "127.0.0.1", 0))
    print(server.sockets[0].getsockname()[1], flush=True)
    reader = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), reader.set)
    loop.run_until_complete(reader.wait())


def h2load(mode: str, port: int, requests: int, connections: int, close: bool) -> list[str]:
    scheme = "https" if mode == "tls" else "http"
    return [
        "h2load",
        "--h1",
        *(["-H", "Connection: close"] if close else []),
        "-n",
        str(requests),
        "-c",
        str(connections),
        "-t1",
        f"{scheme}://127.0.0.1:{port}/small",
    ]


def serve(args: argparse.Namespace) -> None:
    """`--serve`: one worker in this process while h2load runs against it."""
    from portico.config.load import parse_config
    from portico.worker import Worker

    loop = new_loop()
    asyncio.set_event_loop(loop)
    protocol = {"l4": "tcp", "tls": "https", "http": "http"}[args.mode]
    tls = TLS.format(dir=args.cert_dir) if args.mode == "tls" else ""
    config = parse_config(
        CONFIG.format(protocol=protocol, tls=tls, origin=args.origin_port), "<relaypath>"
    )
    sock = socket.create_server(("127.0.0.1", 0), backlog=128)
    port = sock.getsockname()[1]
    worker = Worker(loop, config, {"front": [sock]})
    loop.run_until_complete(worker.start())
    command = h2load(args.mode, port, args.requests, args.connections, args.close)

    async def load() -> str:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await asyncio.wait_for(process.communicate(), H2LOAD_TIMEOUT)
        return out.decode(errors="replace")

    profiler = cProfile.Profile() if args.profile else None
    start = os.times()
    if profiler is not None:
        profiler.enable()
    out = loop.run_until_complete(load())
    if profiler is not None:
        profiler.disable()
    end = os.times()
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if done is None or int(done.group(2)) != args.requests:
        sys.exit(f"h2load did not complete every request:\n{out}")
    for line in out.splitlines():
        if line.startswith(("TLS Protocol", "Cipher", "Server Temp Key")):
            print(line, file=sys.stderr)  # the same as NGINX gets from h2load in bench/run?
    user = (end.user - start.user) / args.requests * 1e6
    system = (end.system - start.system) / args.requests * 1e6
    print(f"worker CPU per request: {user:.2f} us user + {system:.2f} us kernel", file=sys.stderr)
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def make_cert(directory: str) -> None:
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-keyout",
            f"{directory}/key.pem",
            "-out",
            f"{directory}/cert.pem",
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )


def instructions(base: list[str], requests: int, out: str) -> int:
    """Instructions callgrind counted in one worker run of `requests` requests."""
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        *base,
        "--requests",
        str(requests),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=2 * H2LOAD_TIMEOUT, check=False
    )
    found = re.search(r"Collected : (\d+)", result.stderr)
    if result.returncode != 0 or found is None:
        sys.exit(f"callgrind run failed:\n{result.stderr[-3000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("l4", "tls", "http"), default="l4")
    parser.add_argument("--requests", type=int, default=0, help="default 100000, 4000 callgrind")
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--callgrind", action="store_true", help="instructions per request")
    parser.add_argument("--profile", action="store_true", help="cProfile the worker")
    parser.add_argument("--chunked", action="store_true", help="chunked responses (HTTP)")
    parser.add_argument("--body", type=int, default=0, help="N-byte bodies, not 5 (HTTP)")
    parser.add_argument("--close", action="store_true", help="a new connection per request")
    parser.add_argument("--keep", default="", help="--callgrind: keep the profiles in this folder")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--origin", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--origin-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cert-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.origin:
        run_origin(args.chunked, args.body)
        return
    if args.serve:
        serve(args)
        return
    requests = args.requests or (4000 if args.callgrind else 100_000)
    origin = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--origin",
            *(["--chunked"] if args.chunked else []),
            *(["--body", str(args.body)] if args.body else []),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert origin.stdout is not None
        origin_port = int(origin.stdout.readline())
        with tempfile.TemporaryDirectory(prefix="relaypath-") as scratch:
            if args.mode == "tls":
                make_cert(scratch)
            base = [
                sys.executable,
                __file__,
                "--serve",
                "--mode",
                args.mode,
                "--connections",
                str(args.connections),
                "--origin-port",
                str(origin_port),
                "--cert-dir",
                scratch,
                *(["--close"] if args.close else []),
            ]
            env = dict(os.environ, PYTHONHASHSEED="0")
            os.environ.update(env)
            if not args.callgrind:
                extra = ["--profile"] if args.profile else []
                subprocess.run([*base, *extra, "--requests", str(requests)], check=True)
                return
            keep = Path(args.keep) if args.keep else Path(scratch)
            first = instructions(base, requests, str(keep / f"callgrind.{args.mode}.1"))
            second = instructions(base, 3 * requests, str(keep / f"callgrind.{args.mode}.3"))
            per = (second - first) / (2 * requests)
            print(
                f"{args.mode}{' --close' if args.close else ''}"
                f"{f' --body {args.body}' if args.body else ''}: {per:,.0f} instructions per "
                f"request in the worker "
                f"({first:,} for {requests}, {second:,} for {3 * requests}; "
                f"{args.connections} connections)"
            )
    finally:
        if origin.stdin is not None:
            origin.stdin.close()
        origin.wait(timeout=10)


if __name__ == "__main__":
    main()
