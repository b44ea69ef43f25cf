"""Compiles Portico's HTTP/1.1 hot path with mypyc when it can; the rest is plain Python.

The modules in `COMPILED` are type-checked with `mypy --strict` and compiled to C extensions
next to their sources (about 2x less Python time per proxied request; see bench/hotpath.py).
Everything still works without them: set PORTICO_NO_COMPILE=1, or install without mypy
importable, and Portico installs as pure Python. pyproject.toml holds everything else.

Every compiled build carries a manifest, portico/_compiled.json (see portico/buildinfo.py):
the SHA-256 of each compiled module's source, so that `portico` refuses a compiled module that
no longer matches its source, or one that is no longer compiled at all.

`NATIVE` is hand-written C against the CPython API, built with the compiled build only (and
listed in the same manifest, hashed from its .c source): the TCP relay's byte copy
(portico/proxy/_relay.c). A pure-Python build has none, and portico.proxy.l4 copies in Python.

What users extend stays plain Python: balancing policies, filters, routing, health checks
(a compiled class cannot be subclassed from interpreted code).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from importlib.metadata import version
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

COMPILED = [
    "src/portico/http/headers.py",
    "src/portico/timers.py",
    "src/portico/outbox.py",  # every proxied write goes through it
    "src/portico/upstreams/connections.py",
    "src/portico/upstreams/splice.py",  # a spliced body's per-wake-up step
    "src/portico/upstreams/backend.py",
    "src/portico/upstreams/pool.py",
    "src/portico/observe/stats.py",
    "src/portico/proxy/context.py",  # listener settings, read natively by the two below
    "src/portico/listeners/http.py",
    "src/portico/proxy/l7.py",
    "src/portico/proxy/framing.py",  # ResponseFramer's subclasses: native calls from l7
    "src/portico/proxy/l4.py",  # the TCP relay's per-read callbacks
    "src/portico/health/budget.py",  # RetryBudget.record_request: once per request
    "src/portico/http/h2.py",  # an HTTP/2 request's fields in, its response's out
    "src/portico/http/hpack.py",  # HPACK for h2: compiled, its only reason to exist
    "src/portico/http/h2wire.py",  # h2's connection, its per-frame paths compiled and lean
    "src/portico/listeners/h2.py",  # the HTTP/2 connection and its streams (around h2)
    "src/portico/listeners/acceptor.py",  # accept(2) and the hand-over: once per connection
]
NATIVE = [  # built on Linux only (epoll): elsewhere the Python copy runs, as in a pure build
    "src/portico/proxy/_relay.c",  # the TCP relay's copy loop, on a thread of its own
]
NATIVE_FLAGS = ["-O2", "-Wall", "-Wextra", "-pthread"]
NATIVE_LINK = ["-pthread"]
GROUP = "portico"  # the shared runtime library is portico__mypyc, not a hash of the module list
MANIFEST = Path("portico", "_compiled.json")
MANIFEST_DATA = b""  # set by ext_modules()
GENERATED = Path("build", "portico-mypyc.json")  # what mypycify() made, and from what


def module_name(source: str) -> str:
    return ".".join(Path(source).relative_to("src").with_suffix("").parts)


def is_compiled_file(path: Path) -> bool:
    return path.is_file() and any(path.name.endswith(suffix) for suffix in EXTENSION_SUFFIXES)


def remove_compiled(root: Path, keep: frozenset[Path] = frozenset()) -> None:
    """Remove the compiled modules and manifest under `root` (a build/lib or src/), except
    `keep`: a module dropped from COMPILED must not linger and shadow its source."""
    candidates = [*root.glob(f"{GROUP}__mypyc.*"), *(root / "portico").rglob("*")]
    for path in candidates:
        if is_compiled_file(path) and path.resolve() not in keep:
            path.unlink()
    if not keep:
        (root / MANIFEST).unlink(missing_ok=True)


def replace_file(data: bytes, target: Path) -> None:
    """Write `target` whole by renaming a temporary file over it: a running Portico keeps the
    old compiled module mapped, and overwriting that in place could crash it."""
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, target)


class BuildExt(build_ext):
    """build_ext that writes the manifest beside the modules, clears leftovers, and installs in
    place (--inplace) file by file atomically, skipping files that are unchanged."""

    def run(self) -> None:
        super().run()  # compiles into build_lib (skipping up-to-date modules), then in place
        lib = Path(self.build_lib)
        built = frozenset((lib / self.get_ext_filename(e.name)).resolve() for e in self.extensions)
        remove_compiled(lib, keep=built)
        replace_file(MANIFEST_DATA, lib / MANIFEST)

    def copy_extensions_to_source(self) -> None:
        build_py_cmd = self.get_finalized_command("build_py")
        pairs = [self._get_inplace_equivalent(build_py_cmd, ext) for ext in self.extensions]
        for inplace, regular in pairs:
            data = Path(regular).read_bytes()
            target = Path(inplace)
            if not (target.is_file() and target.read_bytes() == data):
                replace_file(data, target)
        src = Path(build_py_cmd.get_package_dir("portico")).parent
        remove_compiled(src, keep=frozenset(Path(inplace).resolve() for inplace, _ in pairs))
        replace_file(MANIFEST_DATA, src / MANIFEST)  # last: the build is complete


class BuildPy(build_py):
    """build_py that, for a pure-Python build, clears compiled modules an earlier build left
    in build_lib (a wheel takes all of build_lib)."""

    def run(self) -> None:
        super().run()
        if not self.distribution.ext_modules:
            remove_compiled(Path(self.build_lib))


def generation_key() -> str:
    """Everything mypyc's C output depends on: its version and Python's, this file and
    pyproject.toml (mypy's options), every source of the package (the compiled modules' types
    come from the others too), and the installed distributions (their types as well)."""
    from importlib.metadata import distributions

    digest = hashlib.sha256(f"{sys.version}\0{version('mypy')}\0".encode())
    for path in [Path("setup.py"), Path("pyproject.toml"), *sorted(Path("src").rglob("*.py"))]:
        digest.update(f"{path}\0".encode() + path.read_bytes() + b"\0")
    installed = sorted(f"{d.metadata['Name']}=={d.version}" for d in distributions())
    digest.update("\0".join(installed).encode())
    return digest.hexdigest()


def generated_extensions(key: str) -> list[object] | None:
    """The extensions of an earlier mypycify() with the same `key`, if their C files are all
    still in build/: mypyc's type-check pass (the slow part of an unchanged rebuild, as for a
    wheel after scripts/compile) would only write the same files again."""
    try:
        cached = json.loads(GENERATED.read_text())
    except (OSError, ValueError):
        return None
    if cached.get("key") != key:
        return None
    from mypyc.build import setup_mypycify_vars

    extensions = []
    for fields in cached["extensions"]:
        if not all(Path(f).is_file() for f in [*fields["sources"], *fields["depends"]]):
            return None
        extension = Extension(fields["name"], fields["sources"])
        extension.__dict__.update(fields)
        extension.define_macros = [tuple(m) for m in fields["define_macros"]]
        extensions.append(extension)
    setup_mypycify_vars()  # the compiler settings mypycify() would have made
    print("portico: mypyc's C files in build/ are current: not generated again", file=sys.stderr)
    return extensions


def ext_modules() -> list[object]:
    global MANIFEST_DATA
    if os.environ.get("PORTICO_NO_COMPILE", "") not in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("portico: mypyc not importable, installing pure Python", file=sys.stderr)
        return []
    native_sources = NATIVE if sys.platform.startswith("linux") else []
    # hashed before mypyc reads them: a source edited during the compile then shows as stale
    sources = {
        module_name(s): hashlib.sha256(Path(s).read_bytes()).hexdigest()
        for s in [*COMPILED, *native_sources]
    }
    manifest = {"mypy": version("mypy"), "group": f"{GROUP}__mypyc", "sources": sources}
    MANIFEST_DATA = json.dumps(manifest, indent=2).encode() + b"\n"
    key = generation_key()
    extensions = generated_extensions(key)
    if extensions is None:
        extensions = list(mypycify(COMPILED, opt_level="3", group_name=GROUP))
        saved = [{k: v for k, v in vars(e).items() if not k.startswith("_")} for e in extensions]
        GENERATED.write_text(json.dumps({"key": key, "extensions": saved}, indent=1))
    native = [
        Extension(module_name(s), [s], extra_compile_args=NATIVE_FLAGS, extra_link_args=NATIVE_LINK)
        for s in native_sources
    ]
    return [*extensions, *native]


setup(ext_modules=ext_modules(), cmdclass={"build_ext": BuildExt, "build_py": BuildPy})
