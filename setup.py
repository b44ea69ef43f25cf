"""Compiles Portico's HTTP/1.1 hot path with mypyc when it can; the rest is plain Python.

The modules in `COMPILED` are type-checked with `mypy --strict` and compiled to C extensions
next to their sources (about 2x less Python time per proxied request; see bench/hotpath.py).
Everything still works without them: set PORTICO_NO_COMPILE=1, or install without mypy
importable, and Portico installs as pure Python. pyproject.toml holds everything else.

What users extend stays plain Python: balancing policies, filters, routing, health checks
(a compiled class cannot be subclassed from interpreted code).
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

COMPILED = [
    "src/portico/http/headers.py",
    "src/portico/timers.py",
    "src/portico/upstreams/connections.py",
    "src/portico/upstreams/backend.py",
    "src/portico/upstreams/pool.py",
    "src/portico/observe/stats.py",
    "src/portico/proxy/context.py",  # listener settings, read natively by the two below
    "src/portico/listeners/http.py",
    "src/portico/proxy/l7.py",
    "src/portico/proxy/h2.py",  # H2Exchange subclasses l7's Exchange: compiled together
]


def ext_modules() -> list[object]:
    if os.environ.get("PORTICO_NO_COMPILE", "") not in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("portico: mypyc not importable, installing pure Python", file=sys.stderr)
        return []
    # group_name: the shared runtime library is portico__mypyc, not a hash of the module list
    return list(mypycify(COMPILED, opt_level="3", group_name="portico"))


setup(ext_modules=ext_modules())
