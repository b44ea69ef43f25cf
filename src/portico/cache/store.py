"""The memory tier: stored responses in one worker, least recently used first out, bounded in
bytes. *pure* (no I/O; the caller passes what it stores)

Owns where entries live, how they are found (by primary key, then among its Vary variants),
the byte bound and evictions, and the indexes that purges and invalidations use (by URI, by
tag). Knows nothing about HTTP semantics beyond the variant's selecting values.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from portico.cache.policy import StoredHead
from portico.http.local import LocalResponse

__all__ = ["Entry", "MemoryStore"]

_OVERHEAD = 256  # bytes counted per entry besides its fields and body (objects, indexes)


@dataclass(slots=True)
class Entry:
    """One stored response. `head` is replaced when a 304 refreshes it."""

    key: bytes
    uri: bytes
    head: StoredHead
    body: bytes
    tags: frozenset[bytes] = frozenset()
    size: int = field(default=0)
    # the answer last built for plain hits: (age in whole seconds, Cache-Status detail, it)
    memo: tuple[int, str | None, LocalResponse] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.size = self.measure()

    def measure(self) -> int:
        return (
            len(self.body)
            + sum(len(n) + len(v) + 4 for n, v in self.head.headers)
            + len(self.key)
            + _OVERHEAD
        )


class MemoryStore:
    """Entries by primary key; each key holds the variants Vary selects between."""

    __slots__ = ("_by_tag", "_by_uri", "_entries", "bytes", "evictions", "max_bytes", "max_entry")

    def __init__(self, max_bytes: int, max_entry: int) -> None:
        self.max_bytes = max_bytes
        self.max_entry = max_entry
        self._entries: OrderedDict[bytes, list[Entry]] = OrderedDict()
        self._by_uri: dict[bytes, set[bytes]] = {}
        self._by_tag: dict[bytes, set[bytes]] = {}
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return sum(len(v) for v in self._entries.values())

    def variants(self, key: bytes) -> list[Entry]:
        """The variants stored under `key`, most recent first; marks them recently used."""
        found = self._entries.get(key)
        if found is None:
            return []
        self._entries.move_to_end(key)
        return found

    def fits(self, size: int) -> bool:
        """Whether a body of `size` bytes may be stored at all (the per-entry limit)."""
        return size <= self.max_entry and size <= self.max_bytes

    def put(self, entry: Entry) -> bool:
        """Store `entry`, replacing the variant with the same selecting values; evict the
        least recently used until the bound holds. False when it is too large to keep."""
        if not self.fits(entry.size):
            return False
        variants = self._entries.get(entry.key)
        if variants is None:
            variants = self._entries[entry.key] = []
            self._by_uri.setdefault(entry.uri, set()).add(entry.key)
        else:
            self._entries.move_to_end(entry.key)
            for old in variants:
                if old.head.vary == entry.head.vary and old.head.selected == entry.head.selected:
                    variants.remove(old)
                    self.bytes -= old.size
                    break
        variants.insert(0, entry)
        self.bytes += entry.size
        for tag in entry.tags:
            self._by_tag.setdefault(tag, set()).add(entry.key)
        while self.bytes > self.max_bytes and self._entries:
            key = next(iter(self._entries))
            self.evictions += len(self._entries[key])
            self._drop(key)
        return True

    def refreshed(self, entry: Entry, head: StoredHead) -> None:
        """`entry`'s head was updated by a 304 (§4.3.4)."""
        self.bytes -= entry.size
        entry.head = head
        entry.memo = None
        entry.size = entry.measure()
        self.bytes += entry.size

    def remove(self, entry: Entry) -> None:
        """Drop one variant (it can no longer be used)."""
        variants = self._entries.get(entry.key)
        if variants is not None and entry in variants:
            variants.remove(entry)
            self.bytes -= entry.size
            if not variants:
                self._drop(entry.key)

    def _drop(self, key: bytes) -> int:
        variants = self._entries.pop(key, None)
        if variants is None:
            return 0
        for entry in variants:
            self.bytes -= entry.size
            keys = self._by_uri.get(entry.uri)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_uri[entry.uri]
            for tag in entry.tags:
                tagged = self._by_tag.get(tag)
                if tagged is not None:
                    tagged.discard(key)
                    if not tagged:
                        del self._by_tag[tag]
        return len(variants)

    def remove_uri(self, uri: bytes) -> int:
        """Drop everything stored for `uri` (every added-field key, every variant)."""
        return sum(self._drop(key) for key in list(self._by_uri.get(uri, ())))

    def remove_tag(self, tag: bytes) -> int:
        """Drop everything the origin tagged with `tag` (Cache-Tag, Surrogate-Key)."""
        return sum(self._drop(key) for key in list(self._by_tag.get(tag, ())))

    def clear(self) -> int:
        count = len(self)
        self._entries.clear()
        self._by_uri.clear()
        self._by_tag.clear()
        self.bytes = 0
        return count
