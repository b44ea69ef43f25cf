"""The requests a simulation replays: read from Portico's own access log, or made from a spec.

Owns `Trace` (arrival times, service demands, response sizes and client addresses, as flat
arrays: a million requests cost tens of megabytes, not a million objects), `read_access_log`
(both of Portico's formats, told apart line by line) and `synthetic` (Poisson arrivals with the
spec's distributions, from a seeded `random.Random`).

From a log line: the arrival is the request's start (JSON: to the millisecond; combined: to the
second, so the requests of one second are spread evenly over it), the service demand is the
server's time to its response head (`urt` / `upstream_response`, as NGINX's
`$upstream_header_time`), the size is `body_bytes_sent`. Lines with no server answer (Portico's
own answers, failures before a response head) and lines of other pools are skipped and counted.
Never simulates anything (`engine.py` does).
"""

from __future__ import annotations

import json
import math
import random
import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from portico.simulate.spec import Arrivals, SizeDistribution, TimeDistribution

__all__ = ["Trace", "TraceInfo", "read_access_log", "synthetic"]


@dataclass(slots=True)
class Trace:
    """Requests in arrival order: index i of every array is request i."""

    arrivals: array[float]  # seconds since the first request
    service: array[float]  # seconds a server of speed 1 spends on it
    size: array[int]  # response body bytes (0 when unknown)
    client: array[int]  # index into `clients`
    clients: list[str]

    def __len__(self) -> int:
        return len(self.arrivals)

    @property
    def duration(self) -> float:
        return self.arrivals[-1] if self.arrivals else 0.0


@dataclass(slots=True)
class TraceInfo:
    """What reading a log found: the pool replayed, and what was left out and why."""

    pool: str | None = None
    lines: int = 0
    used: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    pools: Counter[str] = field(default_factory=Counter)


# start, service, size, client, pool, and whether start is a whole second (combined lines)
_Row = tuple[float, float, int, str, str, bool]

# NGINX's combined format and Portico's fields after it (observe/access_log.py writes it)
_QUOTED = r'"((?:[^"\\]|\\.)*)"'
_COMBINED = re.compile(
    rf"(\S+) \S+ \S+ \[([^\]]+)\] {_QUOTED} (\d{{3}}) (\d+) {_QUOTED} {_QUOTED}"
    r" rid=\S+ route=\S+ pool=(\S+) backend=(\S+) rt=[\d.]+ uct=\S+ urt=(\S+)"
)


def read_access_log(lines: Iterable[str], pool: str | None = None) -> tuple[Trace, TraceInfo]:
    """The requests of one pool in an access log (JSON or combined lines, even mixed).

    `pool`: the pool to replay; None takes the pool with the most lines. Raises ValueError
    when no line is usable.
    """
    info = TraceInfo()
    rows: list[_Row] = []
    stamps: dict[str, float] = {}
    for line in lines:
        if not line.strip():
            continue
        info.lines += 1
        row = _json_row(line) if line.lstrip().startswith("{") else _combined_row(line, stamps)
        if isinstance(row, str):
            info.skipped[row] += 1
            continue
        info.pools[row[4]] += 1
        rows.append(row)
    if pool is None and info.pools:
        pool = info.pools.most_common(1)[0][0]
    info.pool = pool
    chosen = [row for row in rows if row[4] == pool]
    if len(chosen) < len(rows):
        info.skipped["other pools"] += len(rows) - len(chosen)
    if not chosen:
        found = ", ".join(info.pools) or "none"
        raise ValueError(f"no usable requests of pool {pool!r} in the log (pools: {found})")
    _spread_seconds(chosen)
    chosen.sort(key=lambda row: row[0])
    info.used = len(chosen)
    first = chosen[0][0]
    clients: dict[str, int] = {}
    trace = Trace(array("d"), array("d"), array("q"), array("l"), [])
    for start, service, size, client, _, _ in chosen:
        trace.arrivals.append(start - first)
        trace.service.append(service)
        trace.size.append(size)
        index = clients.get(client)
        if index is None:
            index = clients[client] = len(clients)
        trace.client.append(index)
    trace.clients = list(clients)
    return trace, info


def _json_row(line: str) -> _Row | str:
    try:
        record = json.loads(line)
        start = datetime.fromisoformat(record["time"]).timestamp()
        service = record["upstream_response"]
        if record["backend"] is None or service is None:
            return "no server answered"
        size = int(record["body_bytes_sent"])
        return (start, float(service), size, record["client_ip"], record["pool"], False)
    except (ValueError, KeyError, TypeError):
        return "unreadable"


def _combined_row(line: str, stamps: dict[str, float]) -> _Row | str:
    match = _COMBINED.match(line)
    if match is None:
        return "unreadable"
    client, stamp, _request, _status, size, _ref, _agent, pool, backend, urt = match.groups()
    if backend == "-" or urt == "-":
        return "no server answered"
    start = stamps.get(stamp)
    if start is None:
        try:
            start = stamps[stamp] = datetime.strptime(stamp, "%d/%b/%Y:%H:%M:%S %z").timestamp()
        except ValueError:
            return "unreadable"
    return (start, float(urt), int(size), client, pool, True)


def _spread_seconds(rows: list[_Row]) -> None:
    """Combined lines carry whole seconds: the k requests of one second are spread evenly over
    it, at (i + 0.5) / k, keeping their order (JSON times, with milliseconds, are kept)."""
    per_second: Counter[float] = Counter(row[0] for row in rows if row[5])
    seen: Counter[float] = Counter()
    for i, row in enumerate(rows):
        second = row[0]
        k = per_second.get(second) if row[5] else None
        if k:
            n = seen[second]
            seen[second] = n + 1
            rows[i] = (second + (n + 0.5) / k, *row[1:])


# ---------------------------------------------------------------------------------------------
# Synthetic traces


def synthetic(spec: Arrivals, seed: int) -> Trace:
    """Poisson arrivals at `spec.rate` with independent service times (plus size/transfer)."""
    rng = random.Random(seed)
    count = spec.requests
    if count is None:
        assert spec.duration is not None
        count = max(1, round(spec.rate * spec.duration))
    draw_service = _sampler(spec.service, rng)
    draw_size = _sampler(spec.size, rng) if spec.size is not None else None
    transfer = spec.transfer
    trace = Trace(array("d"), array("d"), array("q"), array("l"), [])
    trace.clients = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(spec.clients)]
    expo = rng.expovariate
    rate = spec.rate
    clients = spec.clients
    pick = rng.randrange
    t = 0.0
    for _ in range(count):
        size = round(draw_size()) if draw_size is not None else 0
        service = draw_service()
        if transfer:
            service += size / transfer
        trace.arrivals.append(t)
        trace.service.append(service)
        trace.size.append(size)
        trace.client.append(pick(clients))
        t += expo(rate)
    return trace


def _sampler(spec: TimeDistribution | SizeDistribution, rng: random.Random) -> Callable[[], float]:
    """A function drawing from `spec`'s distribution, which has mean `spec.mean`."""
    mean = float(spec.mean)
    kind = spec.distribution
    if kind == "constant":
        return lambda: mean
    if kind == "exponential":
        expo, rate = rng.expovariate, 1.0 / mean
        return lambda: expo(rate)
    if kind == "uniform":
        uniform = rng.random
        return lambda: 2.0 * mean * uniform()
    if kind == "lognormal":
        sigma = spec.sigma
        mu = math.log(mean) - sigma * sigma / 2.0
        lognormal = rng.lognormvariate
        return lambda: lognormal(mu, sigma)
    alpha = spec.alpha  # pareto with this mean: scale xm = mean * (alpha - 1) / alpha
    scale = mean * (alpha - 1.0) / alpha
    pareto = rng.paretovariate
    return lambda: scale * pareto(alpha)
