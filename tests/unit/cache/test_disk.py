"""The disk tier's files: whole entries only, bounded, found again after a restart."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from portico.cache.disk import DiskStore
from portico.cache.policy import StoredHead

ACCEPT = [(b"Accept", b"a")]
HEAD = StoredHead.make(
    200, [(b"Cache-Control", b"max-age=60"), (b"Vary", b"Accept")], 1.0, 2.0, ACCEPT
)


def put(
    store: DiskStore,
    uri: bytes,
    body: bytes,
    key: bytes | None = None,
    tags=frozenset(),
    head: StoredHead = HEAD,
) -> None:  # type: ignore[no-untyped-def]
    writer = store.writer()
    assert writer is not None
    for i in range(0, len(body), 3):
        assert writer.write(body[i : i + 3])
    assert writer.commit(key or uri, uri, head, tags)


def test_round_trip_survives_a_new_store(tmp_path: Path) -> None:
    """An entry is found by another store on the directory (another worker, or a restart),
    head and body as written."""
    put(DiskStore(tmp_path, 1 << 20, 1 << 20), b"http://a/x", b"hello world")
    found = DiskStore(tmp_path, 1 << 20, 1 << 20).lookup(b"http://a/x", b"http://a/x", ACCEPT)
    assert found is not None
    assert found.head == HEAD
    assert found.body.read() == b"hello world"

    async def streamed() -> bytes:
        source = found.body.open(6)
        try:
            return await source.read(100)
        finally:
            source.close()

    assert asyncio.run(streamed()) == b"world"


def test_nothing_is_served_before_the_commit(tmp_path: Path) -> None:
    """A body being written lives in tmp/ only; an aborted one leaves nothing."""
    store = DiskStore(tmp_path, 1 << 20, 1 << 20)
    writer = store.writer()
    assert writer is not None
    writer.write(b"partial")
    assert store.lookup(b"u", b"u", ACCEPT) is None
    writer.abort()
    assert not list((tmp_path / "tmp").iterdir())


def test_a_damaged_file_is_never_served(tmp_path: Path) -> None:
    """A file whose trailer does not add up (truncated) is removed, not served."""
    store = DiskStore(tmp_path, 1 << 20, 1 << 20)
    put(store, b"u", b"0123456789")
    path = store.path_of(b"u", b"u", HEAD.vary, HEAD.selected)
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) - 5)
    assert store.lookup(b"u", b"u", ACCEPT) is None
    assert not os.path.exists(path)


def test_temporary_files_of_dead_workers_are_removed(tmp_path: Path) -> None:
    """A worker killed while storing leaves a temporary file; the next start removes it."""
    DiskStore(tmp_path, 1 << 20, 1 << 20)
    stray = tmp_path / "tmp" / "999999999-1.tmp"  # no such process
    stray.write_bytes(b"half")
    DiskStore(tmp_path, 1 << 20, 1 << 20)
    assert not stray.exists()


def test_bounded_least_recently_used_first(tmp_path: Path) -> None:
    """Over its size the directory drops the least recently used entries (a hit counts)."""
    store = DiskStore(tmp_path, 4000, 2000)  # room for three entries of ~1070 bytes
    for i in range(3):
        put(store, b"u%d" % i, b"x" * 800)
        os.utime(
            store.path_of(b"u%d" % i, b"u%d" % i, HEAD.vary, HEAD.selected), (1000 + i, 1000 + i)
        )
    assert store.lookup(b"u0", b"u0", ACCEPT) is not None  # now the most recently used
    put(store, b"u3", b"x" * 800)
    assert store.evictions >= 1
    assert store.lookup(b"u1", b"u1", ACCEPT) is None
    assert store.lookup(b"u0", b"u0", ACCEPT) is not None
    assert store.bytes <= 4000
    writer = store.writer()
    assert writer is not None
    assert not writer.write(b"y" * 2001)  # over the per-entry limit


def test_remove_by_uri_and_tag(tmp_path: Path) -> None:
    """A purge by URI drops every key of it; by tag, every tagged entry."""
    store = DiskStore(tmp_path, 1 << 20, 1 << 20)
    put(store, b"u", b"a", key=b"u\nx-tenant:1")
    put(store, b"u", b"b", key=b"u\nx-tenant:2")
    put(store, b"v", b"c", tags=frozenset({b"red"}))
    assert store.remove_uri(b"u") == 2
    assert store.entries() == 1
    assert store.remove_tag(b"blue") == 0
    assert store.remove_tag(b"red") == 1
    assert store.entries() == 0


def test_every_vary_variant_of_a_key_is_kept(tmp_path: Path) -> None:
    """Responses that vary by Accept-Encoding are stored side by side: each request finds the
    one its own value selects (RFC 9111 §4.1), another value finds none; a later response
    without Vary is what every request then gets; a purge drops them all."""
    store = DiskStore(tmp_path, 1 << 20, 1 << 20)
    fields = [(b"Cache-Control", b"max-age=60"), (b"Vary", b"Accept-Encoding")]
    gzip, plain = [(b"Accept-Encoding", b"gzip")], [(b"Accept-Encoding", b"identity")]
    put(store, b"u", b"zipped", head=StoredHead.make(200, fields, 1.0, 2.0, gzip))
    put(store, b"u", b"plain", head=StoredHead.make(200, fields, 1.0, 2.0, plain))
    put(store, b"u", b"nothing said", head=StoredHead.make(200, fields, 1.0, 2.0, []))
    other = DiskStore(tmp_path, 1 << 20, 1 << 20)  # another worker
    for request, body in ((gzip, b"zipped"), (plain, b"plain"), ([], b"nothing said")):
        found = other.lookup(b"u", b"u", request)
        assert found is not None
        assert found.body.read() == body
    assert other.lookup(b"u", b"u", [(b"Accept-Encoding", b"br")]) is None
    assert other.entries() == 3

    put(store, b"u", b"one for all", head=StoredHead.make(200, fields[:1], 1.0, 2.0, gzip))
    for request in (gzip, plain, []):
        found = other.lookup(b"u", b"u", request)
        assert found is not None
        assert found.body.read() == b"one for all"

    assert store.remove_uri(b"u") == 4
    assert other.lookup(b"u", b"u", gzip) is None
    assert [p.name for p in tmp_path.iterdir()] == ["tmp"]
