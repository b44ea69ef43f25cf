"""portico.http.hpack against the hpack library it was ported from: the same bytes out, the
same fields or the same error in, with each side's dynamic table carried across blocks."""

from __future__ import annotations

import hpack
import pytest
from hpack import HeaderTuple, NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st

from portico.http import hpack as ours

NAMES = st.sampled_from(
    [b":status", b":path", b"content-type", b"date", b"server", b"x-a", b"cookie", b"accept"]
) | st.binary(min_size=1, max_size=12)
VALUES = st.sampled_from([b"", b"200", b"/", b"text/plain", b"gzip, deflate"]) | st.binary(
    max_size=40
)
FIELD = st.tuples(NAMES, VALUES, st.booleans())
BLOCKS = st.lists(st.lists(FIELD, max_size=8), min_size=1, max_size=8)
TABLE_SIZES = st.lists(st.sampled_from([0, 64, 256, 4096]), max_size=3)


def as_input(fields: list[tuple[bytes, bytes, bool]], style: int) -> list[object]:
    """The same fields as h2 may hand them over: 3-tuples, 2-tuples or HeaderTuples."""
    if style == 0:
        return list(fields)
    if style == 1:
        return [(n, v) for n, v, _ in fields]
    return [NeverIndexedHeaderTuple(n, v) if s else HeaderTuple(n, v) for n, v, s in fields]


@settings(max_examples=300, deadline=None)
@given(BLOCKS, TABLE_SIZES, st.integers(0, 2), st.booleans())
def test_the_encoder_writes_what_hpack_writes(blocks, sizes, style, huffman) -> None:
    theirs, mine = hpack.Encoder(), ours.Encoder()
    for i, fields in enumerate(blocks):
        if i == 1:
            for size in sizes:  # SETTINGS_HEADER_TABLE_SIZE from the peer, mid-connection
                theirs.header_table_size = size
                mine.header_table_size = size
        given_fields = as_input(fields, style)
        assert mine.encode(given_fields, huffman) == theirs.encode(given_fields, huffman)


@settings(max_examples=300, deadline=None)
@given(BLOCKS, st.booleans())
def test_the_decoder_reads_what_hpack_reads(blocks, huffman) -> None:
    encoder = hpack.Encoder()
    theirs, mine = hpack.Decoder(), ours.Decoder()
    for fields in blocks:
        block = encoder.encode(fields, huffman)
        expected = theirs.decode(block, raw=True)
        got = mine.decode(block, raw=True)
        assert [tuple(f) for f in got] == [tuple(f) for f in expected]
        never = [isinstance(f, NeverIndexedHeaderTuple) for f in expected]
        assert [isinstance(f, NeverIndexedHeaderTuple) for f in got] == never


def outcome(decoder: object, block: bytes) -> object:
    try:
        return [tuple(f) for f in decoder.decode(block, raw=True)]  # type: ignore[attr-defined]
    except hpack.HPACKError as exc:
        return type(exc)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=30), min_size=1, max_size=4))
def test_garbage_gets_the_same_fields_or_the_same_error(blocks) -> None:
    theirs, mine = hpack.Decoder(), ours.Decoder()
    for block in blocks:
        expected = outcome(theirs, block)
        assert outcome(mine, block) == expected
        if not isinstance(expected, list):
            return  # after an error the connection is over: the tables may differ


def test_a_header_list_past_the_limit_is_refused_as_hpack_does() -> None:
    block = hpack.Encoder().encode([(b"x-big", b"v" * 200)] * 3)
    for decoder in (hpack.Decoder(max_header_list_size=500), ours.Decoder(500)):
        with pytest.raises(hpack.OversizedHeaderListError):
            decoder.decode(block, raw=True)


def test_a_table_size_update_past_the_allowed_size_is_refused() -> None:
    encoder = hpack.Encoder()
    encoder.header_table_size = 8192
    block = encoder.encode([(b"a", b"b")])
    for decoder in (hpack.Decoder(), ours.Decoder()):
        with pytest.raises(hpack.InvalidTableSizeError):
            decoder.decode(block, raw=True)


def test_strings_decode_as_hpack_does_without_raw() -> None:
    block = hpack.Encoder().encode([(b":status", b"200"), (b"x-a", b"\xc3\xa9")])
    assert ours.Decoder().decode(block) == [(":status", "200"), ("x-a", "é")]
    with pytest.raises(hpack.HPACKDecodingError):
        ours.Decoder().decode(hpack.Encoder().encode([(b"x-a", b"\xff")]))


def test_a_long_connection_with_evictions_encodes_as_hpack_does() -> None:
    """The encoder finds entries by index, not by scanning its table: over a long run of
    repeated, evicted and re-added fields and table resizes, the bytes stay hpack's."""
    import random

    rng = random.Random(7)
    names = [b"x-%d" % i for i in range(12)] + [b"date", b"server", b":status"]
    values = [b"v%d" % i for i in range(6)] + [b"", b"200"]
    theirs, mine = hpack.Encoder(), ours.Encoder()
    for round_ in range(3000):
        if round_ % 500 == 499:
            size = rng.choice([0, 100, 300, 4096])
            theirs.header_table_size = size
            mine.header_table_size = size
        fields = [(rng.choice(names), rng.choice(values)) for _ in range(rng.randrange(1, 6))]
        assert mine.encode(fields) == theirs.encode(fields)
