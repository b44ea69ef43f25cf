"""Streaming compressors: gzip (zlib-ng), br (brotli) and zstd (zstandard) as body transforms.

Owns `Compressor`, a `BodyTransform` (feed / flush / end / abort, see the pipeline) that
compresses a response body as it passes, and the per-coding library settings that bound its
memory: the window of each coding is capped (gzip 32 KiB, br and zstd 512 KiB) so a response
costs well under a megabyte of compressor state whatever its length, and nothing is ever held
but what the library itself holds between two flushes. Never decides whether to compress
(`portico.compression.policy` does). No hand-written codec: the libraries do the work.

gzip is zlib-ng's (python-zlib-ng: the maintained, API-compatible successor of zlib, the
system zlib of Fedora since release 40): the same deflate format and levels at about half the
CPU of zlib 1.2.13 at level 5 on a 100 KiB JSON body (930 -> 460 us, output 1% smaller), which
is what decides compressed responses per CPU-second beside NGINX's zlib.

One call compresses what it is given, in the caller's thread: the edges hand it at most one
read of the server (or of a file) at a time, so a step is as long as that read takes to
compress (bench/compress_steps.py measures it per coding and level).
"""

from __future__ import annotations

from typing import Final, Protocol

import brotli
import zstandard
from zlib_ng import zlib_ng

__all__ = ["BROTLI_WINDOW_BITS", "ZSTD_WINDOW_LOG", "CodingBytes", "Compressor"]

BROTLI_WINDOW_BITS: Final = 19  # 512 KiB window (the library's default is 4 MiB)
ZSTD_WINDOW_LOG: Final = 19  # 512 KiB window (level 3's own is 1 MiB; 19 is up to 8 MiB)
_GZIP_WBITS: Final = 16 + zlib_ng.MAX_WBITS  # the gzip wrapper, 32 KiB window


class CodingBytes(Protocol):
    """Where a compressor adds the bytes it took (`before`) and gave (`after`): one per
    coding and worker (`portico.observe.stats.WorkerStats.coding_bytes`)."""

    before: int
    after: int


class _Engine(Protocol):
    def compress(self, data: bytes | memoryview) -> bytes: ...
    def flush(self) -> bytes: ...
    def finish(self) -> bytes: ...


class _Gzip:
    __slots__ = ("_z",)

    def __init__(self, level: int) -> None:
        self._z = zlib_ng.compressobj(level, zlib_ng.DEFLATED, _GZIP_WBITS, 8)

    def compress(self, data: bytes | memoryview) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush(zlib_ng.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib_ng.Z_FINISH)


class _Brotli:
    __slots__ = ("_b",)

    def __init__(self, level: int) -> None:
        self._b = brotli.Compressor(mode=brotli.MODE_TEXT, quality=level, lgwin=BROTLI_WINDOW_BITS)

    def compress(self, data: bytes | memoryview) -> bytes:
        return self._b.process(data)  # type: ignore[no-any-return]

    def flush(self) -> bytes:
        return self._b.flush()  # type: ignore[no-any-return]

    def finish(self) -> bytes:
        return self._b.finish()  # type: ignore[no-any-return]


class _Zstd:
    __slots__ = ("_z",)

    def __init__(self, level: int) -> None:
        params = zstandard.ZstdCompressionParameters.from_level(level, window_log=ZSTD_WINDOW_LOG)
        self._z = zstandard.ZstdCompressor(compression_params=params).compressobj()

    def compress(self, data: bytes | memoryview) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        return self._z.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


_ENGINES: Final[dict[str, type[_Gzip] | type[_Brotli] | type[_Zstd]]] = {
    "gzip": _Gzip,
    "br": _Brotli,
    "zstd": _Zstd,
}


# Throughput of one step, kB of JSON-like text per ms of one core, by coding and level
# (bench/compress_steps.py on this project's 2-core machine, rounded down): what a step of
# a given size holds the event loop for. gzip's row is zlib-ng's: zlib 1.2.13's row (140, 130,
# 120, 100, 85, 60, 40, 20, 15) scaled by zlib-ng's measured speed-up on the same 64 KiB
# steps (2.2x at level 1, 1.5x at 5, 1.2x at 7-8; 2026-12-06), so the budgets below are the
# time they say rather than two thirds of it.
_KB_PER_MS: Final = {
    "gzip": {1: 300, 2: 190, 3: 150, 4: 140, 5: 130, 6: 80, 7: 45, 8: 22, 9: 30},
    "br": {0: 400, 1: 380, 2: 250, 3: 180, 4: 120, 5: 70, 6: 45},
    "zstd": {1: 580, 2: 400, 3: 300, 4: 150, 5: 150, 6: 150, 7: 60, 8: 60, 9: 60},
}
STEP_BUDGET_MS: Final = 1.5  # a step the event loop may spend compressing inline
_MIN_OFFLOAD: Final = 16 * 1024
_MAX_OFFLOAD: Final = 256 * 1024


def offload_size(coding: str, level: int) -> int:
    """The piece size from which compressing with `coding` at `level` takes more than
    STEP_BUDGET_MS: larger pieces go to a worker thread, smaller ones are not worth the
    hand-over (it costs about a fifth of a 100 KiB gzip-5 step)."""
    rate = _KB_PER_MS[coding].get(level, 30)
    return max(_MIN_OFFLOAD, min(_MAX_OFFLOAD, int(rate * 1000 * STEP_BUDGET_MS)))


class Compressor:
    """Compresses one response body with `coding` at `level`, as a `BodyTransform`.

    `streaming`: every `feed` is flushed at once (server-sent events must not wait behind a
    compressor's buffer), at some cost in ratio. `counter` gets the bytes before and after:
    added up here, and published to it by `flush`, `end` and `abort`, which the pipeline
    calls on the event loop's thread (`feed` may run in a worker thread, see `threaded`).
    """

    __slots__ = ("_after", "_before", "_counter", "_engine", "_streaming", "coding", "offload_min")

    # the pipeline may call `feed` in a worker thread (never two calls at once): the
    # libraries release the GIL while they compress, so the event loop runs meanwhile
    threaded = True

    def __init__(
        self,
        coding: str,
        level: int,
        *,
        streaming: bool = False,
        counter: CodingBytes | None = None,
    ) -> None:
        self.coding = coding
        self.offload_min = offload_size(coding, level)  # see `threaded`
        self._engine: _Engine | None = _ENGINES[coding](level)
        self._streaming = streaming
        self._counter = counter
        self._before = 0  # bytes taken and given since they were last published
        self._after = 0

    def _publish(self) -> None:
        counter = self._counter
        if counter is not None and (self._before or self._after):
            counter.before += self._before
            counter.after += self._after
            self._before = self._after = 0

    def feed(self, data: bytes | memoryview) -> bytes:
        engine = self._engine
        if engine is None or not data:
            return b""
        out = engine.compress(data)  # each library copies what it keeps of `data`
        if self._streaming:
            out += engine.flush()
        self._before += len(data)
        self._after += len(out)
        return out

    def flush(self) -> bytes:
        engine = self._engine
        out = b"" if engine is None else engine.flush()
        self._after += len(out)
        self._publish()
        return out

    def end(self) -> bytes:
        engine, self._engine = self._engine, None
        out = b"" if engine is None else engine.finish()
        self._after += len(out)
        self._publish()
        return out

    def abort(self) -> None:
        self._engine = None  # its state is freed with it; nothing more is sent
        self._publish()
