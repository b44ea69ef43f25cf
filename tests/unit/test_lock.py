"""requirements/*.txt, which scripts/setup installs, still pin what pyproject.toml and
requirements/*.in ask for: a dependency added or tightened without `scripts/lock` would
otherwise go missing from a fresh install, or be installed at a version the project excludes."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements"
PYPROJECT = tomllib.loads((REQUIREMENTS.parent / "pyproject.toml").read_text())


def pins(lock: str) -> dict[str, str]:
    """name -> version pinned in requirements/`lock`, each with at least one hash."""
    text = (REQUIREMENTS / lock).read_text()
    found = {}
    for name, version, hashes in re.findall(
        r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)[^\n]*\\\n((?:\s+--hash=sha256:[0-9a-f]{64}[ \\]*\n)+)",
        text,
        flags=re.MULTILINE,
    ):
        assert hashes.strip(), f"{name} has no hash in {lock}"
        found[canonicalize_name(name)] = version
    assert found, f"no pins found in {lock}"
    return found


def inputs(path: str) -> list[str]:
    lines = (REQUIREMENTS / path).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


RUNTIME = PYPROJECT["project"]["dependencies"]
TEST = PYPROJECT["project"]["optional-dependencies"]["test"]
BUILD = inputs("build.in")


@pytest.mark.parametrize(
    ("lock", "wanted"),
    [
        ("demo.txt", RUNTIME + BUILD),
        ("test.txt", RUNTIME + TEST + BUILD),
        ("uv.txt", inputs("uv.in")),
    ],
)
def test_every_requirement_is_pinned_at_an_allowed_version(lock: str, wanted: list[str]) -> None:
    pinned = pins(lock)
    for line in wanted:
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not pinned in requirements/{lock}: run scripts/lock"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"requirements/{lock} pins {name}=={pinned[name]}, outside {requirement.specifier}:"
            " run scripts/lock"
        )


def test_the_demo_runs_the_versions_the_suite_tested() -> None:
    demo, test = pins("demo.txt"), pins("test.txt")
    assert {name: test.get(name) for name in demo} == demo
