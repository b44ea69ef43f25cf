"""The counters of Portico's traffic: kept per worker, summed in the supervisor. *pure*

Owns `WorkerStats`, the counters one worker keeps (requests by listener, route, pool, server
and status class; durations; bytes on client connections; connections; retries; rate-limited
requests) and the
snapshot of them, with the live state of its pools, that the worker sends to the supervisor
every second; and `StatsAggregator`, the supervisor's sum of the latest snapshot of every
worker plus the counters of the workers that have exited, so that no total ever goes down
when a worker is restarted or replaced by a reload. The metric table (`COUNTERS`, `GAUGES`,
`HISTOGRAMS`) is the contract between the two and with the Prometheus exporter.

Never reads the clock, never does I/O and never sends anything: the worker measures and sends,
the supervisor receives and serves. Label values are names from the config (listeners, routes,
pools, servers), never request data, so the number of series is bounded by the config; as a
safety net a worker keeps at most `MAX_SERIES` listeners, pools and request series, and counts
any beyond that under the label value `OVERFLOW`.

Hot path: `request_done` and the other per-event methods are dict look-ups by name and int or
float additions on objects made the first time a name is seen; in the steady state they
allocate nothing that outlives the call.

Snapshot format (JSON; rows are label values followed by the value)::

    {"counters":   {"requests": [["web", "default", "app", "a", "2xx", 12], ...], ...},
     "gauges":     {"backend_in_flight": [["app", "a", 3], ...], ...},
     "histograms": {"request_duration": [["web", "app", [3, 1, ..., 0], 0.042], ...], ...}}

A histogram row holds one count per bucket of `HISTOGRAMS[name].bounds` (values <= that bound
and above the one before) and a last count for values above every bound, then the sum of the
values: per-bucket counts, which add up across workers as they are; the exporter makes them
cumulative (Prometheus ``le``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, cast

if TYPE_CHECKING:
    from portico.config.schema import Config

__all__ = [
    "CODE_CLASSES",
    "CONNECT_BUCKETS",
    "COUNTERS",
    "DURATION_BUCKETS",
    "GAUGES",
    "HISTOGRAMS",
    "MAX_SERIES",
    "NO_ROUTE",
    "OVERFLOW",
    "BackendLike",
    "ByteCounter",
    "CodingCounter",
    "GaugeSpec",
    "Histogram",
    "HistogramData",
    "HistogramSpec",
    "MergedStats",
    "PoolLike",
    "StatsAggregator",
    "WorkerSnapshot",
    "WorkerStats",
    "parse_snapshot",
]

Labels = tuple[str, ...]
Merge = Literal["sum", "min", "max"]

# A proxied request's time, from head to last byte: 100 us to 10 s in 1-2.5-5 steps. A request
# to a nearby server takes well under a millisecond; Prometheus' default buckets start at 5 ms
# and put all of those in one bucket. 16 bounds: two series more than those defaults.
DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# A TCP connect to a nearby server takes well under a millisecond: start finer.
CONNECT_BUCKETS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

# Status classes by `status // 100`; "none": no status was sent (the client left first).
CODE_CLASSES: Final[tuple[str, ...]] = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")

NO_ROUTE: Final = "default"  # the route label of a listener without routes
OVERFLOW: Final = "_overflow"  # every label of the series that counts what MAX_SERIES left out
MAX_SERIES: Final = 10_000  # request series (and duration histograms) per worker


@dataclass(frozen=True, slots=True)
class GaugeSpec:
    """A gauge's labels and how the values of several workers combine into one."""

    labels: Labels
    merge: Merge


@dataclass(frozen=True, slots=True)
class HistogramSpec:
    labels: Labels
    bounds: tuple[float, ...]


# Counters: cumulative since each worker started, summed over workers living and exited.
COUNTERS: Final[Mapping[str, Labels]] = {
    "requests": ("listener", "route", "pool", "backend", "code_class"),
    # every byte read from / written to client connections: heads, bodies, framing (HTTP/2
    # frames, chunk sizes), PROXY headers, tunnels; after TLS decryption
    "client_received_bytes": ("listener",),
    "client_sent_bytes": ("listener",),
    "connections": ("listener",),
    "ratelimited": ("listener",),
    "h2_abuse": ("listener",),
    "retries": ("pool",),
    "backend_requests": ("pool", "backend"),
    "backend_failures": ("pool", "backend"),
    "backend_ejections": ("pool", "backend"),
    # filled in by the worker from its state store and shared rate limits
    "store_errors": ("store",),
    "ratelimit_fallbacks": ("listener",),
    # filled in by the worker from its HTTP cache (a route's key is "listener/route")
    "cache_hits": ("listener", "route"),
    "cache_misses": ("listener", "route"),
    "cache_stale": ("listener", "route"),
    "cache_revalidations": ("listener", "route"),
    "cache_stored": ("listener", "route"),
    "cache_evictions": ("tier",),
    # response bodies compressed on the fly: bytes in, and bytes out, per coding
    "compression_in_bytes": ("coding",),
    "compression_out_bytes": ("coding",),
    # filled in by the worker from its acceptors and access / ban filters
    "access_denied": ("listener", "where"),
    "bans": ("listener", "rule"),
    "banned_requests": ("listener",),
    "accept_exhausted": ("listener",),
    "accept_paused": ("listener",),
}
# Gauges: what is true now, from the living workers only.
GAUGES: Final[Mapping[str, GaugeSpec]] = {
    "active_connections": GaugeSpec(("listener",), "sum"),
    "pool_queue_length": GaugeSpec(("pool",), "sum"),
    "backend_in_flight": GaugeSpec(("pool", "backend"), "sum"),
    # every worker hears the same active-check verdicts: up only if all of them say so
    "backend_up": GaugeSpec(("pool", "backend"), "min"),
    # passive ejection is each worker's own verdict: the number of workers ejecting the server
    "backend_ejected": GaugeSpec(("pool", "backend"), "sum"),
    "backend_weight": GaugeSpec(("pool", "backend"), "max"),
    # each worker has its own memory tier: the bytes of all of them
    "cache_bytes": GaugeSpec(("tier",), "sum"),
    "cache_entries": GaugeSpec(("tier",), "sum"),
    "cache_disk_bytes": GaugeSpec(("tier",), "max"),
}
HISTOGRAMS: Final[Mapping[str, HistogramSpec]] = {
    "request_duration": HistogramSpec(("listener", "pool"), DURATION_BUCKETS),
    "upstream_connect": HistogramSpec(("pool",), CONNECT_BUCKETS),
}


# ---------------------------------------------------------------------------------------------
# What a worker's pools must offer (upstreams.pool.Pool and upstreams.backend.BackendState do)


class BackendLike(Protocol):
    """The live state of one server that a snapshot reads."""

    @property
    def name(self) -> str: ...
    @property
    def weight(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def requests(self) -> int: ...
    @property
    def failures(self) -> int: ...
    @property
    def active_up(self) -> bool: ...
    @property
    def ejected(self) -> bool: ...


class EjectionCount(Protocol):
    def ejections(self, server: str) -> int: ...


class PoolLike(Protocol):
    """The live state of one pool that a snapshot reads."""

    @property
    def backends(self) -> Sequence[BackendLike]: ...
    @property
    def queue(self) -> Sized: ...
    @property
    def outliers(self) -> EjectionCount | None: ...


# ---------------------------------------------------------------------------------------------
# The worker's side


class Histogram:
    """Counts of observed values per fixed bucket, and their sum (one worker's, mutable)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bucket(self.bounds, value)] += 1
        self.sum += value

    def row(self) -> list[Any]:
        return [list(self.counts), self.sum]


def bucket(bounds: tuple[float, ...], value: float) -> int:
    """bisect_left(bounds, value) (`bounds` sorted): the first bound >= value, so a value equal
    to a bound counts in its bucket, as Prometheus' `le` ("less or equal") says. A loop,
    compiled: most durations fall in the first buckets, and the call to bisect_left cost ~700
    instructions a request."""
    index = 0
    for bound in bounds:
        if not bound < value:  # as bisect_left compares (NaN: the first bucket)
            return index
        index += 1
    return index


class ByteCounter:
    """Bytes read from and written to one listener's client connections, in one worker: the
    connections add to it as they read and write (an int addition: no call per read)."""

    __slots__ = ("received", "sent")

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0


class CodingCounter:
    """Bytes a coding compressed in one worker: taken (`before`) and given (`after`). The
    compressors add to it as they go (see `portico.compression.codecs.CodingBytes`)."""

    __slots__ = ("after", "before")

    def __init__(self) -> None:
        self.before = 0
        self.after = 0


class _Listener:
    """One listener's counters in one worker."""

    __slots__ = (
        "active",
        "bytes",
        "connections",
        "durations",
        "h2_abuse",
        "ratelimited",
        "requests",
    )

    def __init__(self) -> None:
        self.active = 0
        self.connections = 0
        self.bytes = ByteCounter()
        self.ratelimited = 0
        self.h2_abuse = 0
        # route -> pool -> server -> requests per status class (indexed as CODE_CLASSES)
        self.requests: dict[str, dict[str, dict[str, list[int]]]] = {}
        self.durations: dict[str, Histogram] = {}  # pool -> request durations


class _Pool:
    """One pool's counters in one worker (its live state is read from the Pool itself)."""

    __slots__ = ("connect", "retries")

    def __init__(self) -> None:
        self.retries = 0
        self.connect = Histogram(CONNECT_BUCKETS)


class _Monotonic:
    """A counter kept by another object that may start over (a server's `failures` when its
    pool is rebuilt, an outlier detector's ejection count when it forgets a server): the sum of
    its increases, so what we report never goes down."""

    __slots__ = ("last", "total")

    def __init__(self) -> None:
        self.last = 0
        self.total = 0

    def see(self, raw: int) -> int:
        # a value below the last one means the source started over from 0
        self.total += raw - self.last if raw >= self.last else raw
        self.last = raw
        return self.total


class WorkerStats:
    """The counters of one worker, cumulative since it started.

    Names passed in are config names: a listener, a route (`NO_ROUTE` when the listener has no
    routes), a pool, a server (None when no server answered: a local answer, a 502/503).
    """

    def __init__(
        self,
        listeners: Iterable[str] = (),
        pools: Iterable[str] = (),
        max_series: int = MAX_SERIES,
    ) -> None:
        self._max_series = max_series  # a parameter (not the module constant) for tests
        self._listeners: dict[str, _Listener] = {}
        self._pools: dict[str, _Pool] = {}
        self._series = 0  # request series and duration histograms made so far
        self._overflow_requests = [0] * len(CODE_CLASSES)
        self._overflow_duration = Histogram(DURATION_BUCKETS)
        self._sources: dict[tuple[str, str, str], _Monotonic] = {}
        self._codings: dict[str, CodingCounter] = {}
        # made up front, so that their series exist (at 0) from the first snapshot on: a
        # counter that appears only with its first increment hides that increment from rate()
        for name in listeners:
            self._listener(name)
        for name in pools:
            self._pool(name)

    @classmethod
    def for_config(cls, config: Config) -> WorkerStats:
        stats = cls((listener.name for listener in config.listeners), config.pools)
        for listener in config.listeners:
            sections = [listener.compression]
            for route in listener.routes:
                sections.append(route.compression)
            for section in sections:
                if section is not None:
                    for coding in section.algorithms:
                        stats.coding_bytes(coding)
        return stats

    def coding_bytes(self, coding: str) -> CodingCounter:
        """The counter compressors of `coding` (a config name: zstd, br, gzip) add to."""
        counter = self._codings.get(coding)
        if counter is None:
            counter = self._codings[coding] = CodingCounter()
        return counter

    # -- the hot path -------------------------------------------------------------------------

    def request_done(
        self,
        listener: str,
        route: str,
        pool: str,
        backend: str | None,
        status: int,
        duration: float,
        upstream_connect: float | None,
    ) -> None:
        """One request has been answered (or given up on: `status` 0 when none was sent).

        `duration`: seconds from its head to its last response byte; `upstream_connect`: the
        seconds a new server connection took, None when a pooled one was reused or none was
        needed. `pool` is "" when the request never reached one. Its bytes are counted by
        its connection (`client_bytes`).
        """
        entry = self._listeners.get(listener)
        if entry is None:
            entry = self._listener(listener)
        server = "" if backend is None else backend
        try:
            classes = entry.requests[route][pool][server]
        except KeyError:
            classes = self._request_series(entry, route, pool, server)
        code = status // 100
        code = code if 0 < code < 6 else 0
        classes[code] = classes[code] + 1  # (compiled: an int addition, not `+=` on an object)
        histogram = entry.durations.get(pool)
        if histogram is None:
            histogram = self._duration_series(entry, pool)
        counts = histogram.counts  # Histogram.observe
        index = bucket(histogram.bounds, duration)
        counts[index] = counts[index] + 1
        histogram.sum += duration
        if upstream_connect is not None:
            counters = self._pools.get(pool)
            if counters is None:
                counters = self._pool(pool)
            counters.connect.observe(upstream_connect)

    def retry(self, pool: str) -> None:
        """A request is tried again on another server of `pool`."""
        counters = self._pools.get(pool)
        if counters is None:
            counters = self._pool(pool)
        counters.retries += 1

    def ratelimited(self, listener: str) -> None:
        """A request was refused by a rate limit (429)."""
        entry = self._listeners.get(listener)
        if entry is None:
            entry = self._listener(listener)
        entry.ratelimited += 1

    def active_connections(self, listener: str) -> int:
        """Client connections of `listener` open now in this worker (for `max_conns`)."""
        entry = self._listeners.get(listener)
        return entry.active if entry is not None else 0

    def h2_abuse(self, listener: str) -> None:
        """An HTTP/2 connection was closed for abuse (rapid reset, a control-frame flood)."""
        entry = self._listeners.get(listener)
        if entry is None:
            entry = self._listener(listener)
        entry.h2_abuse += 1

    def client_bytes(self, listener: str) -> ByteCounter:
        """The byte counter a client connection of `listener` adds what it reads and writes
        to, as it happens (so a long download shows in the rates while it runs)."""
        entry = self._listeners.get(listener)
        if entry is None:
            entry = self._listener(listener)
        return entry.bytes

    def connection_opened(self, listener: str) -> None:
        entry = self._listeners.get(listener)
        if entry is None:
            entry = self._listener(listener)
        entry.connections += 1
        entry.active += 1

    def connection_closed(self, listener: str, bytes_in: int = 0, bytes_out: int = 0) -> None:
        """A client connection counted by `connection_opened` closed; bytes it did not add to
        `client_bytes` as they went (a TCP relay's, a WebSocket tunnel's) are added here."""
        entry = self._listeners.get(listener)
        if entry is None:
            entry = self._listener(listener)
        entry.active -= 1
        entry.bytes.received += bytes_in
        entry.bytes.sent += bytes_out

    # -- first sight of a name (not the hot path) ---------------------------------------------

    def _listener(self, name: str) -> _Listener:
        if len(self._listeners) >= self._max_series:
            name = OVERFLOW
            entry = self._listeners.get(name)
            if entry is not None:
                return entry
        entry = self._listeners[name] = _Listener()
        return entry

    def _pool(self, name: str) -> _Pool:
        if len(self._pools) >= self._max_series:
            name = OVERFLOW
            counters = self._pools.get(name)
            if counters is not None:
                return counters
        counters = self._pools[name] = _Pool()
        return counters

    def _request_series(self, entry: _Listener, route: str, pool: str, server: str) -> list[int]:
        if self._series >= self._max_series:
            return self._overflow_requests
        self._series += 1
        classes = [0] * len(CODE_CLASSES)
        entry.requests.setdefault(route, {}).setdefault(pool, {})[server] = classes
        return classes

    def _duration_series(self, entry: _Listener, pool: str) -> Histogram:
        if self._series >= self._max_series:
            return self._overflow_duration
        self._series += 1
        histogram = entry.durations[pool] = Histogram(DURATION_BUCKETS)
        return histogram

    # -- the snapshot sent to the supervisor ---------------------------------------------------

    def snapshot(self, pools: Mapping[str, PoolLike] | None = None) -> dict[str, Any]:
        """Every counter of this worker, and the live state of `pools` (the worker's own: in
        flight, queue, health, weight), as plain JSON-able data in the module's format."""
        counters: dict[str, list[list[Any]]] = {name: [] for name in COUNTERS}
        gauges: dict[str, list[list[Any]]] = {name: [] for name in GAUGES}
        histograms: dict[str, list[list[Any]]] = {name: [] for name in HISTOGRAMS}
        requests = counters["requests"]
        for name, entry in self._listeners.items():
            counters["client_received_bytes"].append([name, entry.bytes.received])
            counters["client_sent_bytes"].append([name, entry.bytes.sent])
            counters["connections"].append([name, entry.connections])
            counters["ratelimited"].append([name, entry.ratelimited])
            counters["h2_abuse"].append([name, entry.h2_abuse])
            gauges["active_connections"].append([name, entry.active])
            for route, by_pool in entry.requests.items():
                for pool, by_server in by_pool.items():
                    for server, classes in by_server.items():
                        requests.extend(
                            [name, route, pool, server, CODE_CLASSES[i], n]
                            for i, n in enumerate(classes)
                            if n
                        )
            for pool, histogram in entry.durations.items():
                histograms["request_duration"].append([name, pool, *histogram.row()])
        for i, n in enumerate(self._overflow_requests):
            if n:
                requests.append([OVERFLOW] * 4 + [CODE_CLASSES[i], n])
        if any(self._overflow_duration.counts):
            histograms["request_duration"].append(
                [OVERFLOW, OVERFLOW, *self._overflow_duration.row()]
            )
        for name, counters_of in self._pools.items():
            counters["retries"].append([name, counters_of.retries])
            histograms["upstream_connect"].append([name, *counters_of.connect.row()])
        for coding, bytes_of in self._codings.items():
            counters["compression_in_bytes"].append([coding, bytes_of.before])
            counters["compression_out_bytes"].append([coding, bytes_of.after])
        for name, live in (pools or {}).items():
            self._pool_state(name, live, counters, gauges)
        return {"counters": counters, "gauges": gauges, "histograms": histograms}

    def _pool_state(
        self,
        name: str,
        pool: PoolLike,
        counters: dict[str, list[list[Any]]],
        gauges: dict[str, list[list[Any]]],
    ) -> None:
        gauges["pool_queue_length"].append([name, len(pool.queue)])
        outliers = pool.outliers
        for backend in pool.backends:
            server = backend.name
            gauges["backend_in_flight"].append([name, server, backend.in_flight])
            gauges["backend_up"].append([name, server, 1 if backend.active_up else 0])
            gauges["backend_ejected"].append([name, server, 1 if backend.ejected else 0])
            gauges["backend_weight"].append([name, server, backend.weight])
            ejections = outliers.ejections(server) if outliers is not None else 0
            for metric, raw in (
                ("backend_requests", backend.requests),
                ("backend_failures", backend.failures),
                ("backend_ejections", ejections),
            ):
                source = self._sources.get((metric, name, server))
                if source is None:
                    source = self._sources[metric, name, server] = _Monotonic()
                counters[metric].append([name, server, source.see(raw)])


# ---------------------------------------------------------------------------------------------
# The supervisor's side


@dataclass(frozen=True, slots=True)
class HistogramData:
    """A histogram's per-bucket counts (the last: above every bound) and sum."""

    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[int]:
        """Counts of values <= each bound, then the total (Prometheus' ``le`` buckets)."""
        out, running = [], 0
        for n in self.counts:
            running += n
            out.append(running)
        return out

    def plus(self, other: HistogramData) -> HistogramData:
        counts = tuple(a + b for a, b in zip(self.counts, other.counts, strict=True))
        return HistogramData(counts, self.sum + other.sum)


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    """One worker's snapshot, checked and keyed by label values."""

    counters: Mapping[str, Mapping[Labels, float]] = field(default_factory=dict)
    gauges: Mapping[str, Mapping[Labels, float]] = field(default_factory=dict)
    histograms: Mapping[str, Mapping[Labels, HistogramData]] = field(default_factory=dict)


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: {value!r} is not a finite number")
    return value


def _labels(row: Sequence[object], count: int, where: str) -> Labels:
    labels = tuple(row[:count])
    if not all(isinstance(label, str) for label in labels):
        raise ValueError(f"{where}: labels must be text, got {labels!r}")
    return cast(Labels, labels)


def _rows(section: object, where: str) -> Mapping[str, object]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ValueError(f"{where} must be a mapping, not {type(section).__name__}")
    return section


def _checked_rows(rows: object, width: int, where: str) -> list[Sequence[object]]:
    if not isinstance(rows, list):
        raise ValueError(f"{where} must be a list of rows")
    for row in rows:
        if not isinstance(row, list) or len(row) != width:
            raise ValueError(f"{where}: {row!r} is not a row of {width} items")
    return rows


def parse_snapshot(data: object) -> WorkerSnapshot:
    """Check a snapshot received from a worker (decoded JSON) and key it by labels; raises
    ValueError naming the first problem. Metrics this version does not know are skipped, so
    that workers of a newer version may report more."""
    if not isinstance(data, dict):
        raise ValueError(f"a snapshot must be a mapping, not {type(data).__name__}")
    counters: dict[str, dict[Labels, float]] = {}
    for name, rows in _rows(data.get("counters"), "counters").items():
        labels = COUNTERS.get(name)
        if labels is None:
            continue
        where = f"counters.{name}"
        series = counters[name] = {}
        for row in _checked_rows(rows, len(labels) + 1, where):
            value = _number(row[-1], where)
            if value < 0:
                raise ValueError(f"{where}: a counter cannot be negative ({value!r})")
            key = _labels(row, len(labels), where)
            series[key] = series.get(key, 0) + value
    gauges: dict[str, dict[Labels, float]] = {}
    for name, rows in _rows(data.get("gauges"), "gauges").items():
        spec = GAUGES.get(name)
        if spec is None:
            continue
        where = f"gauges.{name}"
        gauges[name] = {
            _labels(row, len(spec.labels), where): _number(row[-1], where)
            for row in _checked_rows(rows, len(spec.labels) + 1, where)
        }
    histograms: dict[str, dict[Labels, HistogramData]] = {}
    for name, rows in _rows(data.get("histograms"), "histograms").items():
        hspec = HISTOGRAMS.get(name)
        if hspec is None:
            continue
        where = f"histograms.{name}"
        hseries = histograms[name] = {}
        width = len(hspec.labels)
        for row in _checked_rows(rows, width + 2, where):
            counts = row[width]
            if (
                not isinstance(counts, list)
                or len(counts) != len(hspec.bounds) + 1
                or not all(
                    isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts
                )
            ):
                raise ValueError(
                    f"{where}: {counts!r} is not {len(hspec.bounds) + 1} bucket counts"
                )
            histogram = HistogramData(tuple(counts), _number(row[-1], where))
            key = _labels(row, width, where)
            previous = hseries.get(key)
            hseries[key] = histogram if previous is None else previous.plus(histogram)
    return WorkerSnapshot(counters, gauges, histograms)


@dataclass(frozen=True, slots=True)
class MergedStats:
    """The sum over every worker: counters and histograms of living and exited workers,
    gauges of living ones (combined by each gauge's `merge`)."""

    counters: Mapping[str, Mapping[Labels, float]]
    gauges: Mapping[str, Mapping[Labels, float]]
    histograms: Mapping[str, Mapping[Labels, HistogramData]]
    workers: int  # living workers

    def value(self, metric: str, *labels: str) -> float | None:
        """One series of a counter or gauge, or None when no worker has reported it."""
        series = self.counters.get(metric)
        if series is None:
            series = self.gauges.get(metric, {})
        return series.get(labels)

    def total(self, metric: str, **match: str) -> float:
        """The sum of a counter's or gauge's series whose labels have the values in `match`:
        ``total("requests", listener="web")``."""
        series = self.counters.get(metric)
        names: Labels
        if series is not None:
            names = COUNTERS[metric]
        else:
            series = self.gauges.get(metric, {})
            names = GAUGES[metric].labels if metric in GAUGES else ()
        wanted = [(names.index(key), value) for key, value in match.items()]
        return sum(
            value
            for labels, value in series.items()
            if all(labels[i] == expected for i, expected in wanted)
        )


_EMPTY: Final = WorkerSnapshot()


class StatsAggregator:
    """The latest snapshot of each living worker, and what exited workers left behind.

    Call `started` when a worker process is spawned, `update` with each snapshot it sends, and
    `exited` once its channel has closed (after its last snapshot). A worker is known by its
    pid; a pid used again later is a new worker, starting from zero.
    """

    def __init__(self) -> None:
        self._living: dict[int, WorkerSnapshot] = {}
        # counters and histograms of exited workers: totals carry on across restarts, reloads
        self._retired_counters: dict[str, dict[Labels, float]] = {}
        self._retired_histograms: dict[str, dict[Labels, HistogramData]] = {}

    @property
    def workers(self) -> int:
        return len(self._living)

    def started(self, worker: int) -> None:
        self._living.setdefault(worker, _EMPTY)

    def update(self, worker: int, snapshot: object) -> None:
        """Replace what `worker` reported before; raises ValueError (and keeps the previous
        snapshot) when `snapshot` is malformed."""
        self._living[worker] = parse_snapshot(snapshot)

    def exited(self, worker: int) -> None:
        """Fold the counters of a worker that is gone into the retired base; its gauges
        (connections, requests in flight) went with it."""
        snapshot = self._living.pop(worker, None)
        if snapshot is None:
            return
        _add_counters(self._retired_counters, snapshot.counters)
        _add_histograms(self._retired_histograms, snapshot.histograms)

    def merged(self) -> MergedStats:
        counters = {name: dict(series) for name, series in self._retired_counters.items()}
        histograms = {name: dict(series) for name, series in self._retired_histograms.items()}
        gauges: dict[str, dict[Labels, float]] = {}
        for snapshot in self._living.values():
            _add_counters(counters, snapshot.counters)
            _add_histograms(histograms, snapshot.histograms)
            for name, series in snapshot.gauges.items():
                spec = GAUGES[name]
                merged = gauges.setdefault(name, {})
                for labels, value in series.items():
                    before = merged.get(labels)
                    if before is None:
                        merged[labels] = value
                    elif spec.merge == "sum":
                        merged[labels] = before + value
                    elif spec.merge == "min":
                        merged[labels] = min(before, value)
                    else:
                        merged[labels] = max(before, value)
        return MergedStats(counters, gauges, histograms, len(self._living))


def _add_counters(
    into: dict[str, dict[Labels, float]], counters: Mapping[str, Mapping[Labels, float]]
) -> None:
    for name, series in counters.items():
        total = into.setdefault(name, {})
        for labels, value in series.items():
            total[labels] = total.get(labels, 0) + value


def _add_histograms(
    into: dict[str, dict[Labels, HistogramData]],
    histograms: Mapping[str, Mapping[Labels, HistogramData]],
) -> None:
    for name, series in histograms.items():
        total = into.setdefault(name, {})
        for labels, value in series.items():
            before = total.get(labels)
            total[labels] = value if before is None else before.plus(value)
