"""A client for the failover test, run inside the client network namespace (`ip netns exec`):
stdlib only. `load`: one request per fresh connection every INTERVAL seconds until SIGTERM,
each written as a JSON line (start and end on CLOCK_MONOTONIC, which network namespaces
share, status or error, X-Backend) to OUT. `burst`: COUNT requests, their statuses on stdout.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time


def one(host: str, port: int, headers: dict[str, str], timeout: float) -> tuple[int, str]:
    """One GET / on a fresh connection: (status, X-Backend)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        head = "GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall((head + "\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_text = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head_text.split("\r\n")
    status = int(lines[0].split()[1])
    backend = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "x-backend":
            backend = value.strip()
    return status, backend


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["load", "burst"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--header", action="append", default=[], help="NAME:VALUE")
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--out", default="-")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds at most")
    args = parser.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    if args.mode == "burst":
        statuses = []
        for _ in range(args.count):
            try:
                statuses.append(one(args.host, args.port, headers, args.timeout)[0])
            except OSError as exc:
                statuses.append(type(exc).__name__)
        print(json.dumps(statuses))
        return 0
    stop = False

    def stopping(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, stopping)
    end = time.monotonic() + args.limit
    with open(args.out, "w", buffering=1) as out:
        while not stop and time.monotonic() < end:
            start = time.monotonic()
            record: dict[str, object] = {"start": start}
            try:
                record["status"], record["backend"] = one(
                    args.host, args.port, headers, args.timeout
                )
            except (OSError, ValueError, IndexError) as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"
            record["end"] = time.monotonic()
            out.write(json.dumps(record) + "\n")
            time.sleep(max(0.0, args.interval - (time.monotonic() - start)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
