"""Which build of Portico is installed: the mypyc-compiled hot path or pure Python, and whether
each compiled module still matches the source it was compiled from.

Owns the reading of the build manifest, `_compiled.json`, that setup.py's build_ext writes
beside the compiled modules (in a checkout's src/portico/ as in a wheel): the mypy that
compiled them, the shared runtime library's name, and the SHA-256 of each compiled module's
source at build time (the .py mypyc compiled, or the .c of a hand-written extension: setup.py's
NATIVE). Python imports a module's .so in preference to the .py beside it, so a source edited
after the compile would silently not run, and a .so left from a module no longer compiled would
shadow its source: `portico run/check/demo` refuse both (`problems`).

Never imports a compiled module (a broken one must be reported, not crash the check), and stays
cheap enough for every start: one directory walk and a hash of a few source files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Final

__all__ = ["MANIFEST_NAME", "Manifest", "compiled_files", "describe", "problems", "read_manifest"]

MANIFEST_NAME: Final = "_compiled.json"
SOURCE_SUFFIXES: Final = (".py", ".c")  # mypyc's modules, then setup.py's NATIVE ones
PACKAGE_DIR: Final = Path(__file__).resolve().parent
FIX: Final = (
    "rebuild with scripts/setup in a checkout (PORTICO_NO_COMPILE=1 scripts/setup for pure "
    "Python), or reinstall the package"
)


@dataclass(frozen=True, slots=True)
class Manifest:
    """What one compile produced."""

    mypy: str  # the version of mypy (mypyc) that compiled it
    group: str  # the shared runtime library's module name, beside the package
    sources: dict[str, str]  # module name -> SHA-256 of its source when it was compiled


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(package_dir: Path = PACKAGE_DIR) -> Manifest | None:
    """The manifest beside the package, or None if there is none. Raises ValueError when it
    cannot be read as one."""
    path = package_dir / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"unreadable build manifest {path}: {exc}") from exc
    try:
        sources = data["sources"]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in sources.items()):
            raise TypeError("sources must map module names to hashes")
        return Manifest(mypy=str(data["mypy"]), group=str(data["group"]), sources=dict(sources))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed build manifest {path}: {exc}") from exc


def _module_name(path: Path, root: Path) -> str | None:
    """`portico.http.headers` for portico/http/headers.cpython-311-x86_64-linux-gnu.so, if the
    file has an extension suffix this interpreter imports (longest first: `.abi3.so` before
    `.so`); None otherwise."""
    relative = path.relative_to(root).as_posix()
    for suffix in sorted(EXTENSION_SUFFIXES, key=len, reverse=True):
        if relative.endswith(suffix):
            return relative[: -len(suffix)].replace("/", ".")
    return None


def _source_of(directory: Path, stem: str) -> Path | None:
    """The source a compiled module was built from: its .py (mypyc) or, for the hand-written
    C extensions (setup.py's NATIVE), its .c."""
    for suffix in SOURCE_SUFFIXES:
        source = directory / (stem + suffix)
        if source.is_file():
            return source
    return None


def compiled_files(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """The package's extension modules that this interpreter would import, by module name."""
    found: dict[str, Path] = {}
    for path in package_dir.rglob("*"):
        if path.is_file() and (name := _module_name(path, package_dir.parent)) is not None:
            found[name] = path
    return found


def problems(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Why the installed compiled modules must not run, one line each; empty when they are a
    build of the sources beside them (or when there are none: pure Python)."""
    found = compiled_files(package_dir)
    if not found:
        return []
    try:
        manifest = read_manifest(package_dir)
    except ValueError as exc:
        return [str(exc)]
    if manifest is None:
        names = ", ".join(sorted(found))
        return [f"compiled modules without a build manifest ({MANIFEST_NAME}): {names}"]
    lines = []
    for name, path in sorted(found.items()):
        if name not in manifest.sources:
            lines.append(f"{name}: a compiled module this build does not include ({path})")
            continue
        source = _source_of(path.parent, name.rpartition(".")[2])
        if source is not None and source_hash(source) != manifest.sources[name]:
            lines.append(f"{name}: compiled from an older {source} (edited since)")
    lines.extend(
        f"{name}: in the build manifest, but its compiled module is missing"
        for name in sorted(manifest.sources.keys() - found.keys())
    )
    root = package_dir.parent
    if not any((root / (manifest.group + suffix)).is_file() for suffix in EXTENSION_SUFFIXES):
        lines.append(f"{manifest.group}: the compiled modules' runtime library is missing")
    return lines


def describe(package_dir: Path = PACKAGE_DIR) -> str:
    """One line for logs and test headers: which build this is."""
    found = compiled_files(package_dir)
    if not found:
        return f"pure Python ({package_dir})"
    try:
        manifest = read_manifest(package_dir)
    except ValueError:
        manifest = None
    mypy = f", mypyc {manifest.mypy}" if manifest else ""
    return f"compiled: {len(found)} modules{mypy} ({package_dir})"
