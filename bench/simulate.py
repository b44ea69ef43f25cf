"""How fast `portico simulate` replays a big trace: a million-line access log, end to end.

Writes an access log of N requests (Poisson arrivals at 4000/s, lognormal service times of mean
4 ms, four servers) with Portico's own line formatters, then runs `portico simulate` on it, as
a user would, and prints the wall-clock and CPU time of the whole command (reading the log,
every policy, the CSV and the plot) and each policy's simulation time from its summary.

    .venv/bin/python bench/simulate.py [--requests 1000000] [--format json|combined]
        [--policies round_robin,least_conn,p2c_ewma]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from portico.observe.access_log import AccessRecord, format_combined, format_json

CONFIG = """\
listeners: [{name: web, bind: "127.0.0.1:8080", default_pool: app}]
pools:
  app:
    servers:
      - {address: "10.0.0.1:80", name: s1}
      - {address: "10.0.0.2:80", name: s2}
      - {address: "10.0.0.3:80", name: s3}
      - {address: "10.0.0.4:80", name: s4}
"""


def write_log(path: Path, requests: int, fmt: str, seed: int = 1) -> None:
    rng = random.Random(seed)
    formatter = format_json if fmt == "json" else format_combined
    start = 1_700_000_000.0
    with path.open("wb") as out:
        for i in range(requests):
            start += rng.expovariate(4000.0)
            service = rng.lognormvariate(-6.0215, 1.0)  # mean 4 ms
            out.write(
                formatter(
                    AccessRecord(
                        start=start,
                        client_ip=f"10.1.{i % 250}.{i % 199 + 1}",
                        method=b"GET",
                        target=b"/item/%d" % (i % 1000),
                        version="1.1",
                        status=200,
                        bytes_sent=2300,
                        body_bytes_sent=2048,
                        bytes_received=120,
                        referer=None,
                        user_agent=b"bench",
                        host=b"shop.example",
                        request_id=b"%032x" % i,
                        listener="web",
                        route="default",
                        pool="app",
                        backend=f"s{i % 4 + 1}",
                        duration=service + 0.0005,
                        upstream_connect=None,
                        upstream_response=service,
                    )
                )
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--format", choices=["json", "combined"], default="json")
    parser.add_argument("--policies", default="round_robin,least_conn,p2c_ewma")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        here = Path(folder)
        (here / "portico.yaml").write_text(CONFIG)
        log = here / "access.log"
        started = time.perf_counter()
        write_log(log, args.requests, args.format)
        took = time.perf_counter() - started
        print(f"wrote {args.requests:,} {args.format} lines in {took:.1f}s")
        command = [
            sys.executable,
            "-m",
            "portico",
            "simulate",
            "portico.yaml",
            "--trace",
            "access.log",
            "--policies",
            args.policies,
            "--json",
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(command, cwd=here, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        report = json.loads(done.stdout)
        count = report["requests"]
        print(f"portico simulate: {wall:.1f}s wall, {cpu:.1f}s CPU, {count:,} requests")
        for policy in report["policies"]:
            print(
                f"  {policy['policy']:<14} {policy['seconds']:.1f}s "
                f"({policy['requests'] / policy['seconds']:,.0f} requests/s), "
                f"p99 {policy['p99'] * 1000:.1f} ms"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
