"""The report: percentiles, the summary's figures, the CSV files and the plot."""

from __future__ import annotations

import csv
import math
from array import array
from pathlib import Path

import pytest

from portico.simulate import Run, summarize
from portico.simulate.report import percentile, windows, write_csv, write_plot


def made_up_run() -> Run:
    """Ten requests, one failed: s1 answered 6 (weight 2), s2 answered 3 (weight 1)."""
    return Run(
        policy="least_conn",
        servers=["s1", "s2"],
        weights=[2, 1],
        arrival=array("d", [float(i) for i in range(10)]),
        latency=array("d", [0.001 * (i + 1) for i in range(10)]),
        wait=array("d", [0.0] * 8 + [0.5, 0.25]),
        server=array("h", [0, 0, 0, 1, 1, 1, 0, 0, 0, -1]),
        status=array("H", [200] * 9 + [503]),
        retried=array("B", [0] * 9 + [1]),
    )


def test_percentiles_are_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.999) == 100.0
    assert math.isnan(percentile([], 0.5))


def test_the_summary_counts_failures_apart_and_measures_imbalance() -> None:
    s = summarize(made_up_run())
    assert (s.requests, s.ok, s.failed, s.retried) == (10, 9, 1, 1)
    assert s.p50 == pytest.approx(0.005)  # of the 9 good ones: 1..9 ms
    assert s.p99 == pytest.approx(0.009)
    assert s.shares == {"s1": pytest.approx(6 / 9), "s2": pytest.approx(3 / 9)}
    assert s.imbalance == pytest.approx(1.0)  # 3 per unit of weight each
    assert s.queued == pytest.approx(0.2)
    assert s.mean_wait == pytest.approx(0.075)


def test_csv_files_have_one_row_per_window_and_per_policy(tmp_path: Path) -> None:
    run = made_up_run()
    series = {run.policy: windows(run, 5)}
    series_path, summary_path = write_csv(
        tmp_path / "out.csv", [summarize(run)], series, run.servers
    )
    rows = list(csv.DictReader(series_path.read_text().splitlines()))
    assert len(rows) == 5
    assert rows[0]["share_s1"] == "1.0000"
    assert rows[-1]["failed"] == "1"
    (summary,) = list(csv.DictReader(summary_path.read_text().splitlines()))
    assert summary["policy"] == "least_conn"
    assert summary["share_s2"] == "0.3333"


def test_the_plot_is_a_png(tmp_path: Path) -> None:
    run = made_up_run()
    path = tmp_path / "out.png"
    write_plot(path, {run.policy: windows(run, 5)}, run.servers, "made up")
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
