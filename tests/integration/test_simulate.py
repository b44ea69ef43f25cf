"""`portico simulate` end to end: on the access log a real `portico run` wrote, and on a
synthetic workload; the summary printed, the CSV and PNG files written."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import simple_config
from fakes import FakeBackend, Portico, eventually, request

MakeBackend = Callable[..., FakeBackend]
MakePortico = Callable[[str], Portico]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portico", "simulate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def test_a_real_access_log_is_replayed_through_each_policy(
    backends: MakeBackend, portico: MakePortico, tmp_path: Path
) -> None:
    a, b = backends("a"), backends("b")
    log = tmp_path / "access.log"
    proxy = portico(simple_config([a, b], extra_listener=f"    access_log: {{path: {log}}}\n"))
    for i in range(60):
        assert request(proxy.port, "GET", f"/item/{i}").status == 200
    eventually(lambda: log.exists() and len(log.read_text().splitlines()) == 60, "60 log lines")

    done = run_cli(
        str(proxy.path),
        "--trace",
        str(log),
        "--policies",
        "round_robin,least_conn,p2c_ewma",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith('pool "app": 60 requests over')
    assert "access.log, 60 of 60 lines" in out
    for policy in ("round_robin", "least_conn", "p2c_ewma"):
        assert f"\n{policy} " in out
    assert "wrote simulate.png, simulate.csv, simulate-summary.csv" in out
    assert (tmp_path / "simulate.png").read_bytes()[:4] == b"\x89PNG"
    summary = list(csv.DictReader((tmp_path / "simulate-summary.csv").read_text().splitlines()))
    assert [row["policy"] for row in summary] == ["round_robin", "least_conn", "p2c_ewma"]
    assert all(row["requests"] == "60" and row["failed"] == "0" for row in summary)
    # round robin over two servers: exactly half each
    assert {summary[0]["share_a"], summary[0]["share_b"]} == {"0.5000"}


def test_a_synthetic_workload_with_a_failing_server_as_json(tmp_path: Path) -> None:
    config = tmp_path / "portico.yaml"
    config.write_text(
        "listeners: [{name: web, bind: '127.0.0.1:8080', default_pool: app}]\n"
        "pools:\n"
        "  app:\n"
        "    retries: 1\n"
        "    servers:\n"
        "      - {address: '10.0.0.1:80', name: s1}\n"
        "      - {address: '10.0.0.2:80', name: s2}\n"
    )
    workload = tmp_path / "workload.yaml"
    workload.write_text(
        "seed: 4\n"
        "arrivals: {requests: 20000, rate: 500/s, service: {mean: 2ms}}\n"
        "servers:\n"
        "  s2: {failures: [{at: 10s, for: 10s, mode: refuse}]}\n"
    )
    done = run_cli(
        str(config),
        "--workload",
        str(workload),
        "--policies",
        "random,least_conn",
        "--out",
        "out/run",
        "--json",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["requests"] == 20000
    assert [p["policy"] for p in report["policies"]] == ["random", "least_conn"]
    for policy in report["policies"]:
        assert policy["failed"] == 0  # refused connects were retried on s1
        assert policy["retried"] > 0
        assert policy["shares"]["s2"] < 0.5
    assert report["files"] == ["out/run.png", "out/run.csv", "out/run-summary.csv"]
    assert all((tmp_path / f).stat().st_size > 0 for f in report["files"])


def test_mistakes_are_named(tmp_path: Path) -> None:
    config = tmp_path / "portico.yaml"
    config.write_text(
        "listeners: [{name: web, bind: '127.0.0.1:8080', default_pool: app}]\n"
        "pools: {app: {servers: [{address: '10.0.0.1:80'}]}}\n"
    )
    no_requests = run_cli(str(config), cwd=tmp_path)
    assert no_requests.returncode == 2
    assert "give --trace LOG, or --workload SPEC with arrivals" in no_requests.stderr
    workload = tmp_path / "w.yaml"
    workload.write_text("arrivals: {requests: 10, rate: 1/s, service: {mean: 1s}}\n")
    typo = tmp_path / "typo.yaml"
    typo.write_text(workload.read_text() + "servers: {s9: {speed: 2}}\n")
    wrong = run_cli(str(config), "--workload", str(typo), cwd=tmp_path)
    assert wrong.returncode == 2
    assert "servers s9 are not in pool 'app'" in wrong.stderr
    unknown = run_cli(
        str(config), "--workload", str(workload), "--policies", "fastest", cwd=tmp_path
    )
    assert unknown.returncode == 2
    assert 'not "fastest"' in unknown.stderr  # named in the refusal, with the names there are
    assert "round_robin" in unknown.stderr
