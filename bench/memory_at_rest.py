"""Memory of a Portico process tree at rest (#18): start `portico run` on the bench config
(ports 0: no fixed port, no lock needed), wait for its ready line, read /proc for every process
of the tree, stop it.

Per process: VmRSS (/proc/PID/status) and Pss, Private (Private_Clean + Private_Dirty) and
Shared from /proc/PID/smaps_rollup. Summed RSS counts a page shared by two processes twice;
summed PSS (what `smem` reports) splits each shared page among the processes that map it, so it
is what the tree really costs.

    .venv/bin/python bench/memory_at_rest.py [--workers 1 2] [--repeat 3] [--portico CMD]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CONFIG = """\
workers: {workers}
listeners:
  - name: web
    bind: 127.0.0.1:0
    protocol: http
    default_pool: app
pools:
  app:
    policy: round_robin
    servers:
      - address: 127.0.0.1:9001
      - address: 127.0.0.1:9002
      - address: 127.0.0.1:9003
"""
READY_TIMEOUT = 30.0  # seconds for the ready line
SETTLE = 1.0  # seconds after ready: the workers' first stats report and its allocations
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Usage:
    """One process's memory in KiB."""

    pid: int
    name: str
    rss: int
    pss: int
    private: int
    shared: int


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return kids


def tree(root: int) -> list[int]:
    """root and its descendants, parents first."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo += _children(pid)
    return out


def usage(pid: int) -> Usage:
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    with open(f"/proc/{pid}/comm") as f:
        comm = f.read().strip()
    args = " ".join(os.path.basename(a.decode(errors="replace")) for a in argv[:4] if a)
    name = f"{comm}: {args}"
    return Usage(
        pid,
        name[:60],
        int(status["VmRSS"].split()[0]),
        fields.get("Pss", 0),
        fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
        fields.get("Shared_Clean", 0) + fields.get("Shared_Dirty", 0),
    )


def measure(portico: list[str], workers: int) -> list[Usage]:
    """Start Portico with `workers` workers, wait until ready (and one stats period), read
    every process of its tree, stop it."""
    with tempfile.TemporaryDirectory(prefix="portico-mem-") as tmp:
        conf = Path(tmp) / "portico.yaml"
        conf.write_text(CONFIG.format(workers=workers))
        proc = subprocess.Popen(
            [*portico, "run", str(conf)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + READY_TIMEOUT
            while time.monotonic() < deadline:  # readline blocks: the deadline is a guard
                line = proc.stdout.readline()
                if not line or line.startswith("portico: ready"):
                    break
            else:
                raise SystemExit("portico did not get ready")
            if not line:
                raise SystemExit(f"portico exited: {proc.wait()}")
            time.sleep(SETTLE)  # a measurement at rest, not a synchronisation
            return [usage(pid) for pid in tree(proc.pid)]
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3, help="runs per worker count (median)")
    parser.add_argument(
        "--portico",
        default=str(Path(sys.executable).parent / "portico"),
        help="the portico command (default: this venv's)",
    )
    args = parser.parse_args()
    for workers in args.workers:
        runs = [measure([args.portico], workers) for _ in range(args.repeat)]
        print(f"\n{workers} worker(s), median of {args.repeat} runs, KiB")
        print(f"  {'process':<62} {'RSS':>7} {'PSS':>7} {'private':>7} {'shared':>7}")
        for i, first in enumerate(runs[0]):
            rows = [run[i] for run in runs if len(run) > i]
            med = {
                k: int(statistics.median(getattr(r, k) for r in rows))
                for k in ("rss", "pss", "private", "shared")
            }
            print(
                f"  {first.name:<62} {med['rss']:>7} {med['pss']:>7} {med['private']:>7}"
                f" {med['shared']:>7}"
            )
        rss = statistics.median(sum(u.rss for u in run) for run in runs)
        pss = statistics.median(sum(u.pss for u in run) for run in runs)
        print(
            f"  {'tree':<62} {int(rss):>7} {int(pss):>7}"
            f"   = RSS {rss / 1024:.1f} MiB, PSS {pss / 1024:.1f} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
