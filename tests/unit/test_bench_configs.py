"""bench/run works from a plain clone: the HAProxy and NGINX reference configs it lays out are
in the repository (bench/configs/), with the ports and the RUNDIR placeholder bench.py expects."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_under_test", REPO / "bench" / "bench.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_reference_configs_are_in_the_repository() -> None:
    bench = load_bench()
    assert bench.CONFIGS == REPO / "bench" / "configs"
    texts = {name: (bench.CONFIGS / name).read_text() for name in bench.CONFIG_FILES}
    assert "RUNDIR/www" in texts["nginx-backends.conf"]  # where bench.py writes /16k and /1m
    for port in bench.ORIGIN_PORTS:
        assert f"127.0.0.1:{port}" in texts["nginx-backends.conf"]
    assert "127.0.0.1:8081" in texts["nginx-proxy.conf"]
    assert f"127.0.0.1:{bench.NGINX_TLS_PORT}" in texts["nginx-proxy.conf"]
    assert "127.0.0.1:8082" in texts["haproxy.cfg"]


def test_bench_run_starts_in_a_plain_clone() -> None:
    result = subprocess.run(
        ["bash", str(REPO / "bench" / "run"), "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "--quick" in result.stdout


def test_the_micro_benchmarks_still_drive_the_code_they_measure() -> None:
    """bench/hotpath.py and bench/routing.py build real listeners and routers: a change to their
    constructors must not leave the figures the README quotes unmeasurable."""
    for script, args, said in (
        ("hotpath.py", ["--requests", "300"], "us of Python per proxied request"),
        ("routing.py", ["--number", "50"], "Router.match, microseconds per call"),
    ):
        result = subprocess.run(
            [sys.executable, str(REPO / "bench" / script), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert said in result.stdout


def test_paired_ratios_are_taken_within_a_cycle_and_noise_is_called_out() -> None:
    bench = load_bench()
    result = bench.Paired([bench.Workload("L7", "small")], ["portico", "haproxy", "nginx"])
    result.cycles = 3
    # the host slows down by half in the last cycle: both targets slow together, the ratio holds
    for cycle, scale in enumerate((1.0, 1.0, 0.5)):
        result.per_cpu_s[(0, "portico", str(cycle))] = 40_000 * scale
        result.per_cpu_s[(0, "haproxy", str(cycle))] = 80_000 * scale
    assert bench.paired_ratios(result, 0, "portico", "haproxy") == [0.5, 0.5, 0.5]
    assert bench.paired_ratios(result, 0, "portico", "nginx") == []  # nginx never measured
    result.canary_ms = [250.0, 251.0, 500.0]
    verdict = bench.paired_verdict(result)
    assert verdict.startswith("noisy")
    assert "canary" in verdict
    result.canary_ms = [250.0, 251.0, 252.0]
    assert bench.paired_verdict(result).startswith("quiet")
    table = bench.render_paired(result)
    assert "0.50 (0.50-0.50)" in table
