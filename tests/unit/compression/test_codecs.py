"""Streaming compressors as body transforms (portico.compression.codecs): what they emit
decodes, with the reference decoders, to exactly what they were fed."""

from __future__ import annotations

import random
import zlib

import brotli
import pytest
import zstandard

from portico.compression.codecs import Compressor

CODINGS = ["gzip", "br", "zstd"]


def decode(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    if coding == "br":
        return bytes(brotli.decompress(data))
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def body(size: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    words = [b"alpha", b"beta", b"gamma", b'{"id": ', b"delta", b"\n", b"0123456789"]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words)
        if rng.random() < 0.05:
            out += rng.randbytes(8)
    return bytes(out[:size])


class Counter:
    before = 0
    after = 0


@pytest.mark.parametrize("coding", CODINGS)
def test_round_trip_in_pieces_with_a_memoryview(coding: str) -> None:
    data = body(300_000)
    counter = Counter()
    compressor = Compressor(coding, 5 if coding != "br" else 4, counter=counter)
    out = bytearray()
    view = memoryview(data)
    for start in range(0, len(data), 7001):
        out += compressor.feed(view[start : start + 7001])
    out += compressor.end()
    assert decode(coding, bytes(out)) == data
    assert counter.before == len(data)
    assert counter.after == len(out) < len(data) // 2
    assert compressor.end() == b""
    assert compressor.feed(b"x") == b""


@pytest.mark.parametrize("coding", CODINGS)
def test_output_flows_while_input_does_so_nothing_is_held_whole(coding: str) -> None:
    compressor = Compressor(coding, 3)
    emitted_before_end = 0
    for i in range(64):
        emitted_before_end += len(compressor.feed(body(64 * 1024, seed=i)))
    assert emitted_before_end > 0.9 * (emitted_before_end + len(compressor.end()))


@pytest.mark.parametrize("coding", CODINGS)
def test_streaming_flushes_every_write_so_each_event_decodes_at_once(coding: str) -> None:
    compressor = Compressor(coding, 4, streaming=True)
    if coding == "gzip":
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        step = decoder.decompress
    elif coding == "br":
        step = brotli.Decompressor().process
    else:
        step = zstandard.ZstdDecompressor().decompressobj().decompress
    for n in range(5):
        event = b"data: event %d\n\n" % n
        assert step(compressor.feed(event)) == event  # not held back in the compressor


@pytest.mark.parametrize("coding", CODINGS)
def test_flush_emits_what_is_held(coding: str) -> None:
    compressor = Compressor(coding, 4)
    first = compressor.feed(b"hello ")
    first += compressor.flush()
    assert first
    whole = first + compressor.feed(b"world") + compressor.end()
    assert decode(coding, whole) == b"hello world"


def test_abort_frees_and_sends_nothing_more() -> None:
    compressor = Compressor("gzip", 5)
    compressor.feed(b"x" * 1000)
    compressor.abort()
    assert compressor.flush() == b""
    assert compressor.end() == b""


def test_an_empty_body_is_a_valid_stream() -> None:
    for coding in CODINGS:
        compressor = Compressor(coding, 3)
        assert compressor.feed(b"") == b""
        assert decode(coding, compressor.end()) == b""


def test_a_chain_of_compressors_may_run_in_worker_threads() -> None:
    from portico.pipeline import TransformChain

    class Plain:
        def feed(self, data: bytes | memoryview) -> bytes | memoryview:
            return data

        def flush(self) -> bytes:
            return b""

        def end(self) -> bytes:
            return b""

        def abort(self) -> None:
            pass

    assert TransformChain([Compressor("gzip", 5)]).threaded
    assert not TransformChain([Compressor("gzip", 5), Plain()]).threaded
    assert not TransformChain([]).threaded


def test_bytes_are_published_on_the_loop_side_only() -> None:
    counter = Counter()
    compressor = Compressor("zstd", 3, counter=counter)
    compressor.feed(b"x" * 10_000)  # may run in a worker thread: counts nothing shared
    assert (counter.before, counter.after) == (0, 0)
    flushed = compressor.flush()
    assert counter.before == 10_000
    assert counter.after == len(flushed)
    compressor.end()
    compressor.abort()
    assert counter.before == 10_000


def test_pieces_go_to_a_thread_from_the_size_that_takes_over_a_ms_and_a_half() -> None:
    from portico.compression.codecs import offload_size

    assert offload_size("gzip", 5) == 195_000  # a 100 KiB body at gzip 5 stays on the loop
    assert offload_size("gzip", 9) == 45_000
    assert offload_size("zstd", 3) == 256 * 1024  # the cap: a whole read of the server
    assert offload_size("br", 6) == 67_500
    assert Compressor("br", 4).offload_min == offload_size("br", 4)
    from portico.pipeline import TransformChain

    assert TransformChain([Compressor("gzip", 9)]).offload_min == 45_000
