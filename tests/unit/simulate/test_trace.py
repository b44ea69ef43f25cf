"""Reading traces: Portico's own log lines (written by the production formatters), and
synthetic traces from a spec."""

from __future__ import annotations

import dataclasses
from statistics import fmean
from typing import Any

import pytest

from portico.observe.access_log import AccessRecord, format_combined, format_json
from portico.simulate import load_spec, read_access_log, synthetic
from portico.simulate.spec import Arrivals, SizeDistribution, TimeDistribution

START = 1_700_000_000.0  # a whole second


def record(**changes: Any) -> AccessRecord:
    base = AccessRecord(
        start=START,
        client_ip="192.0.2.7",
        method=b"GET",
        target=b"/x",
        version="1.1",
        status=200,
        bytes_sent=300,
        body_bytes_sent=100,
        bytes_received=80,
        referer=None,
        user_agent=b"curl/8",
        host=b"a.example",
        request_id=b"rid",
        listener="web",
        route="default",
        pool="app",
        backend="s1",
        duration=0.02,
        upstream_connect=None,
        upstream_response=0.015,
    )
    return dataclasses.replace(base, **changes)


def lines(*records: AccessRecord, fmt: str = "json") -> list[str]:
    formatter = format_json if fmt == "json" else format_combined
    return [formatter(r).decode() for r in records]


def test_json_lines_give_arrival_service_size_and_client() -> None:
    trace, info = read_access_log(
        lines(
            record(start=START + 0.250, upstream_response=0.030, client_ip="192.0.2.9"),
            record(start=START + 0.100, body_bytes_sent=5000),
        )
    )
    assert info.pool == "app"
    assert info.used == 2
    assert list(trace.arrivals) == pytest.approx([0.0, 0.150])  # sorted by start
    assert list(trace.service) == pytest.approx([0.015, 0.030])
    assert list(trace.size) == [5000, 100]
    assert [trace.clients[c] for c in trace.client] == ["192.0.2.7", "192.0.2.9"]


def test_combined_lines_are_spread_over_their_second() -> None:
    records = [record(start=START + 0.9), record(start=START + 0.1), record(start=START + 1.2)]
    trace, _ = read_access_log(lines(*records, fmt="combined"))
    # whole seconds only: two in the first second, at 1/4 and 3/4 of it, then one at 1.5
    assert list(trace.arrivals) == pytest.approx([0.0, 0.5, 1.25])
    assert list(trace.service) == pytest.approx([0.015] * 3)


def test_lines_no_server_answered_and_other_pools_are_skipped_and_counted() -> None:
    trace, info = read_access_log(
        [
            *lines(record(), record(backend=None, upstream_response=None, status=503)),
            *lines(record(upstream_response=None, status=502), fmt="combined"),
            *lines(record(pool="api"), record(pool="api"), record(pool="api")),
            "not a log line",
        ],
        pool="app",
    )
    assert len(trace) == 1
    assert info.skipped == {"no server answered": 2, "unreadable": 1, "other pools": 3}


def test_the_busiest_pool_is_replayed_unless_one_is_named() -> None:
    log = lines(record(pool="api"), record(pool="api"), record(pool="app"))
    assert read_access_log(log)[1].pool == "api"
    with pytest.raises(ValueError, match="no usable requests of pool 'nope'"):
        read_access_log(log, pool="nope")


@pytest.mark.parametrize("shape", ["exponential", "constant", "lognormal", "pareto", "uniform"])
def test_synthetic_traces_have_the_rate_and_mean_asked_for(shape: str) -> None:
    spec = Arrivals(
        requests=50_000,
        rate=500.0,
        service=TimeDistribution(distribution=shape, mean=0.01),
        size=SizeDistribution(distribution="constant", mean=10_000),
        transfer=10_000_000,
    )
    trace = synthetic(spec, seed=5)
    assert len(trace) == 50_000
    assert trace.duration == pytest.approx(100.0, rel=0.03)
    # service = the drawn time + size / transfer (1 ms)
    tolerance = 0.1 if shape == "pareto" else 0.03  # a heavy tail converges slowly
    assert fmean(trace.service) == pytest.approx(0.011, rel=tolerance)
    assert synthetic(spec, seed=5).service == trace.service  # seeded: the same trace


def test_a_spec_is_checked_with_its_paths() -> None:
    spec = load_spec(
        "arrivals: {duration: 10s, rate: 100/s, service: {mean: 5ms}}\n"
        "servers: {s1: {speed: 2, failures: [{at: 1s, for: 2s, mode: error}]}}\n"
    )
    assert spec.arrivals is not None
    assert spec.arrivals.service.mean == 0.005
    assert spec.server("s1").failures[0].for_ == 2.0
    assert spec.server("other").capacity == 8
    with pytest.raises(ValueError, match=r"arrivals: give requests .* or duration"):
        load_spec("arrivals: {rate: 1/s, service: {mean: 1s}}")
    with pytest.raises(ValueError, match=r"servers\.s1\.speed: must be more than 0"):
        load_spec("servers: {s1: {speed: 0}}")
    with pytest.raises(ValueError, match="alpha > 1"):
        load_spec(
            "arrivals: {requests: 1, rate: 1/s, service: {mean: 1s, distribution: pareto, "
            "alpha: 1}}"
        )
