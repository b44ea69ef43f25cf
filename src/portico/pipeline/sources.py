"""Streamed local answer bodies (`portico.http.local.BodySource`) that Portico provides.

Owns `FileBody` (a range of a regular file: read in bounded pieces, or sent by sendfile(2) on
a plain HTTP/1.1 connection) and `ChunksBody` (pieces an async iterator yields: a generated
body, a cache entry being read). Neither holds the whole body in memory.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

__all__ = ["ChunksBody", "FileBody"]


class FileBody:
    """`count` bytes of a regular file from `offset` (to its end when `count` is None). Opens
    the file at once (so a missing file is found before the answer starts) and closes it in
    `close`. Reads use pread(2): a file in the page cache costs no wait; for files on slow
    storage, prefer a cache in front."""

    __slots__ = ("_count", "_fd", "_offset", "_position", "length")

    def __init__(self, path: str | Path, offset: int = 0, count: int | None = None) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
        if offset < 0 or offset > size:
            os.close(fd)
            raise ValueError(f"offset {offset} is outside the file ({size} bytes)")
        if count is None or offset + count > size:
            count = size - offset
        self._fd = fd
        self._offset = offset
        self._position = offset
        self._count = count
        self.length: int | None = count

    async def read(self, max_bytes: int) -> bytes:
        end = self._offset + self._count
        want = min(max_bytes, end - self._position)
        if want <= 0 or self._fd < 0:
            return b""
        data = os.pread(self._fd, want, self._position)
        self._position += len(data)
        return data

    def file_range(self) -> tuple[int, int, int] | None:
        if self._fd < 0:
            return None
        return self._fd, self._position, self._offset + self._count - self._position

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


class ChunksBody:
    """The pieces `chunks` yields, in order (`length`: their total when known). An empty
    piece is skipped. An async generator left unfinished is finalised by the event loop's
    hooks once dropped."""

    __slots__ = ("_closed", "_iterator", "length")

    def __init__(self, chunks: AsyncIterator[bytes], length: int | None = None) -> None:
        self._iterator: AsyncIterator[bytes] = aiter(chunks)
        self._closed = False
        self.length = length

    async def read(self, max_bytes: int) -> bytes:
        """The next piece (it may be longer than `max_bytes`: a piece is never split)."""
        del max_bytes
        if self._closed:
            return b""
        async for piece in self._iterator:
            if piece:
                return piece
        return b""

    def file_range(self) -> tuple[int, int, int] | None:
        return None

    def close(self) -> None:
        self._closed = True
