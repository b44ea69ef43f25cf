"""Accept-Encoding against the codings on offer (portico.compression.negotiate)."""

from __future__ import annotations

import pytest

from portico.compression.negotiate import accepted_codings, choose_coding

OFFER = ("zstd", "br", "gzip")


def choose(*fields: bytes, offered: tuple[str, ...] = OFFER) -> str | None:
    return choose_coding(accepted_codings(fields), offered)


def test_no_header_means_identity_and_an_empty_one_too() -> None:
    assert choose() is None
    assert choose(b"") is None
    assert accepted_codings([]) is None
    assert accepted_codings([b""]) == {}


def test_ties_go_to_the_configured_order() -> None:
    assert choose(b"gzip, deflate, br, zstd") == "zstd"
    assert choose(b"gzip, br") == "br"
    assert choose(b"gzip, br", offered=("gzip", "br")) == "gzip"


def test_q_values_beat_the_configured_order() -> None:
    assert choose(b"zstd;q=0.5, br;q=0.8, gzip;q=0.9") == "gzip"
    assert choose(b"br;q=1.0, gzip;Q=0.999") == "br"


def test_zero_weight_refuses_a_coding() -> None:
    assert choose(b"zstd;q=0, gzip") == "gzip"
    assert choose(b"gzip;q=0") is None


def test_star_covers_codings_not_named() -> None:
    assert choose(b"*") == "zstd"
    assert choose(b"gzip;q=0.5, *;q=0.1") == "gzip"
    assert choose(b"zstd;q=0, *") == "br"
    assert choose(b"*;q=0") is None


def test_identity_competes_when_named() -> None:
    assert choose(b"gzip;q=0.5, identity") is None
    assert choose(b"gzip, identity") == "gzip"  # a tie goes to compression
    assert choose(b"gzip, identity;q=0") == "gzip"
    assert choose(b"identity;q=0") is None  # nothing else offered that it takes


def test_x_gzip_is_gzip_and_case_and_spaces_do_not_matter() -> None:
    assert choose(b"X-GZIP") == "gzip"
    assert choose(b"  GZip ;  q = 0.7 ,  br ; q=0.2") == "gzip"


def test_several_field_lines_are_one_list() -> None:
    assert choose(b"gzip;q=0.2", b"br;q=0.9") == "br"


@pytest.mark.parametrize("weight", [b"2", b"-1", b"x", b"0.12345", b"", b"1e0"])
def test_a_malformed_weight_drops_that_member_only(weight: bytes) -> None:
    assert choose(b"br;q=" + weight + b", gzip") == "gzip"


def test_the_highest_weight_of_a_coding_listed_twice_counts() -> None:
    assert accepted_codings([b"gzip;q=0.1, gzip;q=0.6"]) == {"gzip": 0.6}


def test_unknown_codings_are_never_chosen() -> None:
    assert choose(b"deflate, compress, sdch") is None
