"""buildinfo.problems: which compiled modules must not run, on package trees laid out in a
temporary directory (the fake extension files are never imported)."""

from __future__ import annotations

import hashlib
import json
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from portico import buildinfo

SUFFIX = EXTENSION_SUFFIXES[0]  # e.g. .cpython-311-x86_64-linux-gnu.so


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A compiled build of portico.proxy.l7 that matches its source."""
    root = tmp_path / "portico"
    (root / "proxy").mkdir(parents=True)
    (root / "proxy" / "l7.py").write_text("x = 1\n")
    (root / "proxy" / f"l7{SUFFIX}").write_bytes(b"not really ELF")
    (root / "config.py").write_text("y = 2\n")
    (tmp_path / f"portico__mypyc{SUFFIX}").write_bytes(b"runtime")
    manifest = {
        "mypy": "2.4.1",
        "group": "portico__mypyc",
        "sources": {"portico.proxy.l7": sha("x = 1\n")},
    }
    (root / buildinfo.MANIFEST_NAME).write_text(json.dumps(manifest))
    return root


def test_a_build_of_the_current_sources_has_no_problems(package: Path) -> None:
    assert buildinfo.problems(package) == []
    assert buildinfo.compiled_files(package) == {
        "portico.proxy.l7": package / "proxy" / f"l7{SUFFIX}"
    }
    assert buildinfo.describe(package).startswith("compiled: 1 modules, mypyc 2.4.1")


def test_pure_python_has_no_problems_even_with_a_manifest_left(package: Path) -> None:
    (package / "proxy" / f"l7{SUFFIX}").unlink()
    assert buildinfo.problems(package) == []
    assert buildinfo.describe(package).startswith("pure Python")


def test_a_source_edited_after_the_compile_is_named(package: Path) -> None:
    (package / "proxy" / "l7.py").write_text("x = 2\n")
    [problem] = buildinfo.problems(package)
    assert problem.startswith("portico.proxy.l7: compiled from an older")


def test_a_compiled_module_the_build_does_not_include_is_named(package: Path) -> None:
    # e.g. a module taken out of setup.py's COMPILED whose .so was left behind
    (package / f"config{SUFFIX}").write_bytes(b"left over")
    [problem] = buildinfo.problems(package)
    assert problem.startswith("portico.config: a compiled module this build does not include")


def test_compiled_modules_without_a_manifest_are_refused(package: Path) -> None:
    # built before manifests existed, or by hand: nothing says which source they came from
    (package / buildinfo.MANIFEST_NAME).unlink()
    [problem] = buildinfo.problems(package)
    assert "without a build manifest" in problem
    assert "portico.proxy.l7" in problem


def test_a_module_missing_from_a_compiled_build_is_named(package: Path) -> None:
    # half a build: the compiled modules that import the missing one would fail at import
    manifest = json.loads((package / buildinfo.MANIFEST_NAME).read_text())
    manifest["sources"]["portico.proxy.framing"] = sha("z = 3\n")
    (package / buildinfo.MANIFEST_NAME).write_text(json.dumps(manifest))
    assert buildinfo.problems(package) == [
        "portico.proxy.framing: in the build manifest, but its compiled module is missing"
    ]


def test_a_missing_runtime_library_is_named(package: Path) -> None:
    (package.parent / f"portico__mypyc{SUFFIX}").unlink()
    assert buildinfo.problems(package) == [
        "portico__mypyc: the compiled modules' runtime library is missing"
    ]


def test_an_unreadable_manifest_is_a_problem_not_a_crash(package: Path) -> None:
    (package / buildinfo.MANIFEST_NAME).write_text("{not json")
    [problem] = buildinfo.problems(package)
    assert problem.startswith("unreadable build manifest")
    (package / buildinfo.MANIFEST_NAME).write_text('{"sources": []}')
    [problem] = buildinfo.problems(package)
    assert problem.startswith("malformed build manifest")
