"""Portico's metrics in Prometheus' formats, from the supervisor's merged worker counters.

Owns the metric names and help texts (``portico_*``), `PorticoCollector` (a prometheus-client
custom collector that turns `StatsAggregator.merged()` into metric families at each scrape)
and `PrometheusExporter` (its own registry, and the text for one scrape in the format the
scraper asked for). One registry in the supervisor, fed by the snapshots the workers send:
never prometheus-client's multiprocess mode, never a metric object per series, never a
collector of the supervisor's own process (the workers do the work; their pids change).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Final

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry

from portico.observe.stats import COUNTERS, GAUGES, HISTOGRAMS, MergedStats, StatsAggregator

__all__ = [
    "METRICS",
    "CounterMetricFamily",
    "GaugeMetricFamily",
    "Metric",
    "PorticoCollector",
    "PrometheusExporter",
]

# stats name -> (Prometheus name, help). Counters get `_total` from prometheus-client.
METRICS: Final[dict[str, tuple[str, str]]] = {
    "requests": (
        "portico_requests",
        "Requests answered, by listener, route, pool, server (backend, empty when no server "
        'answered) and status class (code_class "none": the client left before a status).',
    ),
    "client_received_bytes": (
        "portico_client_received_bytes",
        "Bytes read from client connections: request heads and bodies with their framing "
        "(chunk sizes, HTTP/2 frames), PROXY headers, tunnelled and TCP bytes; after TLS "
        "decryption.",
    ),
    "client_sent_bytes": (
        "portico_client_sent_bytes",
        "Bytes written to client connections, counted as client_received_bytes is: response "
        "heads and bodies with their framing, Portico's own answers, tunnelled and TCP bytes.",
    ),
    "connections": ("portico_connections", "Client connections accepted."),
    "ratelimited": ("portico_ratelimited", "Requests refused by a rate limit (429)."),
    "h2_abuse": (
        "portico_h2_abuse",
        "HTTP/2 connections closed for abuse (rapid reset, control-frame floods).",
    ),
    "retries": ("portico_retries", "Requests tried again on another server."),
    "compression_in_bytes": (
        "portico_compression_in_bytes",
        "Response body bytes compressed on the fly, before compression, by coding.",
    ),
    "compression_out_bytes": (
        "portico_compression_out_bytes",
        "The same bodies' bytes after compression, by coding (out / in: the ratio).",
    ),
    "store_errors": (
        "portico_store_errors",
        "State store calls that failed, timed out or were skipped while it was down.",
    ),
    "ratelimit_fallbacks": (
        "portico_ratelimit_fallbacks",
        "Shared rate-limit decisions taken by the fallback while the store was unreachable.",
    ),
    "access_denied": (
        "portico_access_denied",
        "Clients refused by an IP access list: at accept (closed before any byte is read), "
        "or per request (route lists, clients behind trusted proxies).",
    ),
    "bans": ("portico_bans", "Client keys banned by an abuse rule (bans)."),
    "banned_requests": (
        "portico_banned_requests",
        "Requests refused because their client key is banned.",
    ),
    "accept_exhausted": (
        "portico_accept_exhausted",
        "accept(2) failures for want of file descriptors or memory (EMFILE, ENFILE, ...): "
        "accepting paused briefly each time.",
    ),
    "accept_paused": (
        "portico_accept_paused",
        "Times accepting paused because the listener reached max_conns in a worker.",
    ),
    "backend_requests": (
        "portico_backend_requests",
        "Requests sent to a server, each attempt counted (retries too).",
    ),
    "backend_failures": (
        "portico_backend_failures",
        "Requests a server failed: connect errors, timeouts, broken connections.",
    ),
    "backend_ejections": (
        "portico_backend_ejections",
        "Times a server was ejected by passive health checking (summed over workers).",
    ),
    "active_connections": ("portico_active_connections", "Client connections open now."),
    "pool_queue_length": (
        "portico_pool_queue_length",
        "Requests waiting for a server below max_conns.",
    ),
    "backend_in_flight": ("portico_backend_in_flight", "Requests a server is handling now."),
    "backend_up": (
        "portico_backend_up",
        "1 while a server passes its active health checks (always 1 without checks), else 0.",
    ),
    "backend_ejected": (
        "portico_backend_ejected",
        "Workers that have ejected a server now (passive health checking is per worker).",
    ),
    "backend_weight": ("portico_backend_weight", "A server's balancing weight."),
    "cache_hits": (
        "portico_cache_hits",
        "Requests answered from the HTTP cache (fresh, or stale where allowed), by route.",
    ),
    "cache_misses": (
        "portico_cache_misses",
        "Cacheable requests (GET, HEAD) with nothing stored for them, by route.",
    ),
    "cache_stale": (
        "portico_cache_stale",
        "Stale responses served: max-stale, stale-while-revalidate, stale-if-error.",
    ),
    "cache_revalidations": (
        "portico_cache_revalidations",
        "Conditional requests sent to validate a stored response (in the background too).",
    ),
    "cache_stored": ("portico_cache_stored", "Responses stored in the HTTP cache."),
    "cache_evictions": (
        "portico_cache_evictions",
        "Stored responses dropped to keep the cache within its size.",
    ),
    "cache_bytes": ("portico_cache_bytes", "Bytes the HTTP cache holds now (every worker)."),
    "cache_entries": ("portico_cache_entries", "Responses the HTTP cache holds now."),
    "cache_disk_bytes": (
        "portico_cache_disk_bytes",
        "Bytes in the HTTP cache's disk tier (shared by the workers), as a worker last saw it.",
    ),
    "request_duration": (
        "portico_request_duration_seconds",
        "Seconds from a request's head to its last response byte.",
    ),
    "upstream_connect": (
        "portico_upstream_connect_seconds",
        "Seconds to open a connection to a server (pooled connections are not counted).",
    ),
}
WORKERS: Final = ("portico_workers", "Worker processes running (reporting to the supervisor).")


class PorticoCollector:
    """A prometheus-client collector over the supervisor's aggregator: every scrape reads the
    merged view as it is then (at most one snapshot interval old)."""

    def __init__(self, aggregator: StatsAggregator) -> None:
        self.aggregator = aggregator

    def collect(self) -> Iterator[Metric]:
        merged = self.aggregator.merged()
        yield from _counters(merged)
        yield from _gauges(merged)
        yield from _histograms(merged)
        name, documentation = WORKERS
        yield GaugeMetricFamily(name, documentation, value=merged.workers)


def _counters(merged: MergedStats) -> Iterator[Metric]:
    for key, labels in COUNTERS.items():
        name, documentation = METRICS[key]
        family = CounterMetricFamily(name, documentation, labels=labels)
        for values, value in sorted(merged.counters.get(key, {}).items()):
            family.add_metric(values, value)
        yield family


def _gauges(merged: MergedStats) -> Iterator[Metric]:
    for key, spec in GAUGES.items():
        name, documentation = METRICS[key]
        family = GaugeMetricFamily(name, documentation, labels=spec.labels)
        for values, value in sorted(merged.gauges.get(key, {}).items()):
            family.add_metric(values, value)
        yield family


def _histograms(merged: MergedStats) -> Iterator[Metric]:
    for key, spec in HISTOGRAMS.items():
        name, documentation = METRICS[key]
        family = HistogramMetricFamily(name, documentation, labels=spec.labels)
        bounds = [repr(float(bound)) for bound in spec.bounds] + ["+Inf"]  # le="0.005"
        for values, histogram in sorted(merged.histograms.get(key, {}).items()):
            buckets = list(zip(bounds, histogram.cumulative(), strict=True))
            family.add_metric(values, buckets, histogram.sum)
        yield family


class _Own:
    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families()


class PrometheusExporter:
    """The supervisor's registry: Portico's metrics and nothing else."""

    def __init__(
        self,
        aggregator: StatsAggregator,
        own: Callable[[], Iterable[Metric]] | None = None,
    ) -> None:
        """`own`: the supervisor's own series (not the workers'), read at each scrape."""
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PorticoCollector(aggregator))
        if own is not None:
            self.registry.register(_Own(own))

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """One scrape: the body and its Content-Type, in the format `accept` (the scraper's
        Accept header) asks for: OpenMetrics, or else Prometheus' text format."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
