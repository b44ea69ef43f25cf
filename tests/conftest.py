from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ci_policy import (  # noqa: F401 (pytest hooks: the build under test, skips under CI)
    pytest_report_header,
    pytest_runtest_makereport,
    pytest_sessionstart,
)
from fakes import FakeBackend, Portico, pool_yaml


@pytest.fixture
def backends() -> Iterator[Callable[..., FakeBackend]]:
    """Make FakeBackends that are stopped at the end of the test."""
    made: list[FakeBackend] = []

    def make(name: str, handler=None, **options) -> FakeBackend:  # type: ignore[no-untyped-def]
        backend = FakeBackend(name, handler, **options)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.stop()


@pytest.fixture
def portico(tmp_path: Path) -> Iterator[Callable[..., Portico]]:
    """Start `portico run` on a config; stopped (SIGTERM) at the end of the test."""
    started: list[Portico] = []

    def start(config: str, prefix: Sequence[str] = (), **options: Any) -> Portico:
        proxy = Portico(config, tmp_path, prefix, **options)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def simple_config(
    backends: list[FakeBackend],
    *,
    policy: str = "round_robin",
    extra_pool: str = "",
    extra_listener: str = "",
    top: str = "",
) -> str:
    """One listener on a free port in front of one pool of `backends`."""
    return (
        f"workers: 1\n{top}"
        "listeners:\n"
        "  - name: web\n"
        "    bind: 127.0.0.1:0\n"
        "    default_pool: app\n"
        f"{extra_listener}"
        "pools:\n"
        "  app:\n"
        f"    policy: {policy}\n"
        f"{extra_pool}"
        "    servers:\n" + pool_yaml(backends)
    )
