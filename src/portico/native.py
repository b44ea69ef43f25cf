"""mypyc's class decorators for the compiled hot path, or stand-ins that do nothing.

`trait` and `mypyc_attr` come from mypy_extensions, which is there wherever mypyc compiles
Portico but is not a dependency of running it: a pure-Python install gets no-op stand-ins. The
compiled modules never call them at run time (mypyc reads them while compiling), so either way
what is imported here only has to exist.

Why the hot path wants them: mypyc calls a method or reads an attribute of an object typed
by a `Protocol` the generic way (a look-up by name, then a call through Python's calling
convention: ~300-500 instructions a call), but those of a native base class or trait through
its vtable (a C call).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["mypyc_attr", "trait"]

_T = TypeVar("_T")

try:
    from mypy_extensions import mypyc_attr, trait
except ImportError:  # pure Python, without mypy installed

    def trait(cls: _T) -> _T:
        return cls

    def mypyc_attr(*attrs: str, **kwattrs: object) -> Callable[[_T], _T]:
        return lambda cls: cls
