"""Streamed local bodies (portico.pipeline.sources) and the local answers that carry them."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from portico.http.local import http1_bytes, local_response
from portico.pipeline.sources import ChunksBody, FileBody


def read_all(source: FileBody | ChunksBody, piece: int = 4) -> list[bytes]:
    async def scenario() -> list[bytes]:
        out = []
        while data := await source.read(piece):
            out.append(data)
        return out

    return asyncio.run(scenario())


def test_a_file_body_reads_its_range_in_pieces_and_offers_it_for_sendfile(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    body = FileBody(path, 2, 5)
    assert body.length == 5
    fd, offset, count = body.file_range() or (0, 0, 0)
    assert (offset, count) == (2, 5)
    assert os.pread(fd, count, offset) == b"23456"
    assert read_all(body) == [b"2345", b"6"]
    body.close()
    assert body.file_range() is None
    body.close()  # twice is harmless
    assert FileBody(path, 8).length == 2  # to the end


def test_a_file_body_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        FileBody(tmp_path / "missing")
    (tmp_path / "f").write_bytes(b"abc")
    with pytest.raises(ValueError, match="outside the file"):
        FileBody(tmp_path / "f", 4)


def test_chunks_body_yields_non_empty_pieces_in_order() -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for piece in (b"a", b"", b"bc"):
            yield piece

    body = ChunksBody(pieces())
    assert body.length is None
    assert body.file_range() is None
    assert read_all(body) == [b"a", b"bc"]


def test_a_local_answer_with_a_source_says_its_length_when_known(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 7)
    known = local_response(200, [(b"Content-Type", b"text/plain")], FileBody(tmp_path / "f"))
    assert known.body == b""
    assert known.source is not None
    assert (b"Content-Length", b"7") in known.headers

    async def nothing() -> AsyncIterator[bytes]:
        yield b""

    unknown = local_response(200, (), ChunksBody(nothing()))
    assert not any(name == b"Content-Length" for name, _ in unknown.headers)
    with pytest.raises(ValueError, match="no body"):
        local_response(304, (), ChunksBody(nothing()))


def test_http1_bytes_tells_an_http10_client_keep_alive_when_asked() -> None:
    answer = local_response(200, (), b"hi")
    kept = http1_bytes(answer, keep_alive=True)
    assert b"\r\nConnection: keep-alive\r\n" in kept
    assert kept.endswith(b"\r\n\r\nhi")
    assert b"Connection" not in http1_bytes(answer)
    assert http1_bytes(answer, head_only=True, keep_alive=True).endswith(b"keep-alive\r\n\r\n")
