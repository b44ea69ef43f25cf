"""A server whose host name does not resolve: `portico check` warns, `portico run` logs it.

The name is under ``.invalid``, which never resolves (RFC 6761). Portico runs under
`isolated_resolver`, whose resolver is 127.0.0.1 alone, so the lookup never leaves the machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fakes import isolated_resolver, request

MISSING = "backend.invalid"
POOL = f"    servers:\n      - address: {MISSING}:80\n        name: ghost\n"


def unresolvable_config() -> str:
    return (
        "workers: 1\n"
        "listeners:\n"
        "  - name: web\n"
        "    bind: 127.0.0.1:0\n"
        "    default_pool: app\n"
        "pools:\n"
        "  app:\n"
        "    retries: 0\n"
        "    health: {passive: {enabled: false}}\n"
        f"{POOL}"
    )


def test_check_warns_about_a_name_that_does_not_resolve_and_still_passes(
    tmp_path: Path,
) -> None:
    (tmp_path / "portico.yaml").write_text(unresolvable_config())
    result = subprocess.run(
        [*isolated_resolver(tmp_path), sys.executable, "-m", "portico", "check", "portico.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    [warning] = result.stderr.splitlines()
    assert warning.startswith(
        f'portico.yaml pools.app.servers[0].address: warning: "{MISSING}" does not resolve here'
    )


def test_run_logs_why_requests_fail_once_not_per_request(portico, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proxy = portico(unresolvable_config(), isolated_resolver(tmp_path))
    start = len(proxy.stderr_lines)
    assert request(proxy.port).status == 502
    said = f"server ghost of pool app ({MISSING}:80): cannot connect: cannot resolve {MISSING}"
    assert proxy.wait_for_stderr(said, start=start) is not None
    for _ in range(5):
        assert request(proxy.port).status == 502
    # one line per server and cause, then at most one per 30 s (per worker)
    assert sum(said in line for line in proxy.stderr_lines[start:]) == 1
