"""HPACK (RFC 7541) for the HTTP/2 listener: the `hpack` library's Encoder and Decoder, compiled.

Why: in pure Python, encoding a response's fields and decoding a request's took about a
fifth of an HTTP/2 request's CPU (the `hpack` package logs at debug level on every field and
builds two tuple objects per decoded field). This module is a port of hpack 4.2.0's
`hpack.hpack` and `hpack.table` (MIT licence, (c) 2014 Cory Benfield; same algorithms, same
choices) to typed code that mypyc compiles, and it is what `H2ClientConnection` puts in
place of the h2 connection's `encoder` and `decoder`. Everything else stays the library's:
its static table, Huffman codes and decoder, its exceptions (so h2 maps errors as before).

Same bytes out, same fields and errors in: tests/unit/http/test_hpack.py checks both against
the library, field list by field list, with the dynamic table carried across blocks.
Differences: decoded fields are plain tuples (h2 needs no `HeaderTuple` with
`header_encoding=None`), a never-indexed one excepted (`NeverIndexedHeaderTuple`, as hpack),
and nothing is logged.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any, Final

from hpack.exceptions import (
    HPACKDecodingError,
    InvalidTableIndex,
    InvalidTableSizeError,
    OversizedHeaderListError,
)
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman
from hpack.struct import HeaderTuple, NeverIndexedHeaderTuple
from hpack.table import HeaderTable as _LibraryTable

__all__ = ["Decoder", "Encoder"]

DEFAULT_TABLE_SIZE: Final = 4096  # RFC 7540 §6.5.2
DEFAULT_MAX_HEADER_LIST_SIZE: Final = 2**16  # hpack's default
VARINT_MAX_LENGTH: Final = 5  # octets: a prefix and a uint32
INDEX_INCREMENTAL: Final = 0x40
INDEX_NEVER: Final = 0x10

STATIC_TABLE: Final[tuple[tuple[bytes, bytes], ...]] = tuple(_LibraryTable.STATIC_TABLE)
STATIC_LENGTH: Final = len(STATIC_TABLE)
# name -> (its first index, value -> index)
STATIC_MAPPING: Final[dict[bytes, tuple[int, dict[bytes, int]]]] = {}
for _i, (_name, _value) in enumerate(STATIC_TABLE, 1):
    STATIC_MAPPING.setdefault(_name, (_i, {}))[1][_value] = _i
# an indexed field (RFC 7541 §6.1) whose index fits the 7-bit prefix: one byte, made once
INDEXED: Final[list[bytes]] = [bytes([0x80 | index]) for index in range(127)]
HUFFMAN_CODES: Final[list[int]] = list(REQUEST_CODES)
HUFFMAN_LENGTHS: Final[list[int]] = list(REQUEST_CODES_LENGTH)


def entry_size(name: bytes, value: bytes) -> int:
    return 32 + len(name) + len(value)  # RFC 7541 §4.1


def encode_integer(integer: int, prefix_bits: int) -> bytearray:
    """RFC 7541 §5.1, as hpack.hpack.encode_integer."""
    if integer < 0:
        raise ValueError(f"Can only encode positive integers, got {integer}")
    if prefix_bits < 1 or prefix_bits > 8:
        raise ValueError(f"Prefix bits must be between 1 and 8, got {prefix_bits}")
    max_number = (1 << prefix_bits) - 1
    if integer < max_number:
        return bytearray([integer])
    out = bytearray([max_number])
    integer -= max_number
    while integer >= 128:
        out.append((integer & 127) + 128)
        integer >>= 7
    out.append(integer)
    return out


def decode_integer(data: bytes, start: int, prefix_bits: int) -> tuple[int, int]:
    """RFC 7541 §5.1 from data[start:]: (the integer, octets consumed)."""
    max_number = (1 << prefix_bits) - 1
    end = len(data)
    if start >= end:
        raise HPACKDecodingError(f"Unable to decode HPACK integer representation from {data!r}")
    number = data[start] & max_number
    index = 1
    if number == max_number:
        shift = 0
        while True:
            if start + index >= end:
                raise HPACKDecodingError(
                    f"Unable to decode HPACK integer representation from {data!r}"
                )
            next_byte = data[start + index]
            index += 1
            if next_byte >= 128:
                number += (next_byte - 128) << shift
            else:
                number += next_byte << shift
                break
            shift += 7
            if index > VARINT_MAX_LENGTH:
                raise HPACKDecodingError(f"Variable integer representation is too long: {data!r}")
    return number, index


def huffman_encode(data: bytes) -> bytes:
    """RFC 7541 §5.2 with Appendix B's codes, padded with ones: as hpack's HuffmanEncoder."""
    out = bytearray()
    acc = 0
    bits = 0
    codes = HUFFMAN_CODES
    lengths = HUFFMAN_LENGTHS
    for byte in data:
        n = lengths[byte]
        acc = (acc << n) | codes[byte]
        bits += n
        while bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
        acc &= (1 << bits) - 1
    if bits:
        pad = 8 - bits
        out.append(((acc << pad) | ((1 << pad) - 1)) & 0xFF)
    return bytes(out)


def _to_bytes(value: Any) -> bytes:
    if type(value) is bytes:
        return value
    if type(value) is not str:
        value = str(value)
    return value.encode("utf-8")  # type: ignore[no-any-return]


class HeaderTable:
    """The static table and one side's dynamic table (RFC 7541 §2.3)."""

    def __init__(self) -> None:
        self._maxsize = DEFAULT_TABLE_SIZE
        self._current_size = 0
        self.resized = False
        self.dynamic_entries: deque[tuple[bytes, bytes]] = deque()
        # where an entry is, without scanning the table: each entry's insertion number (the
        # newest entry's number is _inserted - 1 and its index STATIC_LENGTH + 1), for the
        # newest entry of each (name, value) and of each name
        self._inserted = 0
        # name -> value -> number (not keyed by (name, value) tuples: a tuple made and hashed
        # per field looked up; the name's and the value's hashes are kept by their bytes)
        self._pairs: dict[bytes, dict[bytes, int]] = {}
        self._names: dict[bytes, int] = {}

    def get_by_index(self, index: int) -> tuple[bytes, bytes]:
        original = index
        index -= 1
        if index >= 0:
            if index < STATIC_LENGTH:
                return STATIC_TABLE[index]
            index -= STATIC_LENGTH
            if index < len(self.dynamic_entries):
                return self.dynamic_entries[index]
        raise InvalidTableIndex(f"Invalid table index {original}")

    def add(self, name: bytes, value: bytes) -> None:
        size = entry_size(name, value)
        if size > self._maxsize:
            self._clear()
        else:
            entry = (name, value)
            self.dynamic_entries.appendleft(entry)
            number = self._inserted
            self._inserted = number + 1
            values = self._pairs.get(name)
            if values is None:
                values = self._pairs[name] = {}
            values[value] = number
            self._names[name] = number
            self._current_size += size
            self._shrink()

    def search(self, name: bytes, value: bytes) -> tuple[int, bool]:
        """(index, whether the value matched too), or (0, False): nothing has the name."""
        partial = 0
        found = STATIC_MAPPING.get(name)
        if found is not None:
            index = found[1].get(value)
            if index is not None:
                return index, True
            partial = found[0]
        # as a scan from the newest entry would find: the newest exact match, else (when the
        # static table has not the name) the newest entry with the name
        newest = STATIC_LENGTH + self._inserted
        values = self._pairs.get(name)
        if values is not None:
            number = values.get(value)
            if number is not None:
                return newest - number, True
        if not partial:
            number = self._names.get(name)
            if number is not None:
                partial = newest - number
        return partial, False

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        newmax = int(newmax)
        oldmax = self._maxsize
        self._maxsize = newmax
        self.resized = newmax != oldmax
        if newmax <= 0:
            self._clear()
        elif oldmax > newmax:
            self._shrink()

    def _shrink(self) -> None:
        size = self._current_size
        entries = self.dynamic_entries
        while size > self._maxsize:
            oldest = self._inserted - len(entries)
            name, value = entries.pop()
            size -= entry_size(name, value)
            values = self._pairs.get(name)
            if values is not None and values.get(value) == oldest:
                del values[value]
                if not values:
                    del self._pairs[name]
            if self._names.get(name) == oldest:
                del self._names[name]
        self._current_size = size

    def _clear(self) -> None:
        self.dynamic_entries.clear()
        self._pairs.clear()
        self._names.clear()
        self._current_size = 0


class Encoder:
    """HPACK encoder: hpack.Encoder's API as h2 uses it (`encode`, `header_table_size`)."""

    def __init__(self) -> None:
        self.header_table = HeaderTable()
        self.table_size_changes: list[int] = []

    @property
    def header_table_size(self) -> int:
        return self.header_table.maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self.header_table.maxsize = value
        if self.header_table.resized:
            self.table_size_changes.append(value)

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        """A header block for `headers`: (name, value) or (name, value, sensitive) tuples, or
        `HeaderTuple`s (a `NeverIndexedHeaderTuple` is sensitive), pseudo-fields first."""
        block: list[bytes] = []
        table = self.header_table
        if table.resized:
            for size in self.table_size_changes:
                change = encode_integer(size, 5)
                change[0] |= 0x20
                block.append(bytes(change))
            self.table_size_changes = []
            table.resized = False
        if isinstance(headers, dict):
            headers = sorted(headers.items(), key=lambda kv: not _to_bytes(kv[0]).startswith(b":"))
        for header in headers:
            if type(header) is tuple:
                # a plain tuple (what Portico sends): read as one, its items bytes already
                pair: tuple[Any, ...] = header
                name = pair[0]
                value = pair[1]
                if type(name) is bytes and type(value) is bytes and len(pair) == 2:
                    block.append(self._add(name, value, False, huffman))
                    continue
            sensitive = False
            if isinstance(header, HeaderTuple):
                sensitive = not header.indexable
            elif len(header) > 2:
                sensitive = bool(header[2])
            block.append(self._add(_to_bytes(header[0]), _to_bytes(header[1]), sensitive, huffman))
        return b"".join(block)

    def _add(self, name: bytes, value: bytes, sensitive: bool, huffman: bool) -> bytes:
        table = self.header_table
        indexbit = INDEX_NEVER if sensitive else INDEX_INCREMENTAL
        index, perfect = table.search(name, value)
        if perfect:
            if index < 127:
                return INDEXED[index]
            field = encode_integer(index, 7)
            field[0] |= 0x80
            return bytes(field)
        if not index:
            # a literal name and value
            name_out = huffman_encode(name) if huffman else name
            value_out = huffman_encode(value) if huffman else value
            name_len = encode_integer(len(name_out), 7)
            value_len = encode_integer(len(value_out), 7)
            if huffman:
                name_len[0] |= 0x80
                value_len[0] |= 0x80
            if not sensitive:
                table.add(name, value)
            return b"".join(
                [bytes([indexbit]), bytes(name_len), name_out, bytes(value_len), value_out]
            )
        # an indexed name, a literal value
        prefix = encode_integer(index, 6 if indexbit == INDEX_INCREMENTAL else 4)
        prefix[0] |= indexbit
        literal = huffman_encode(value) if huffman else value
        value_len = encode_integer(len(literal), 7)
        if huffman:
            value_len[0] |= 0x80
        if not sensitive:
            table.add(name, value)
        return b"".join([bytes(prefix), bytes(value_len), literal])


class Decoder:
    """HPACK decoder: hpack.Decoder's API as h2 uses it (`decode`, `max_header_list_size`,
    `max_allowed_table_size`, `header_table_size`)."""

    def __init__(self, max_header_list_size: int = DEFAULT_MAX_HEADER_LIST_SIZE) -> None:
        self.header_table = HeaderTable()
        self.max_header_list_size = max_header_list_size
        self.max_allowed_table_size = self.header_table.maxsize

    @property
    def header_table_size(self) -> int:
        return self.header_table.maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self.header_table.maxsize = value

    def decode(self, data: bytes, raw: bool = False) -> list[tuple[Any, Any]]:
        """The fields of one header block, in order; raises hpack's errors as hpack does."""
        data = bytes(data)
        table = self.header_table
        # Any, not tuple[bytes, bytes]: compiled, that would unbox a NeverIndexedHeaderTuple
        headers: list[Any] = []
        end = len(data)
        inflated = 0
        pos = 0
        limit = self.max_header_list_size
        while pos < end:
            current = data[pos]
            header: Any
            if current & 0x80:
                index, consumed = decode_integer(data, pos, 7)
                header = table.get_by_index(index)
            elif current & 0x40:
                header, consumed = self._decode_literal(data, pos, True)
            elif current & 0x20:
                if headers:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                new_size, consumed = decode_integer(data, pos, 5)
                if new_size > self.max_allowed_table_size:
                    raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                table.maxsize = new_size
                header = None
            else:
                header, consumed = self._decode_literal(data, pos, False)
            if header is not None:
                headers.append(header)
                inflated += entry_size(header[0], header[1])
                if inflated > limit:
                    raise OversizedHeaderListError(
                        f"A header list larger than {limit} has been received"
                    )
            pos += consumed
        if table.maxsize > self.max_allowed_table_size:
            raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
        if raw:
            return headers
        try:
            return [
                (
                    type(h)(h[0].decode("utf-8"), h[1].decode("utf-8"))
                    if isinstance(h, NeverIndexedHeaderTuple)
                    else (h[0].decode("utf-8"), h[1].decode("utf-8"))
                )
                for h in headers
            ]
        except UnicodeDecodeError as err:
            raise HPACKDecodingError("Unable to decode headers as UTF-8") from err

    def _decode_literal(self, data: bytes, start: int, should_index: bool) -> tuple[Any, int]:
        first = data[start]
        if should_index:
            indexed_name = first & 0x3F
            prefix = 6
            never = False
        else:
            indexed_name = first & 0x0F
            prefix = 4
            never = bool(first & 0x10)
        if indexed_name:
            index, consumed = decode_integer(data, start, prefix)
            name = self.header_table.get_by_index(index)[0]
            pos = start + consumed
        else:
            pos = start + 1
            length, consumed = decode_integer(data, pos, 7)
            name = data[pos + consumed : pos + consumed + length]
            if len(name) != length:
                raise HPACKDecodingError("Truncated header block")
            if data[pos] & 0x80:
                name = decode_huffman(name)
            pos += consumed + length
        length, consumed = decode_integer(data, pos, 7)
        value = data[pos + consumed : pos + consumed + length]
        if len(value) != length:
            raise HPACKDecodingError("Truncated header block")
        if data[pos] & 0x80:
            value = decode_huffman(value)
        pos += consumed + length
        header: Any = (name, value)
        if never:  # kept as its own class: a ternary would make it a plain tuple, compiled
            header = NeverIndexedHeaderTuple(name, value)
        if should_index:
            self.header_table.add(name, value)
        return header, pos - start
