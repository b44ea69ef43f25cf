"""`portico simulate CONFIG --trace access.log [--policies a,b,c]`: the command's arguments,
choosing the pool and the requests, and the report it prints and writes."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

from portico.config.schema import Config
from portico.simulate.engine import simulate
from portico.simulate.report import Summary, summarize, windows, write_csv, write_plot
from portico.simulate.spec import WorkloadSpec, load_spec
from portico.simulate.trace import Trace, read_access_log, synthetic

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="path to portico.yaml (the pool, its policy and limits)")
    parser.add_argument("--trace", metavar="LOG", help="Portico's access log (JSON or combined)")
    parser.add_argument(
        "--workload",
        metavar="SPEC",
        help="YAML: modelled servers (speed, capacity, failures) and, without --trace, "
        "synthetic arrivals",
    )
    parser.add_argument("--pool", help="the pool to simulate (default: the trace's, or the only)")
    parser.add_argument(
        "--policies", help="comma-separated policies to compare (default: the pool's own)"
    )
    parser.add_argument(
        "--out",
        default="simulate",
        metavar="PREFIX",
        help="writes PREFIX.png, PREFIX.csv, PREFIX-summary.csv (default: simulate)",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--windows", type=int, default=60, help="time slices in the CSV and plot")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace, config: Config) -> int:
    try:
        spec = _spec(args.workload)
        trace, pool, source = _requests(args, config, spec)
        names = {server.name for server in config.pools[pool].servers}
        unknown = sorted(set(spec.servers) - names)
        if unknown:
            raise ValueError(
                f"{args.workload}: servers {', '.join(unknown)} are not in pool {pool!r} "
                f"(its servers: {', '.join(sorted(names))})"
            )
        policies = args.policies.split(",") if args.policies else [config.pools[pool].policy]
        policies = [p.strip() for p in policies if p.strip()]
        runs = []
        for policy in policies:
            started = time.perf_counter()
            result = simulate(config.pools[pool], pool, policy, trace, spec)
            result.seconds = time.perf_counter() - started
            runs.append(result)
    except ValueError as exc:
        print(f"portico: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"portico: {exc}", file=sys.stderr)
        return 2
    summaries = [summarize(r) for r in runs]
    servers = runs[0].servers
    series = {r.policy: windows(r, max(1, args.windows)) for r in runs}
    out = Path(args.out)
    if out.parent != Path():
        out.parent.mkdir(parents=True, exist_ok=True)
    files = list(write_csv(out.with_suffix(".csv"), summaries, series, servers))
    if not args.no_plot:
        try:
            title = f'pool "{pool}": {len(trace):,} requests ({source})'
            write_plot(out.with_suffix(".png"), series, servers, title)
            files.insert(0, out.with_suffix(".png"))
        except ImportError:
            print(
                "portico: no plot: install matplotlib (pip install 'portico[simulate]')",
                file=sys.stderr,
            )
    if args.json:
        print(
            json.dumps(
                {
                    "pool": pool,
                    "source": source,
                    "requests": len(trace),
                    "duration": trace.duration,
                    "policies": [_jsonable(asdict(s)) for s in summaries],
                    "files": [str(f) for f in files],
                },
                indent=2,
            )
        )
    else:
        print(_table(pool, trace, source, summaries, servers, files), end="")
    return 0


def _spec(path: str | None) -> WorkloadSpec:
    if path is None:
        return WorkloadSpec()
    try:
        return load_spec(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _requests(
    args: argparse.Namespace, config: Config, spec: WorkloadSpec
) -> tuple[Trace, str, str]:
    """The trace to replay, the pool it goes to, and where it came from (in words)."""
    if args.pool is not None and args.pool not in config.pools:
        raise ValueError(f"no pool {args.pool!r} (pools: {', '.join(config.pools)})")
    if args.trace is not None:
        with open(args.trace, encoding="utf-8", errors="replace") as lines:
            trace, info = read_access_log(lines, args.pool)
        assert info.pool is not None
        if info.pool not in config.pools:
            raise ValueError(f"the trace's pool {info.pool!r} is not in the config: use --pool")
        skipped = ", ".join(f"{k}: {v:,}" for k, v in info.skipped.items())
        source = f"{Path(args.trace).name}, {info.used:,} of {info.lines:,} lines" + (
            f"; skipped {skipped}" if skipped else ""
        )
        return trace, info.pool, source
    if spec.arrivals is None:
        raise ValueError("give --trace LOG, or --workload SPEC with arrivals")
    pool = args.pool
    if pool is None:
        pool = (
            next(iter(config.pools)) if len(config.pools) == 1 else config.listeners[0].default_pool
        )
    a = spec.arrivals
    service = f"{a.service.distribution} service times, mean {a.service.mean * 1000:g}ms"
    source = f"synthetic: {a.rate:g}/s Poisson, {service}"
    return synthetic(a, spec.seed), pool, source


def _jsonable(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _table(
    pool: str,
    trace: Trace,
    source: str,
    summaries: list[Summary],
    servers: list[str],
    files: list[Path],
) -> str:
    lines = [
        f'pool "{pool}": {len(trace):,} requests over {trace.duration:,.1f}s simulated ({source})',
        "",
        f"{'policy':<22}{'p50 ms':>9}{'p99 ms':>9}{'p999 ms':>9}{'wait ms':>9}{'queued':>8}"
        f"{'failed':>8}{'retried':>8}{'imbal.':>8}{'run s':>7}",
    ]
    for s in summaries:
        lines.append(
            f"{s.policy:<22}{_f(s.p50)}{_f(s.p99)}{_f(s.p999)}{_f(s.mean_wait)}"
            f"{s.queued:>8.1%}{s.failed:>8,}{s.retried:>8,}{s.imbalance:>8.3f}{s.seconds:>7.1f}"
        )
    lines.append("")
    lines.append("load share per server:")
    width = max(len(n) for n in servers) + 2
    lines.append(" " * 22 + "".join(f"{n:>{max(width, 8)}}" for n in servers))
    for s in summaries:
        lines.append(
            f"{s.policy:<22}" + "".join(f"{s.shares[n]:>{max(width, 8)}.1%}" for n in servers)
        )
    lines.append("")
    lines.append("wrote " + ", ".join(str(f) for f in files))
    return "\n".join(lines) + "\n"


def _f(seconds: float) -> str:
    """Milliseconds in 9 columns: three significant digits, whole ones from 100 ms up."""
    if math.isnan(seconds):
        return f"{'-':>9}"
    ms = seconds * 1000
    return f"{ms:>9,.0f}" if ms >= 100 else f"{ms:>9.3g}"
