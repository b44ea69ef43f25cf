"""What a simulation shows: per-policy figures, the same over time, as text, CSV and a plot.

Owns `Summary` (latency percentiles, queueing, failures, retries, each server's share of the
load and the imbalance), `Window` (the same per slice of simulated time), the CSV files and
the PNG (matplotlib's Agg backend, imported only when a plot is asked for). Never simulates.

Percentiles are nearest-rank over the requests a server answered without error (failures are
counted apart, so a fast 503 never flatters a policy). Imbalance is the busiest server's
requests per unit of weight over the average server's: 1.0 is a perfectly even spread.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from portico.simulate.engine import Run

__all__ = ["Summary", "Window", "percentile", "summarize", "windows", "write_csv", "write_plot"]


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank `q` quantile (0 < q <= 1) of an ascending sequence; nan when empty."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True, slots=True)
class Summary:
    policy: str
    requests: int
    ok: int
    failed: int  # answered with an error: 5xx from a server, or Portico's 502/503
    retried: int  # requests tried on more than one server
    p50: float  # seconds, over requests answered without error
    p99: float
    p999: float
    mean: float
    mean_wait: float  # seconds queued (in the pool's queue and the server's), all requests
    p99_wait: float
    queued: float  # share of requests that waited at all
    max_server_queue: int
    pool_queued: int
    ejections: int
    health_changes: int
    shares: dict[str, float]  # server -> share of the requests it answered
    imbalance: float
    seconds: float  # wall-clock time of the run
    events: int


def summarize(run: Run) -> Summary:
    status = run.status
    n = len(status)
    good = sorted(lat for lat, code in zip(run.latency, status, strict=True) if code < 500)
    waits = sorted(run.wait)
    counts = [0] * len(run.servers)
    for index in run.server:
        if index >= 0:
            counts[index] += 1
    answered = sum(counts) or 1
    per_weight = [c / w for c, w in zip(counts, run.weights, strict=True)]
    average = sum(per_weight) / len(per_weight) if per_weight else 0.0
    return Summary(
        policy=run.policy,
        requests=n,
        ok=len(good),
        failed=n - len(good),
        retried=sum(1 for r in run.retried if r),
        p50=percentile(good, 0.5),
        p99=percentile(good, 0.99),
        p999=percentile(good, 0.999),
        mean=sum(good) / len(good) if good else math.nan,
        mean_wait=sum(waits) / n if n else math.nan,
        p99_wait=percentile(waits, 0.99),
        queued=sum(1 for w in waits if w > 0) / n if n else 0.0,
        max_server_queue=run.max_server_queue,
        pool_queued=run.pool_queued,
        ejections=run.ejections,
        health_changes=run.health_changes,
        shares={name: c / answered for name, c in zip(run.servers, counts, strict=True)},
        imbalance=max(per_weight) / average if average else math.nan,
        seconds=run.seconds,
        events=run.events,
    )


@dataclass(frozen=True, slots=True)
class Window:
    """The requests that arrived in [start, end) of simulated time."""

    start: float
    end: float
    requests: int
    failed: int
    p50: float
    p99: float
    p999: float
    shares: list[float]  # per server, in the run's order


def windows(run: Run, count: int = 60) -> list[Window]:
    """`run` cut into `count` equal slices of simulated time."""
    arrival = run.arrival
    n = len(arrival)
    if not n:
        return []
    span = max(arrival[-1], 1e-9)
    width = span / count
    latencies: list[list[float]] = [[] for _ in range(count)]
    failed = [0] * count
    servers = len(run.servers)
    loads = [[0] * servers for _ in range(count)]
    for t, latency, code, server in zip(arrival, run.latency, run.status, run.server, strict=True):
        w = min(int(t / width), count - 1)
        if code < 500:
            latencies[w].append(latency)
        else:
            failed[w] += 1
        if server >= 0:
            loads[w][server] += 1
    out = []
    for w in range(count):
        ordered = sorted(latencies[w])
        total = sum(loads[w]) or 1
        out.append(
            Window(
                start=w * width,
                end=(w + 1) * width,
                requests=len(ordered) + failed[w],
                failed=failed[w],
                p50=percentile(ordered, 0.5),
                p99=percentile(ordered, 0.99),
                p999=percentile(ordered, 0.999),
                shares=[c / total for c in loads[w]],
            )
        )
    return out


def write_csv(
    path: Path, summaries: Sequence[Summary], series: dict[str, list[Window]], servers: list[str]
) -> tuple[Path, Path]:
    """Two files: `path` (one row per policy and time window) and `path`-summary.csv (one row
    per policy). Times in seconds, latencies in milliseconds."""
    with path.open("w", newline="") as file:
        out = csv.writer(file)
        out.writerow(
            ["policy", "start_s", "end_s", "requests", "failed", "p50_ms", "p99_ms", "p999_ms"]
            + [f"share_{name}" for name in servers]
        )
        for policy, rows in series.items():
            for w in rows:
                out.writerow(
                    [policy, f"{w.start:.6g}", f"{w.end:.6g}", w.requests, w.failed]
                    + [_ms(w.p50), _ms(w.p99), _ms(w.p999)]
                    + [f"{share:.4f}" for share in w.shares]
                )
    summary_path = path.with_name(path.stem + "-summary.csv")
    with summary_path.open("w", newline="") as file:
        out = csv.writer(file)
        fields = [k for k in asdict(summaries[0]) if k != "shares"] if summaries else []
        out.writerow(fields + [f"share_{name}" for name in servers])
        for s in summaries:
            row = asdict(s)
            out.writerow([row[k] for k in fields] + [f"{s.shares[n]:.4f}" for n in servers])
    return path, summary_path


def _ms(seconds: float) -> str:
    return "" if math.isnan(seconds) else f"{seconds * 1000:.4g}"


def write_plot(path: Path, series: dict[str, list[Window]], servers: list[str], title: str) -> None:
    """A PNG: p50 and p99 latency over time per policy (top), and each policy's load share
    per server over time (one panel per policy, below)."""
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # not its font-cache chatter
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(series)
    columns = max(1, len(policies))
    figure = plt.figure(figsize=(max(8.0, 3.2 * columns), 7.5), layout="constrained")
    grid = figure.add_gridspec(2, columns, height_ratios=[1.4, 1.0])
    top = figure.add_subplot(grid[0, :])
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, policy in enumerate(policies):
        rows = series[policy]
        t = [(w.start + w.end) / 2 for w in rows]
        colour = colours[i % len(colours)]
        top.plot(t, [w.p99 * 1000 for w in rows], color=colour, label=f"{policy} p99")
        top.plot(
            t,
            [w.p50 * 1000 for w in rows],
            color=colour,
            linestyle="--",
            linewidth=1,
            label=f"{policy} p50",
        )
    top.set_yscale("log")
    top.set_xlabel("simulated time (s)")
    top.set_ylabel("latency (ms, log scale)")
    top.set_title(title)
    top.grid(True, which="both", alpha=0.3)
    top.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    share_colours = [plt.get_cmap("tab20")(i % 20) for i in range(len(servers))]
    for i, policy in enumerate(policies):
        ax = figure.add_subplot(grid[1, i])
        rows = series[policy]
        t = [(w.start + w.end) / 2 for w in rows]
        stacks = [[w.shares[s] for w in rows] for s in range(len(servers))]
        ax.stackplot(t, stacks, labels=servers, colors=share_colours)
        ax.set_ylim(0, 1)
        ax.set_xlim(t[0] if t else 0, t[-1] if t else 1)
        ax.set_title(f"{policy}: load share", fontsize="medium")
        ax.set_xlabel("simulated time (s)")
        if i == 0:
            ax.set_ylabel("share of requests")
    handles, labels = figure.axes[-1].get_legend_handles_labels() if policies else ([], [])
    if len(servers) <= 12:
        figure.legend(
            handles,
            labels,
            loc="outside lower center",
            ncol=min(len(servers), 8),
            fontsize="small",
            title="servers",
        )
    figure.savefig(path, dpi=100)
    plt.close(figure)
