"""The Prometheus exposition of the merged counters, read back with prometheus-client's parser."""

from __future__ import annotations

import json
import math
import random

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from portico.config.schema import PoolConfig
from portico.observe.prometheus import PrometheusExporter
from portico.observe.stats import DURATION_BUCKETS, StatsAggregator, WorkerStats
from portico.upstreams.pool import Pool

EXPECTED = {
    # the list
    "portico_requests": ("counter", {"listener", "route", "pool", "backend", "code_class"}),
    "portico_request_duration_seconds": ("histogram", {"listener", "pool"}),
    "portico_upstream_connect_seconds": ("histogram", {"pool"}),
    "portico_client_received_bytes": ("counter", {"listener"}),
    "portico_client_sent_bytes": ("counter", {"listener"}),
    "portico_active_connections": ("gauge", {"listener"}),
    "portico_backend_in_flight": ("gauge", {"pool", "backend"}),
    "portico_backend_up": ("gauge", {"pool", "backend"}),
    "portico_backend_ejected": ("gauge", {"pool", "backend"}),
    "portico_backend_ejections": ("counter", {"pool", "backend"}),
    "portico_pool_queue_length": ("gauge", {"pool"}),
    "portico_retries": ("counter", {"pool"}),
    "portico_store_errors": ("counter", {"store"}),
    "portico_ratelimit_fallbacks": ("counter", {"listener"}),
    "portico_ratelimited": ("counter", {"listener"}),
    "portico_h2_abuse": ("counter", {"listener"}),
    "portico_access_denied": ("counter", {"listener", "where"}),
    "portico_bans": ("counter", {"listener", "rule"}),
    "portico_banned_requests": ("counter", {"listener"}),
    "portico_accept_exhausted": ("counter", {"listener"}),
    "portico_accept_paused": ("counter", {"listener"}),
    "portico_workers": ("gauge", set()),
    # and a few more
    "portico_connections": ("counter", {"listener"}),
    "portico_backend_requests": ("counter", {"pool", "backend"}),
    "portico_backend_failures": ("counter", {"pool", "backend"}),
    "portico_backend_weight": ("gauge", {"pool", "backend"}),
    # the HTTP cache's (issue #14)
    "portico_cache_hits": ("counter", {"listener", "route"}),
    "portico_cache_misses": ("counter", {"listener", "route"}),
    "portico_cache_stale": ("counter", {"listener", "route"}),
    "portico_cache_revalidations": ("counter", {"listener", "route"}),
    "portico_cache_stored": ("counter", {"listener", "route"}),
    "portico_cache_evictions": ("counter", {"tier"}),
    "portico_cache_bytes": ("gauge", {"tier"}),
    "portico_cache_entries": ("gauge", {"tier"}),
    "portico_cache_disk_bytes": ("gauge", {"tier"}),
    "portico_compression_in_bytes": ("counter", {"coding"}),
    "portico_compression_out_bytes": ("counter", {"coding"}),
}


def worker_snapshot(requests: int, durations: list[float]) -> object:
    stats = WorkerStats(["web"], ["app"])
    for i in range(requests):
        stats.request_done(
            "web",
            "default",
            "app",
            "s0",
            200 if i % 4 else 503,
            durations[i % len(durations)],
            0.0007,
        )
        stats.client_bytes("web").sent += 500
    gzip = stats.coding_bytes("gzip")
    gzip.before += 1000
    gzip.after += 250
    stats.retry("app")
    stats.ratelimited("web")
    stats.connection_opened("web")
    pool = Pool.from_config(
        "app",
        PoolConfig(servers=[{"address": "127.0.0.1:1", "name": "s0"}]),
        lambda: 0.0,
        random.Random(1),
    )
    pool.backends[0].in_flight = 2
    return json.loads(json.dumps(stats.snapshot({"app": pool})))


@pytest.fixture
def exporter() -> PrometheusExporter:
    aggregator = StatsAggregator()
    aggregator.update(1, worker_snapshot(8, [0.001, 0.02, 0.3, 20.0]))
    aggregator.update(2, worker_snapshot(4, [0.001]))
    aggregator.update(3, worker_snapshot(4, [0.001]))
    aggregator.exited(3)  # its counters stay in the totals
    return PrometheusExporter(aggregator)


def samples(text: str) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        out[family.name] = family.samples
    return out


def value(found: list[Sample], name: str, **labels: str) -> float:
    matching = [s.value for s in found if s.name == name and s.labels == labels]
    assert len(matching) == 1, (name, labels, found)
    return matching[0]


def test_compressed_bytes_per_coding_are_summed_over_workers(
    exporter: PrometheusExporter,
) -> None:
    found = samples(exporter.render()[0].decode())
    name = "portico_compression_in_bytes_total"
    assert value(found["portico_compression_in_bytes"], name, coding="gzip") == 3000
    name = "portico_compression_out_bytes_total"
    assert value(found["portico_compression_out_bytes"], name, coding="gzip") == 750


def test_every_metric_family_is_exposed_with_its_type_and_labels(
    exporter: PrometheusExporter,
) -> None:
    body, content_type = exporter.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert set(families) == set(EXPECTED)
    for name, (kind, labels) in EXPECTED.items():
        family = families[name]
        assert family.type == kind, name
        assert family.documentation, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample)


def test_counters_sum_living_and_exited_workers(exporter: PrometheusExporter) -> None:
    found = samples(exporter.render()[0].decode())
    labels = {"listener": "web", "route": "default", "pool": "app", "backend": "s0"}
    requests = found["portico_requests"]
    assert value(requests, "portico_requests_total", **labels, code_class="2xx") == 6 + 3 + 3
    assert value(requests, "portico_requests_total", **labels, code_class="5xx") == 2 + 1 + 1
    assert value(found["portico_retries"], "portico_retries_total", pool="app") == 3
    assert value(found["portico_ratelimited"], "portico_ratelimited_total", listener="web") == 3
    sent = found["portico_client_sent_bytes"]
    assert value(sent, "portico_client_sent_bytes_total", listener="web") == 16 * 500


def test_gauges_come_from_living_workers_only(exporter: PrometheusExporter) -> None:
    found = samples(exporter.render()[0].decode())
    assert value(found["portico_workers"], "portico_workers") == 2
    in_flight = found["portico_backend_in_flight"]
    assert value(in_flight, "portico_backend_in_flight", pool="app", backend="s0") == 4
    active = found["portico_active_connections"]
    assert value(active, "portico_active_connections", listener="web") == 2
    assert value(found["portico_backend_up"], "portico_backend_up", pool="app", backend="s0") == 1


def test_histograms_have_cumulative_buckets_a_count_and_a_sum(
    exporter: PrometheusExporter,
) -> None:
    found = samples(exporter.render()[0].decode())["portico_request_duration_seconds"]
    labels = {"listener": "web", "pool": "app"}
    buckets = [(s.labels["le"], s.value) for s in found if s.name.endswith("_bucket")]
    assert all(s.labels == {**labels, "le": s.labels["le"]} for s in found if "le" in s.labels)
    assert [le for le, _ in buckets] == [repr(b) for b in DURATION_BUCKETS] + ["+Inf"]
    counts = [count for _, count in buckets]
    assert counts == sorted(counts)  # cumulative
    assert dict(buckets)["0.005"] == 2 + 4 + 4  # the 1 ms requests
    assert dict(buckets)["0.025"] == 2 + 4 + 4 + 2
    assert dict(buckets)["10.0"] == 14  # 20 s requests fall above every bound
    assert counts[-1] == 16
    assert value(found, "portico_request_duration_seconds_count", **labels) == 16
    assert math.isclose(
        value(found, "portico_request_duration_seconds_sum", **labels),
        2 * (0.001 + 0.02 + 0.3 + 20.0) + 8 * 0.001,
    )
    connect = samples(exporter.render()[0].decode())["portico_upstream_connect_seconds"]
    assert value(connect, "portico_upstream_connect_seconds_count", pool="app") == 16


def test_openmetrics_when_the_scraper_asks_for_it(exporter: PrometheusExporter) -> None:
    body, content_type = exporter.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_no_worker_yet_exposes_empty_families_and_zero_workers() -> None:
    found = samples(PrometheusExporter(StatsAggregator()).render()[0].decode())
    assert value(found["portico_workers"], "portico_workers") == 0
    assert found["portico_requests"] == []


def test_label_values_are_escaped() -> None:
    stats = WorkerStats()
    stats.request_done('we"b\\', "routes[0]", "a\npp", None, 200, 0.1, None)
    aggregator = StatsAggregator()
    aggregator.update(1, stats.snapshot())
    found = samples(PrometheusExporter(aggregator).render()[0].decode())["portico_requests"]
    assert found[0].labels == {
        "listener": 'we"b\\',
        "route": "routes[0]",
        "pool": "a\npp",
        "backend": "",
        "code_class": "2xx",
    }
