"""Giving memory freed at start-up back to the kernel.

Start-up (imports, the config's parse and validation, building the pools) allocates and frees
megabytes on the C heap; glibc keeps the freed pages, counted in the process's RSS for its whole
life. `trim` returns them (malloc_trim), once, when a process has started: a no-op without glibc.
"""

from __future__ import annotations

import contextlib
import gc


def trim() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
