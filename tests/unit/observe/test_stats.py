"""WorkerStats (the hot-path counters, the snapshot) and StatsAggregator (the supervisor's sum)."""

from __future__ import annotations

import gc
import json
import random
import tracemalloc
from bisect import bisect_left
from typing import Any

import pytest

from portico.config.load import parse_config
from portico.config.schema import PoolConfig
from portico.observe.stats import (
    CONNECT_BUCKETS,
    DURATION_BUCKETS,
    OVERFLOW,
    HistogramData,
    StatsAggregator,
    WorkerStats,
    bucket,
    parse_snapshot,
)
from portico.upstreams.pool import Pool


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_pool(servers: int = 2, **config: Any) -> Pool:
    pool_config = PoolConfig(
        servers=[{"address": f"127.0.0.1:{1000 + i}", "name": f"s{i}"} for i in range(servers)],
        **config,
    )
    return Pool.from_config("app", pool_config, FakeClock(), random.Random(1))


def served(stats: WorkerStats, times: int = 1, **overrides: Any) -> None:
    """`times` requests through listener web, route default, pool app, server s0."""
    args: dict[str, Any] = {
        "listener": "web",
        "route": "default",
        "pool": "app",
        "backend": "s0",
        "status": 200,
        "duration": 0.003,
        "upstream_connect": None,
    }
    args.update(overrides)
    for _ in range(times):
        stats.request_done(**args)


def rows(snapshot: dict[str, Any], section: str, name: str) -> dict[tuple[str, ...], Any]:
    """A snapshot's rows of one metric, keyed by label values."""
    width = {"counters": 1, "gauges": 1, "histograms": 2}[section]
    return {tuple(row[:-width]): row[-width:] for row in snapshot[section][name]}


def counter(snapshot: dict[str, Any], name: str, *labels: str) -> Any:
    return rows(snapshot, "counters", name)[labels][0]


# ---------------------------------------------------------------------------------------------
# WorkerStats: counting


def test_request_done_counts_by_listener_route_pool_server_and_status_class() -> None:
    stats = WorkerStats()
    served(stats, 3)
    served(stats, 2, status=503, backend=None)
    served(stats, 1, status=404, route="api", pool="api", backend="x")
    snapshot = stats.snapshot()
    assert rows(snapshot, "counters", "requests") == {
        ("web", "default", "app", "s0", "2xx"): [3],
        ("web", "default", "app", "", "5xx"): [2],
        ("web", "api", "api", "x", "4xx"): [1],
    }


def test_client_bytes_count_as_connections_read_and_write() -> None:
    stats = WorkerStats()
    counter_of_web = stats.client_bytes("web")
    assert stats.client_bytes("web") is counter_of_web  # one per listener, kept by connections
    counter_of_web.received += 600
    counter_of_web.sent += 6000
    snapshot = stats.snapshot()
    assert counter(snapshot, "client_received_bytes", "web") == 600
    assert counter(snapshot, "client_sent_bytes", "web") == 6000


@pytest.mark.parametrize(
    ("status", "code_class"),
    [
        (0, "none"),
        (101, "1xx"),
        (204, "2xx"),
        (308, "3xx"),
        (429, "4xx"),
        (599, "5xx"),
        (600, "none"),
    ],
)
def test_status_classes(status: int, code_class: str) -> None:
    stats = WorkerStats()
    served(stats, status=status)
    assert counter(stats.snapshot(), "requests", "web", "default", "app", "s0", code_class) == 1


def test_duration_buckets_count_a_value_equal_to_a_bound_in_that_bound_bucket() -> None:
    stats = WorkerStats()
    for duration in (0.001, 0.005, 0.0051, 10.0, 11.0):
        served(stats, duration=duration)
    counts, total = rows(stats.snapshot(), "histograms", "request_duration")[("web", "app")]
    assert len(counts) == len(DURATION_BUCKETS) + 1
    assert counts[DURATION_BUCKETS.index(0.001)] == 1  # le="0.001"
    assert counts[DURATION_BUCKETS.index(0.005)] == 1  # le="0.005"
    assert counts[DURATION_BUCKETS.index(0.01)] == 1  # 0.0051 (le="0.01")
    assert counts[DURATION_BUCKETS.index(10.0)] == 1
    assert counts[-1] == 1  # 11.0: above every bound
    assert total == pytest.approx(0.001 + 0.005 + 0.0051 + 10.0 + 11.0)


def test_sub_millisecond_requests_are_told_apart() -> None:
    # a request proxied to a nearby server takes a fraction of a millisecond: the buckets must
    # say how large a fraction, or a dashboard can only say "p50 < 5 ms"
    stats = WorkerStats()
    for duration in (0.00008, 0.0002, 0.0004, 0.0009):
        served(stats, duration=duration)
    counts, _ = rows(stats.snapshot(), "histograms", "request_duration")[("web", "app")]
    filled = [i for i, n in enumerate(counts) if n]
    assert len(filled) == 4  # each in a bucket of its own
    assert all(DURATION_BUCKETS[i] <= 0.001 for i in filled)
    assert DURATION_BUCKETS[0] <= 0.00025
    # a Prometheus series per bucket, per listener and pool: keep them few
    assert len(DURATION_BUCKETS) <= 16


def test_upstream_connect_is_observed_only_for_new_connections() -> None:
    stats = WorkerStats(pools=["app"])
    served(stats, 2, upstream_connect=None)
    served(stats, 1, upstream_connect=0.0004)
    counts, total = rows(stats.snapshot(), "histograms", "upstream_connect")[("app",)]
    assert len(counts) == len(CONNECT_BUCKETS) + 1
    assert sum(counts) == 1
    assert counts[0] == 1
    assert total == pytest.approx(0.0004)


def test_retries_ratelimits_and_connections() -> None:
    stats = WorkerStats()
    stats.retry("app")
    stats.retry("app")
    stats.ratelimited("web")
    for _ in range(3):
        stats.connection_opened("web")
    stats.connection_closed("web", bytes_in=10, bytes_out=20)
    snapshot = stats.snapshot()
    assert counter(snapshot, "retries", "app") == 2
    assert counter(snapshot, "ratelimited", "web") == 1
    assert counter(snapshot, "connections", "web") == 3
    assert rows(snapshot, "gauges", "active_connections")[("web",)] == [2]
    assert counter(snapshot, "client_received_bytes", "web") == 10
    assert counter(snapshot, "client_sent_bytes", "web") == 20


def test_config_names_have_series_at_zero_from_the_first_snapshot() -> None:
    config = parse_config(
        "workers: 1\n"
        "listeners:\n"
        "  - {name: web, bind: '127.0.0.1:0', default_pool: app}\n"
        "  - {name: admin, bind: '127.0.0.1:0', default_pool: api}\n"
        "pools:\n"
        "  app: {servers: [{address: '127.0.0.1:1'}]}\n"
        "  api: {servers: [{address: '127.0.0.1:2'}]}\n",
        "inline.yaml",
    )
    snapshot = WorkerStats.for_config(config).snapshot()
    assert rows(snapshot, "counters", "ratelimited") == {("web",): [0], ("admin",): [0]}
    assert rows(snapshot, "counters", "retries") == {("app",): [0], ("api",): [0]}
    assert set(rows(snapshot, "histograms", "upstream_connect")) == {("app",), ("api",)}


def test_counting_known_names_allocates_nothing_that_stays() -> None:
    stats = WorkerStats(["web"], ["app"])

    def traffic(n: int) -> None:
        for i in range(n):
            served(stats, upstream_connect=0.0005 + i * 1e-9)
            served(stats, status=502, backend=None, duration=0.2)
            stats.retry("app")
            stats.ratelimited("web")
            stats.connection_opened("web")
            stats.connection_closed("web", 1, 2)

    traffic(10)  # first sight of every name: the series are made here
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        traffic(20_000)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # 20,000 requests: even 1 byte kept per request would be 20 kB
    assert after - before < 2_000


def test_request_series_beyond_the_cap_are_counted_together() -> None:
    stats = WorkerStats(max_series=3)
    for i in range(5):
        served(stats, backend=f"s{i}")
    snapshot = stats.snapshot()
    requests = rows(snapshot, "counters", "requests")
    assert requests[(OVERFLOW,) * 4 + ("2xx",)] == [3]  # s2..s4 (s0, s1 and a histogram fit)
    assert sum(v[0] for v in requests.values()) == 5
    durations = rows(snapshot, "histograms", "request_duration")
    assert sum(sum(counts) for counts, _ in durations.values()) == 5


def test_listeners_and_pools_beyond_the_cap_are_counted_together() -> None:
    stats = WorkerStats(max_series=2)
    for i in range(4):
        stats.ratelimited(f"l{i}")
        stats.retry(f"p{i}")
    snapshot = stats.snapshot()
    assert rows(snapshot, "counters", "ratelimited") == {
        ("l0",): [1],
        ("l1",): [1],
        (OVERFLOW,): [2],
    }
    assert rows(snapshot, "counters", "retries") == {("p0",): [1], ("p1",): [1], (OVERFLOW,): [2]}


# ---------------------------------------------------------------------------------------------
# WorkerStats: the live state of the worker's pools


def test_snapshot_reads_in_flight_queue_health_and_weight_from_the_pools() -> None:
    pool = make_pool(3)
    s0, s1, s2 = pool.backends
    s0.in_flight = 4
    s0.requests = 10
    s0.failures = 2
    s1.active_up = False
    s2.ejected = True
    s2.weight = 7
    pool.queue.append(object())  # type: ignore[arg-type]
    snapshot = WorkerStats().snapshot({"app": pool})
    gauges = snapshot["gauges"]
    assert {tuple(r[:2]): r[2] for r in gauges["backend_in_flight"]} == {
        ("app", "s0"): 4,
        ("app", "s1"): 0,
        ("app", "s2"): 0,
    }
    assert {r[1]: r[2] for r in gauges["backend_up"]} == {"s0": 1, "s1": 0, "s2": 1}
    assert {r[1]: r[2] for r in gauges["backend_ejected"]} == {"s0": 0, "s1": 0, "s2": 1}
    assert {r[1]: r[2] for r in gauges["backend_weight"]} == {"s0": 1, "s1": 1, "s2": 7}
    assert gauges["pool_queue_length"] == [["app", 1]]
    assert counter(snapshot, "backend_requests", "app", "s0") == 10
    assert counter(snapshot, "backend_failures", "app", "s0") == 2


def test_ejections_come_from_outlier_detection() -> None:
    pool = make_pool(4, health={"passive": {"consecutive_failures": 1}})
    s0 = pool.backends[0]
    pool.observe(s0, True, 100.0)
    stats = WorkerStats()
    assert counter(stats.snapshot({"app": pool}), "backend_ejections", "app", "s0") == 1
    assert counter(stats.snapshot({"app": pool}), "backend_ejections", "app", "s1") == 0


def test_server_counters_never_go_down_when_their_source_starts_over() -> None:
    """An active-health change makes the outlier detector forget a server's ejections, and a
    rebuilt pool starts its servers' counters at 0: what the worker reports goes on rising."""
    pool = make_pool(4, health={"passive": {"consecutive_failures": 1, "base_ejection_time": 1}})
    s0 = pool.backends[0]
    stats = WorkerStats()
    s0.failures = 5
    pool.observe(s0, True, 100.0)
    first = stats.snapshot({"app": pool})
    assert counter(first, "backend_ejections", "app", "s0") == 1
    pool.set_active_health("s0", False, 101.0)  # forgets the ejection count
    s0.failures = 2  # a rebuilt server starts over
    second = stats.snapshot({"app": pool})
    assert counter(second, "backend_ejections", "app", "s0") == 1
    assert counter(second, "backend_failures", "app", "s0") == 7
    pool.set_active_health("s0", True, 102.0)
    pool.observe(s0, True, 103.0)
    assert counter(stats.snapshot({"app": pool}), "backend_ejections", "app", "s0") == 2


def test_snapshot_survives_a_json_round_trip() -> None:
    stats = WorkerStats(["web"], ["app"])
    served(stats, 3, upstream_connect=0.002)
    served(stats, status=0, backend=None)
    snapshot = stats.snapshot({"app": make_pool()})
    text = json.dumps(snapshot)
    assert json.loads(text) == snapshot
    assert parse_snapshot(json.loads(text)) == parse_snapshot(snapshot)


# ---------------------------------------------------------------------------------------------
# StatsAggregator


def snapshot_of(requests: int, in_flight: int = 0, up: int = 1, ejected: int = 0) -> Any:
    """A worker's snapshot, through JSON as the channel carries it."""
    stats = WorkerStats(["web"], ["app"])
    served(stats, requests, upstream_connect=0.001)
    stats.connection_opened("web")
    pool = make_pool(1)
    pool.backends[0].in_flight = in_flight
    pool.backends[0].requests = requests
    pool.backends[0].active_up = bool(up)
    pool.backends[0].ejected = bool(ejected)
    return json.loads(json.dumps(stats.snapshot({"app": pool})))


REQUESTS = ("web", "default", "app", "s0", "2xx")


def test_merged_view_sums_counters_and_gauges_of_living_workers() -> None:
    aggregator = StatsAggregator()
    aggregator.update(1, snapshot_of(3, in_flight=2))
    aggregator.update(2, snapshot_of(4, in_flight=1))
    merged = aggregator.merged()
    assert merged.workers == 2
    assert merged.value("requests", *REQUESTS) == 7
    assert merged.value("backend_in_flight", "app", "s0") == 3
    assert merged.value("active_connections", "web") == 2
    assert merged.histograms["request_duration"]["web", "app"].count == 7
    assert merged.histograms["upstream_connect"][("app",)].count == 7


def test_gauges_merge_by_their_rule() -> None:
    aggregator = StatsAggregator()
    aggregator.update(1, snapshot_of(1, up=1, ejected=1))
    aggregator.update(2, snapshot_of(1, up=0, ejected=1))
    aggregator.update(3, snapshot_of(1, up=1, ejected=0))
    merged = aggregator.merged()
    assert merged.value("backend_up", "app", "s0") == 0  # min: one worker hears it is down
    assert merged.value("backend_ejected", "app", "s0") == 2  # sum: workers ejecting it
    assert merged.value("backend_weight", "app", "s0") == 1  # max


def test_totals_never_go_down_across_worker_restarts() -> None:
    aggregator = StatsAggregator()
    seen = []
    aggregator.started(10)
    aggregator.update(10, snapshot_of(5, in_flight=1))
    seen.append(aggregator.merged().value("requests", *REQUESTS))
    aggregator.exited(10)  # it died after its last snapshot
    seen.append(aggregator.merged().value("requests", *REQUESTS))
    aggregator.started(11)  # its replacement starts from zero
    seen.append(aggregator.merged().value("requests", *REQUESTS))
    aggregator.update(11, snapshot_of(2))
    seen.append(aggregator.merged().value("requests", *REQUESTS))
    assert seen == [5, 5, 5, 7]
    merged = aggregator.merged()
    assert merged.workers == 1
    assert merged.histograms["request_duration"]["web", "app"].count == 7
    assert merged.value("backend_requests", "app", "s0") == 7


def test_gauges_of_an_exited_worker_go_with_it() -> None:
    aggregator = StatsAggregator()
    aggregator.update(1, snapshot_of(1, in_flight=3))
    aggregator.update(2, snapshot_of(1, in_flight=1))
    aggregator.exited(1)
    merged = aggregator.merged()
    assert merged.value("backend_in_flight", "app", "s0") == 1
    assert merged.value("active_connections", "web") == 1


def test_a_reused_pid_is_a_new_worker() -> None:
    aggregator = StatsAggregator()
    aggregator.update(7, snapshot_of(4))
    aggregator.exited(7)
    aggregator.started(7)
    aggregator.update(7, snapshot_of(1))
    assert aggregator.merged().value("requests", *REQUESTS) == 5


def test_exiting_twice_or_unknown_changes_nothing() -> None:
    aggregator = StatsAggregator()
    aggregator.update(1, snapshot_of(2))
    aggregator.exited(1)
    aggregator.exited(1)
    aggregator.exited(99)
    assert aggregator.merged().value("requests", *REQUESTS) == 2
    assert aggregator.workers == 0


def test_started_workers_count_before_their_first_snapshot() -> None:
    aggregator = StatsAggregator()
    aggregator.started(1)
    aggregator.started(2)
    assert aggregator.merged().workers == 2


def test_total_sums_the_series_matching_some_labels() -> None:
    stats = WorkerStats()
    served(stats, 2)
    served(stats, 3, status=500, backend="s1")
    served(stats, 4, listener="other")
    aggregator = StatsAggregator()
    aggregator.update(1, stats.snapshot())
    merged = aggregator.merged()
    assert merged.total("requests", listener="web") == 5
    assert merged.total("requests", listener="web", code_class="5xx") == 3
    assert merged.total("requests") == 9
    assert merged.total("active_connections") == 0
    assert merged.value("requests", "nope") is None


@pytest.mark.parametrize(
    ("snapshot", "message"),
    [
        ([], "must be a mapping"),
        ({"counters": []}, "counters must be a mapping"),
        ({"counters": {"requests": {}}}, "must be a list of rows"),
        ({"counters": {"retries": [["app"]]}}, "is not a row of 2 items"),
        ({"counters": {"retries": [["app", "1"]]}}, "is not a finite number"),
        ({"counters": {"retries": [["app", True]]}}, "is not a finite number"),
        ({"counters": {"retries": [["app", -1]]}}, "cannot be negative"),
        ({"counters": {"retries": [[1, 1]]}}, "labels must be text"),
        ({"gauges": {"backend_up": [["app", "s0", float("nan")]]}}, "finite"),
        ({"histograms": {"upstream_connect": [["app", [1, 2], 0.1]]}}, "bucket counts"),
    ],
)
def test_a_malformed_snapshot_is_refused_and_the_previous_one_kept(
    snapshot: Any, message: str
) -> None:
    aggregator = StatsAggregator()
    aggregator.update(1, snapshot_of(2))
    with pytest.raises(ValueError, match=message):
        aggregator.update(1, snapshot)
    assert aggregator.merged().value("requests", *REQUESTS) == 2


def test_metrics_of_a_newer_version_are_skipped() -> None:
    parsed = parse_snapshot({"counters": {"future_thing": [["x", 1]]}, "gauges": {"new": []}})
    assert parsed.counters == {}
    assert parsed.gauges == {}


def test_histogram_data_is_cumulative_for_prometheus() -> None:
    data = HistogramData((1, 0, 2, 3), 1.5)
    assert data.cumulative() == [1, 1, 3, 6]
    assert data.count == 6
    assert data.plus(HistogramData((1, 1, 1, 1), 0.5)) == HistogramData((2, 1, 3, 4), 2.0)


def test_a_value_goes_to_the_bucket_bisect_left_gives_it() -> None:
    # boundaries count in their own bucket (Prometheus' le), beyond the last in the overflow
    values = [-1.0, 0.0, 0.0001, 0.00010001, 0.0003, 0.01, 9.99, 10.0, 10.5, 1e9]
    values += [bound for bound in DURATION_BUCKETS] + [float("inf"), float("nan")]
    for value in values:
        assert bucket(DURATION_BUCKETS, value) == bisect_left(DURATION_BUCKETS, value), value
    assert bucket((), 1.0) == 0
