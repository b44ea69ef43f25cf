"""The disk tier: stored responses in files, shared by the workers of one instance, bounded in
bytes, kept across restarts.

Owns the file format and its rules. One file per stored response, named by hashes of the URI,
the key and (when the response has Vary) the selecting request values, so that a purge or
invalidation by URI finds every key and variant of it. Beside a key whose latest response had
Vary, a small marker file names its selecting fields: a lookup reads it to know which request
values pick the file (RFC 9111 §4.1: the most recent response's Vary decides); variants stored
under other selecting fields are left to the LRU. A file is the body, then the head as JSON, then a
fixed trailer (head length, body length, magic): it is written under `tmp/` as the body
streams in and renamed into place only once complete (rename(2) is atomic), so a worker killed
while storing leaves at most a temporary file, never a half entry; a file whose trailer does
not add up is never served and is removed. The bound is kept by each worker: when its estimate
of the directory's size passes the limit it scans the directory and removes the least recently
used files (a hit touches the file's mtime) down to 90%.

I/O here is synchronous on the event loop: small reads of a head, appends of body pieces the
proxy has in hand, renames. Bodies are never read whole: a hit is served from the file
(`portico.pipeline.sources.FileBody`, sendfile on plain HTTP/1.1).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from portico.cache.policy import StoredHead, selecting_value
from portico.http.headers import Header
from portico.pipeline.sources import FileBody

__all__ = ["DiskBody", "DiskEntry", "DiskStore", "DiskWriter"]

log = logging.getLogger(__name__)

_MAGIC: Final = b"PCE1"
_TRAILER: Final = struct.Struct("<QQ4s")  # head length, body length, magic
_SUFFIX: Final = ".pce"
_VARY_SUFFIX: Final = ".pcv"  # a key's selecting field names (not an entry: not counted)


def _digest(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()[:32]


def _text(value: bytes) -> str:
    return value.decode("latin-1")


def _bytes(value: str) -> bytes:
    return value.encode("latin-1")


def _selection(vary: tuple[bytes, ...], selected: tuple[bytes | None, ...]) -> bytes:
    """One Vary selection as bytes: each field name with its value, or marked absent."""
    return b"\n".join(
        name + (b"\x00" if value is None else b":" + value)
        for name, value in zip(vary, selected, strict=True)
    )


@dataclass(frozen=True, slots=True)
class DiskBody:
    """A stored body in a file: `length` bytes from offset 0."""

    path: str
    length: int

    def open(self, offset: int = 0, count: int | None = None) -> FileBody:
        """A streamed source of the body's bytes from `offset` (`count` of them)."""
        return FileBody(self.path, offset, self.length - offset if count is None else count)

    def read(self) -> bytes:
        with open(self.path, "rb") as file:
            return file.read(self.length)


@dataclass(slots=True)
class DiskEntry:
    """A stored response found on disk."""

    key: bytes
    uri: bytes
    head: StoredHead
    body: DiskBody
    tags: frozenset[bytes]


def _encode_head(entry_key: bytes, uri: bytes, head: StoredHead, tags: frozenset[bytes]) -> bytes:
    data: dict[str, Any] = {
        "key": _text(entry_key),
        "uri": _text(uri),
        "status": head.status,
        "headers": [[_text(n), _text(v)] for n, v in head.headers],
        "request_time": head.request_time,
        "response_time": head.response_time,
        "vary": [_text(v) for v in head.vary],
        "selected": [None if v is None else _text(v) for v in head.selected],
        "tags": sorted(_text(t) for t in tags),
    }
    return json.dumps(data, separators=(",", ":")).encode("ascii")


def _decode_head(raw: bytes) -> tuple[bytes, bytes, StoredHead, frozenset[bytes]]:
    data = json.loads(raw)
    headers = [(_bytes(n), _bytes(v)) for n, v in data["headers"]]
    head = StoredHead.make(
        int(data["status"]), headers, data["request_time"], data["response_time"]
    )
    head = StoredHead(
        head.status,
        head.headers,
        head.request_time,
        head.response_time,
        head.cc,
        tuple(_bytes(v) for v in data["vary"]),
        tuple(None if v is None else _bytes(v) for v in data["selected"]),
    )
    tags = frozenset(_bytes(t) for t in data["tags"])
    return _bytes(data["key"]), _bytes(data["uri"]), head, tags


class DiskWriter:
    """One response being written to a temporary file as its body arrives."""

    __slots__ = ("_file", "_store", "_tmp", "size")

    def __init__(self, store: DiskStore, tmp: str) -> None:
        self._store = store
        self._tmp = tmp
        self._file: Any = open(tmp, "wb")  # noqa: SIM115 (closed by commit/abort)
        self.size = 0

    def write(self, data: bytes | memoryview) -> bool:
        """Append body bytes; False (and the file is dropped) past the entry limit or on an
        I/O error."""
        if self._file is None:
            return False
        self.size += len(data)
        if self.size > self._store.max_entry:
            self.abort()
            return False
        try:
            self._file.write(data)
        except OSError as exc:
            log.warning("cache: writing %s failed: %s", self._tmp, exc)
            self.abort()
            return False
        return True

    def commit(self, key: bytes, uri: bytes, head: StoredHead, tags: frozenset[bytes]) -> bool:
        """The body is complete: append the head and trailer, rename into place."""
        file, self._file = self._file, None
        if file is None:
            return False
        meta = _encode_head(key, uri, head, tags)
        try:
            file.write(meta)
            file.write(_TRAILER.pack(len(meta), self.size, _MAGIC))
            file.close()
            final = self._store.path_of(uri, key, head.vary, head.selected)
            os.replace(self._tmp, final)
            self._store.mark_vary(uri, key, head.vary)
        except OSError as exc:
            log.warning("cache: storing %s failed: %s", self._tmp, exc)
            with contextlib.suppress(OSError):
                file.close()
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            return False
        self._store.added(self.size + len(meta) + _TRAILER.size)
        return True

    def abort(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)


class DiskStore:
    """The files of one cache directory."""

    def __init__(self, path: str | Path, max_bytes: int, max_entry: int) -> None:
        self.root = Path(path)
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.max_entry = max_entry
        self.evictions = 0
        self._serial = 0
        self._clean_temporary()
        self.bytes = self._scan_size()

    # -- files ------------------------------------------------------------------------------

    def path_of(
        self,
        uri: bytes,
        key: bytes,
        vary: tuple[bytes, ...] = (),
        selected: tuple[bytes | None, ...] = (),
    ) -> str:
        """The file of (`uri`, `key`) and, with Vary, of the selection it answered."""
        name = f"{_digest(uri)}.{_digest(key)}"
        if vary:
            name += "." + _digest(_selection(vary, selected))
        return str(self.root / (name + _SUFFIX))

    def _marker(self, uri: bytes, key: bytes) -> str:
        return str(self.root / f"{_digest(uri)}.{_digest(key)}{_VARY_SUFFIX}")

    def mark_vary(self, uri: bytes, key: bytes, vary: tuple[bytes, ...]) -> None:
        """Record the selecting fields of `key`'s latest stored response (none: no marker)."""
        marker = self._marker(uri, key)
        if not vary:
            with contextlib.suppress(OSError):
                os.unlink(marker)
            return
        self._serial += 1
        tmp = str(self.tmp / f"{os.getpid()}-{self._serial}.vary")
        try:
            with open(tmp, "wb") as file:
                file.write(b",".join(vary))
            os.replace(tmp, marker)
        except OSError as exc:
            log.warning("cache: writing %s failed: %s", marker, exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _vary_of(self, uri: bytes, key: bytes) -> tuple[bytes, ...]:
        try:
            with open(self._marker(uri, key), "rb") as file:
                raw = file.read(4096)
        except OSError:
            return ()
        return tuple(raw.split(b",")) if raw else ()

    def _clean_temporary(self) -> None:
        """Temporary files of workers that are gone (killed while storing) are removed."""
        for entry in os.scandir(self.tmp):
            pid = entry.name.split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)

    def _scan_size(self) -> int:
        total = 0
        for entry in os.scandir(self.root):
            if entry.name.endswith(_SUFFIX):
                with contextlib.suppress(OSError):
                    total += entry.stat().st_size
        return total

    # -- reading ----------------------------------------------------------------------------

    def lookup(
        self, uri: bytes, key: bytes, request_headers: Sequence[Header] = ()
    ) -> DiskEntry | None:
        """The entry stored for (`uri`, `key`) that `request_headers` select, or None (absent,
        or not whole: then removed)."""
        vary = self._vary_of(uri, key)
        selected = tuple(selecting_value(request_headers, name) for name in vary)
        path = self.path_of(uri, key, vary, selected)
        try:
            stored_key, stored_uri, head, tags, body_len = _read(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cache: %s is not a whole entry (%s): removed", path, exc)
            self._unlink(path)
            return None
        if stored_key != key:
            return None  # a hash collision: not ours
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used
        return DiskEntry(stored_key, stored_uri, head, DiskBody(path, body_len), tags)

    # -- writing ----------------------------------------------------------------------------

    def writer(self) -> DiskWriter | None:
        self._serial += 1
        tmp = str(self.tmp / f"{os.getpid()}-{self._serial}.tmp")
        try:
            return DiskWriter(self, tmp)
        except OSError as exc:
            log.warning("cache: cannot write in %s: %s", self.tmp, exc)
            return None

    def refresh(self, entry: DiskEntry, head: StoredHead) -> None:
        """A 304 updated `entry`'s head: the file is written anew (body copied), atomically."""
        writer = self.writer()
        if writer is None:
            return
        try:
            with open(entry.body.path, "rb") as source:
                left = entry.body.length
                while left > 0:
                    piece = source.read(min(left, 1 << 20))
                    if not piece:
                        raise OSError("the stored body is shorter than its trailer says")
                    left -= len(piece)
                    if not writer.write(piece):
                        return
        except OSError:
            writer.abort()
            return
        self._unlink(entry.body.path, count=True)
        writer.commit(entry.key, entry.uri, head, entry.tags)

    def added(self, size: int) -> None:
        self.bytes += size
        if self.bytes > self.max_bytes:
            self._evict()

    def _evict(self) -> None:
        """Remove the least recently used files until the directory is at 90% of its bound
        (the other workers' files too: the directory is shared)."""
        files = []
        for entry in os.scandir(self.root):
            if entry.name.endswith(_SUFFIX):
                with contextlib.suppress(OSError):
                    st = entry.stat()
                    files.append((st.st_mtime, st.st_size, entry.path))
        total = sum(size for _, size, _ in files)
        files.sort()
        goal = self.max_bytes * 9 // 10
        for _, size, path in files:
            if total <= goal:
                break
            if self._unlink(path, count=False):
                total -= size
                self.evictions += 1
        self.bytes = total

    # -- removing ---------------------------------------------------------------------------

    def _unlink(self, path: str, count: bool = True) -> bool:
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except OSError:
            return False
        if count:
            self.bytes = max(0, self.bytes - size)
        return True

    def remove(self, uri: bytes, key: bytes, head: StoredHead) -> None:
        """The file of the variant `head` answered."""
        self._unlink(self.path_of(uri, key, head.vary, head.selected))

    def remove_uri(self, uri: bytes) -> int:
        """Every key and variant stored for `uri`."""
        prefix = _digest(uri) + "."
        removed = 0
        for entry in os.scandir(self.root):
            if not entry.name.startswith(prefix):
                continue
            if entry.name.endswith(_SUFFIX):
                removed += self._unlink(entry.path)
            elif entry.name.endswith(_VARY_SUFFIX):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        return removed

    def remove_tag(self, tag: bytes) -> int:
        """Every entry tagged `tag` (reads each file's head: a purge is rare)."""
        removed = 0
        for entry in os.scandir(self.root):
            if not entry.name.endswith(_SUFFIX):
                continue
            try:
                tags = _read(entry.path)[3]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if tag in tags and self._unlink(entry.path):
                removed += 1
        return removed

    def entries(self) -> int:
        return sum(1 for entry in os.scandir(self.root) if entry.name.endswith(_SUFFIX))


def _read(path: str) -> tuple[bytes, bytes, StoredHead, frozenset[bytes], int]:
    """The key, URI, head, tags and body length of a whole entry file; ValueError when it is
    not whole (its trailer does not add up)."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size < _TRAILER.size:
            raise ValueError("too short")
        file.seek(size - _TRAILER.size)
        head_len, body_len, magic = _TRAILER.unpack(file.read(_TRAILER.size))
        if magic != _MAGIC or head_len + body_len + _TRAILER.size != size:
            raise ValueError("the trailer does not add up")
        file.seek(body_len)
        key, uri, head, tags = _decode_head(file.read(head_len))
    return key, uri, head, tags, body_len


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
