"""Users install a package, not a clone: `python -m build --wheel` makes a wheel that carries
the compiled hot path, which installs into a fresh venv (no compiler, no mypy: seconds) and
runs `portico demo` on the compiled modules installed with it.

Runs where this checkout holds a current compiled build (scripts/test's compiled leg): the
wheel is built from the same build/ (mypyc leaves unchanged C files untouched, setuptools skips
up-to-date modules), so only mypyc's type-check pass runs again. A pure-Python checkout skips
it (building would compile from scratch), which under CI is a failure (tests/ci_policy.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import portico
from ci_policy import compiled_module_names
from fakes import demo_port, request, three_free_ports
from portico import buildinfo

REPO = Path(__file__).resolve().parents[2]
UV = REPO / ".venv" / "uv" / "bin" / "uv"
COMPILED_MODULES = compiled_module_names()


def checkout_is_compiled() -> bool:
    package = Path(portico.__file__).parent
    return package == REPO / "src" / "portico" and bool(buildinfo.compiled_files(package))


def mapped_files(root_pid: int) -> set[str]:
    """Every file mapped into `root_pid` or one of its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[str] = set()
    pending = [root_pid]
    while pending:
        pid = pending.pop()
        pending.extend(children.get(pid, []))
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        rows = (line.split(maxsplit=5) for line in maps.splitlines())
        found.update(row[5] for row in rows if len(row) == 6)  # the path, for a file mapping
    return found


def install(venv: Path, wheel: Path) -> None:
    """The wheel and its dependencies at the pinned versions, into `venv`: from uv's cache
    (scripts/setup filled it) when it can, else from the index."""
    command = [str(UV), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python")]
    command += ["-c", str(REPO / "requirements" / "demo.txt"), str(wheel)]
    env = {**os.environ, "UV_LINK_MODE": "copy", "UV_NO_PROGRESS": "1", "UV_SYSTEM_CERTS": "1"}
    offline = subprocess.run([*command, "--offline"], env=env, capture_output=True, timeout=300)
    if offline.returncode != 0:
        subprocess.run(command, env=env, check=True, timeout=300)


@pytest.mark.timeout(900)
def test_the_wheel_installs_and_serves_the_demo_compiled(tmp_path: Path) -> None:
    if not checkout_is_compiled():
        pytest.skip(
            "this checkout is not compiled (PORTICO_NO_COMPILE=1): building the wheel would "
            "compile from scratch; scripts/test runs this test in its compiled leg"
        )
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=840,
    )
    [wheel] = dist.glob("portico-*.whl")
    assert not wheel.name.endswith("-none-any.whl"), f"{wheel.name} is pure Python"

    venv = tmp_path / "venv"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    install(venv, wheel)
    print(f"fresh venv with the wheel installed in {time.monotonic() - started:.1f} s")
    # every compiled module imports from the wheel's extension files
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = (
        "import importlib, json, sys, portico\n"
        "from pathlib import Path\n"
        "manifest = json.loads((Path(portico.__file__).parent / '_compiled.json').read_text())\n"
        "print(json.dumps({n: importlib.import_module(n).__file__ for n in manifest['sources']}))"
    )
    loaded = subprocess.run(
        [venv / "bin" / "python", "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    files = json.loads(loaded.stdout)
    assert len(files) == len(COMPILED_MODULES)
    for name, file in files.items():
        assert Path(file).is_relative_to(venv), name
        assert file.endswith(EXTENSION_SUFFIXES[0]), f"{name} is pure Python: {file}"

    proc = subprocess.Popen(
        [
            *(str(venv / "bin" / "portico"), "demo", "--port", "0", "--admin-port", "0"),
            *("--backend-port", str(three_free_ports())),
        ],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        answer = request(demo_port(proc))
        assert answer.status == 200
        assert (answer.header("X-Backend") or "").startswith("backend-")
        # the processes that answered run the wheel's compiled code (mypyc puts it all in the
        # runtime library the modules share), nothing from the checkout
        mapped = mapped_files(proc.pid)
        runtime = [m for m in mapped if Path(m).name.startswith("portico__mypyc.")]
        assert runtime, "no process maps the compiled runtime library"
        assert all(Path(m).is_relative_to(venv) for m in runtime), runtime
        assert not [m for m in mapped if m.startswith(str(REPO))]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
