"""A worker and a supervisor load only what their config uses: redis-py (~20 MiB a process),
the h2 library (~14 MiB) and cryptography (~6 MiB) stay out of a plain HTTP config's processes
(issue #18: the process tree at rest)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("redis", "h2", "cryptography")


def loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_a_plain_http_worker_does_not_import_redis_h2_or_cryptography() -> None:
    code = (
        "import portico.worker\n"
        "from portico.config.load import parse_config\n"
        "parse_config('listeners: [{name: web, bind: 127.0.0.1:8080, protocol: http, "
        "default_pool: app}]\\npools: {app: {servers: [{address: 127.0.0.1:9001}]}}\\n', 'x')"
    )
    assert loaded_after(code) == set()


def test_the_supervisor_does_not_import_them_either() -> None:
    assert loaded_after("import portico.supervisor") == set()


def test_the_supervisor_loads_the_admin_api_only_for_an_admin_listener() -> None:
    # the admin API's models, the explain engine and prometheus-client (~2 MiB of the
    # supervisor's memory): loaded by `_start_admin` when the config has `admin:`
    probe = (
        "import sys, portico.supervisor\n"
        "print(' '.join(m for m in ('prometheus_client', 'portico.admin', 'portico.explain')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []
