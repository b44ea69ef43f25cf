"""Fixtures: a running admin API (see running.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.unit.admin.running import TOKEN, Admin, FakeSupervisor


@pytest.fixture
def make_admin() -> Iterator[Callable[..., Admin]]:
    started: list[Admin] = []

    def make(token: str | None = TOKEN, static_dir: Path | None = None) -> Admin:
        admin = Admin(FakeSupervisor(), token, static_dir)
        started.append(admin)
        return admin

    yield make
    for admin in started:
        admin.stop()


@pytest.fixture
def admin(make_admin: Callable[..., Admin]) -> Admin:
    """The admin API with a token."""
    return make_admin()
