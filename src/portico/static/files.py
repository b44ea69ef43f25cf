"""Bodies read from an open file: one range of it, or several as multipart/byteranges.

Owns `FileBody` and `MultipartBody`, streaming `BodySource`s (see the pipeline contract:
`length`, `read`, `file_range`, `close`) over a descriptor opened once: what is sent is the
file that was opened and measured, even if its name is replaced meanwhile (the old copy
stays readable through the descriptor until `close`). `close` is idempotent and always
closes the descriptor. Reads use `os.pread` of at most the size asked for, so memory stays
bounded; never touches a socket (the edges send, with sendfile where they can).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = ["FileBody", "MultipartBody"]


class FileBody:
    """`count` bytes of the file open at `fd`, from `offset`. Owns `fd`."""

    __slots__ = ("_fd", "_pos", "_remaining", "count", "length", "offset")

    def __init__(self, fd: int, offset: int, count: int) -> None:
        self._fd = fd
        self.offset = offset
        self.count = count
        self.length: int | None = count
        self._pos = offset
        self._remaining = count

    async def read(self, max_bytes: int) -> bytes:
        if self._fd < 0 or self._remaining <= 0:
            return b""
        data = os.pread(self._fd, min(max_bytes, self._remaining), self._pos)
        if not data:
            # the file was truncated in place since it was measured: the length promised
            # cannot be kept, so the response must end incomplete rather than short
            raise OSError("the file shrank while it was served")
        self._pos += len(data)
        self._remaining -= len(data)
        return data

    def file_range(self) -> tuple[int, int, int] | None:
        """What is left to send: (fd, position, count); None once closed."""
        if self._fd < 0:
            return None
        return (self._fd, self._pos, self._remaining)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


class MultipartBody:
    """Several ranges of the file open at `fd` as a multipart/byteranges body: each part's
    head (boundary, Content-Type, Content-Range), its bytes, then the closing boundary.
    Owns `fd`."""

    __slots__ = ("_current", "_fd", "_pieces", "length")

    def __init__(self, fd: int, parts: Sequence[tuple[bytes, int, int]], closing: bytes) -> None:
        """`parts`: (part head, first byte, last byte) in order; `closing`: the last
        boundary line."""
        self._fd = fd
        # what is left to send: bytes to send as they are, or (position, count) of the file
        self._pieces: list[bytes | tuple[int, int]] = []
        length = len(closing)
        for head, first, last in parts:
            self._pieces.append(head)
            self._pieces.append((first, last - first + 1))
            length += len(head) + last - first + 1
        self._pieces.append(closing)
        self._pieces.reverse()  # popped from the end
        self._current: bytes | tuple[int, int] | None = None
        self.length: int | None = length

    async def read(self, max_bytes: int) -> bytes:
        if self._fd < 0:
            return b""
        piece = self._current
        if piece is None:
            if not self._pieces:
                return b""
            piece = self._pieces.pop()
        if isinstance(piece, bytes):
            self._current = None
            return piece
        pos, count = piece
        data = os.pread(self._fd, min(max_bytes, count), pos)
        if not data:
            raise OSError("the file shrank while it was served")
        count -= len(data)
        self._current = (pos + len(data), count) if count else None
        return data

    def file_range(self) -> tuple[int, int, int] | None:
        return None  # several pieces with heads between: read, not sendfile

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
