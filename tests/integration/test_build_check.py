"""A stale compiled build is noticed: `portico check`, `run` and `demo` refuse compiled modules
that do not match their source, before anything imports them, and `scripts/compile --check`
(which scripts/setup asks before compiling) says when a checkout must compile again. Both run
for real on copies of the package with stand-in compiled files (never imported) and a manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from importlib.metadata import version
from pathlib import Path

import pytest

import portico
from ci_policy import compiled_module_names
from portico import buildinfo

SUFFIX = EXTENSION_SUFFIXES[0]
CONFIG = """\
listeners:
  - name: web
    bind: 127.0.0.1:0
    default_pool: app
pools:
  app:
    servers:
      - address: 127.0.0.1:9
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A copy of this portico, pure Python, then "compiled" for portico.proxy.l7: a stand-in
    .so, the runtime library and a manifest that records l7.py's current hash."""
    root = tmp_path / "site"
    package = root / "portico"
    shutil.copytree(
        Path(portico.__file__).parent,
        package,
        ignore=shutil.ignore_patterns("*.so", "*.pyd", buildinfo.MANIFEST_NAME, "__pycache__"),
    )
    (package / "proxy" / f"l7{SUFFIX}").write_bytes(b"a stand-in: importing it would fail")
    (root / f"portico__mypyc{SUFFIX}").write_bytes(b"a stand-in")
    digest = hashlib.sha256((package / "proxy" / "l7.py").read_bytes()).hexdigest()
    manifest = {"mypy": "0", "group": "portico__mypyc", "sources": {"portico.proxy.l7": digest}}
    (package / buildinfo.MANIFEST_NAME).write_text(json.dumps(manifest))
    (tmp_path / "portico.yaml").write_text(CONFIG)
    return root


def portico_cli(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, "-m", "portico", *args],
        cwd=site.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_a_build_that_matches_its_sources_is_accepted(site: Path) -> None:
    result = portico_cli(site, "check", "portico.yaml")
    assert result.returncode == 0, result.stderr
    assert "portico.yaml: OK" in result.stdout


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_compiled_module_older_than_its_source_is_refused(site: Path, command: str) -> None:
    with (site / "portico" / "proxy" / "l7.py").open("a") as source:
        source.write("# edited after the compile\n")
    result = portico_cli(site, command, "portico.yaml")
    assert result.returncode == 2
    assert "portico.proxy.l7: compiled from an older" in result.stderr
    assert "scripts/setup" in result.stderr
    assert "listening" not in result.stderr + result.stdout  # `run` never started


def test_a_native_module_older_than_its_c_source_is_refused(site: Path) -> None:
    # setup.py's NATIVE: hand-written C, hashed from its .c like a mypyc module from its .py
    package = site / "portico"
    (package / "proxy" / f"_relay{SUFFIX}").write_bytes(b"a stand-in")
    manifest = json.loads((package / buildinfo.MANIFEST_NAME).read_text())
    source = package / "proxy" / "_relay.c"
    manifest["sources"]["portico.proxy._relay"] = hashlib.sha256(source.read_bytes()).hexdigest()
    (package / buildinfo.MANIFEST_NAME).write_text(json.dumps(manifest))
    assert portico_cli(site, "check", "portico.yaml").returncode == 0
    with source.open("a") as edited:
        edited.write("/* edited after the compile */\n")
    result = portico_cli(site, "check", "portico.yaml")
    assert result.returncode == 2
    assert "portico.proxy._relay: compiled from an older" in result.stderr


def test_a_compiled_module_left_from_an_earlier_build_is_refused(site: Path) -> None:
    # a module taken out of setup.py's COMPILED: its old .so would shadow the source
    (site / "portico" / "routing" / f"router{SUFFIX}").write_bytes(b"left over")
    result = portico_cli(site, "demo", "--port", "0", "--admin-port", "0")
    assert result.returncode == 2
    assert "portico.routing.router: a compiled module this build does not include" in result.stderr


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of this checkout's setup.py, scripts/compile and sources (sharing its .venv),
    "compiled": a stand-in .so for every module of setup.py's COMPILED, the runtime library,
    and the manifest the compile would write."""
    root = tmp_path / "checkout"
    shutil.copytree(
        REPO / "src" / "portico",
        root / "src" / "portico",
        ignore=shutil.ignore_patterns("*.so", "*.pyd", buildinfo.MANIFEST_NAME, "__pycache__"),
    )
    (root / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "compile", root / "scripts" / "compile")
    shutil.copy2(REPO / "setup.py", root / "setup.py")
    (root / ".venv").symlink_to(REPO / ".venv")
    sources = {}
    for name in compiled_module_names():
        stem = root / "src" / Path(*name.split("."))
        source = stem.with_suffix(".py")
        if not source.is_file():
            source = stem.with_suffix(".c")  # setup.py's NATIVE: hand-written C
        source.with_name(source.stem + SUFFIX).write_bytes(b"a stand-in")
        sources[name] = hashlib.sha256(source.read_bytes()).hexdigest()
    (root / "src" / f"portico__mypyc{SUFFIX}").write_bytes(b"a stand-in")
    manifest = {"mypy": version("mypy"), "group": "portico__mypyc", "sources": sources}
    (root / "src" / "portico" / buildinfo.MANIFEST_NAME).write_text(json.dumps(manifest))
    return root


def is_current(checkout: Path) -> bool:
    """`scripts/compile --check`: what scripts/setup asks before it compiles."""
    command = ["bash", str(checkout / "scripts" / "compile"), "--check"]
    return subprocess.run(command, timeout=60).returncode == 0


def test_a_current_build_is_not_compiled_again(checkout: Path) -> None:
    assert is_current(checkout)


def test_a_module_dropped_from_setup_py_is_compiled_away(checkout: Path) -> None:
    setup_py = checkout / "setup.py"
    setup_py.write_text(setup_py.read_text().replace('    "src/portico/timers.py",\n', ""))
    assert not is_current(checkout)


def test_an_edited_source_is_compiled_again(checkout: Path) -> None:
    with (checkout / "src" / "portico" / "timers.py").open("a") as source:
        source.write("# edited\n")
    assert not is_current(checkout)


def test_an_edited_c_source_is_compiled_again(checkout: Path) -> None:
    with (checkout / "src" / "portico" / "proxy" / "_relay.c").open("a") as source:
        source.write("/* edited */\n")
    assert not is_current(checkout)


def test_another_mypy_compiles_again(checkout: Path) -> None:
    manifest_path = checkout / "src" / "portico" / buildinfo.MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "mypy": "0.1"}))
    assert not is_current(checkout)


def test_pure_python_is_not_a_current_build(checkout: Path) -> None:
    subprocess.run(["bash", str(checkout / "scripts" / "compile"), "--remove"], check=True)
    assert not list((checkout / "src").rglob(f"*{SUFFIX}"))
    assert not is_current(checkout)
