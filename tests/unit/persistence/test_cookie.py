"""The signed insert-mode cookie, prefix mode and the Cookie/Set-Cookie edits: pure, no clock."""

from __future__ import annotations

import base64
import hmac
import string

import pytest

from portico.persistence import cookie
from portico.persistence.cookie import (
    COOKIE_CHARS,
    TOKEN_CHARS,
    cookie_attributes,
    cookie_value,
    decode,
    encode,
    parse,
    prefix,
    prefix_set_cookie,
    rewrite_cookie,
    server_token,
    server_tokens,
    set_cookie_header,
    set_cookie_value,
    unprefix,
    without_cookie,
)

SECRET = b"0123456789abcdef-test-secret"
OTHER_SECRET = b"fedcba9876543210-other-secret"
NOW = 1_700_000_000
SERVERS = ["web-1", "web-2", "10.0.0.7:8080"]
TOKENS = server_tokens(SERVERS, SECRET)
B64URL = string.ascii_letters + string.digits + "-_"


# -- encode / decode ---------------------------------------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
def test_a_cookie_round_trips_to_its_server(server: str) -> None:
    value = encode(server, SECRET, NOW)
    assert decode(value, SECRET, TOKENS, max_age=3600, now=NOW) == server
    assert decode(value.encode(), SECRET, TOKENS, max_age=3600, now=NOW) == server
    assert parse(value, SECRET, TOKENS, max_age=3600, now=NOW + 5) == (server, NOW)


def test_a_cookie_is_opaque_url_safe_and_of_fixed_length() -> None:
    value = encode("10.0.0.7:8080", SECRET, NOW)
    assert len(value) == COOKIE_CHARS == 40
    assert set(value) <= set(B64URL)
    raw = base64.urlsafe_b64decode(value)
    for hint in (b"10.0.0.7", b"8080", b"web"):
        assert hint not in raw
        assert hint.decode() not in value


def test_the_value_starts_with_the_servers_token() -> None:
    value = encode("web-1", SECRET, NOW)
    assert value[:TOKEN_CHARS] == server_token("web-1", SECRET)
    assert TOKENS[value[:TOKEN_CHARS]] == "web-1"


def test_tokens_differ_per_server_and_per_secret() -> None:
    assert len(set(TOKENS)) == len(SERVERS)
    assert server_token("web-1", SECRET) != server_token("web-1", OTHER_SECRET)
    assert server_token("web-1", SECRET) == server_token("web-1", SECRET)


def test_encoding_is_deterministic_and_includes_the_issue_time() -> None:
    assert encode("web-1", SECRET, NOW) == encode("web-1", SECRET, NOW)
    assert encode("web-1", SECRET, NOW) != encode("web-1", SECRET, NOW + 1)


def test_changing_any_character_to_any_other_invalidates_the_cookie() -> None:
    value = encode("web-1", SECRET, NOW)
    for position, original in enumerate(value):
        for replacement in B64URL:
            if replacement != original:
                tampered = value[:position] + replacement + value[position + 1 :]
                assert decode(tampered, SECRET, TOKENS, 3600, NOW) is None, (position, replacement)


def test_flipping_any_bit_of_the_decoded_bytes_invalidates_the_cookie() -> None:
    raw = base64.urlsafe_b64decode(encode("web-1", SECRET, NOW))
    for bit in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        value = base64.urlsafe_b64encode(bytes(flipped))
        assert decode(value, SECRET, TOKENS, 3600, NOW) is None, bit


def test_another_servers_token_cannot_be_spliced_in() -> None:
    mine = encode("web-1", SECRET, NOW)
    spliced = server_token("web-2", SECRET) + mine[TOKEN_CHARS:]
    assert decode(spliced, SECRET, TOKENS, 3600, NOW) is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "x",
        "A" * COOKIE_CHARS,
        "web-1",
        "=" * COOKIE_CHARS,
        "+" * COOKIE_CHARS,
        "é" * COOKIE_CHARS,
        b"\xff" * COOKIE_CHARS,
    ],
)
def test_malformed_values_are_ignored(value: str | bytes) -> None:
    assert decode(value, SECRET, TOKENS, 3600, NOW) is None


def test_a_truncated_or_extended_cookie_is_ignored() -> None:
    value = encode("web-1", SECRET, NOW)
    assert decode(value[:-1], SECRET, TOKENS, 3600, NOW) is None
    assert decode(value + "A", SECRET, TOKENS, 3600, NOW) is None
    assert decode(value + "==", SECRET, TOKENS, 3600, NOW) is None
    assert decode(" " + value, SECRET, TOKENS, 3600, NOW) is None


def test_a_cookie_expires_after_max_age() -> None:
    value = encode("web-1", SECRET, NOW)
    assert decode(value, SECRET, TOKENS, max_age=60, now=NOW + 60) == "web-1"
    assert decode(value, SECRET, TOKENS, max_age=60, now=NOW + 61) is None


def test_without_max_age_a_cookie_never_expires() -> None:
    value = encode("web-1", SECRET, NOW)
    assert decode(value, SECRET, TOKENS, max_age=None, now=NOW + 10 * 365 * 86400) == "web-1"


def test_a_cookie_from_the_future_is_accepted_only_within_clock_skew() -> None:
    value = encode("web-1", SECRET, NOW)
    assert decode(value, SECRET, TOKENS, 3600, now=NOW - 60) == "web-1"
    assert decode(value, SECRET, TOKENS, 3600, now=NOW - 61) is None


def test_a_cookie_signed_with_another_secret_is_ignored() -> None:
    foreign = encode("web-1", OTHER_SECRET, NOW)
    assert decode(foreign, SECRET, TOKENS, 3600, NOW) is None
    # even when the foreign token happens to be known, the tag does not verify
    both = {**TOKENS, **server_tokens(["web-1"], OTHER_SECRET)}
    assert decode(foreign, SECRET, both, 3600, NOW) is None


def test_a_cookie_naming_a_removed_server_is_ignored() -> None:
    value = encode("web-3", SECRET, NOW)
    assert decode(value, SECRET, TOKENS, 3600, NOW) is None
    assert decode(value, SECRET, server_tokens([*SERVERS, "web-3"], SECRET), 3600, NOW) == "web-3"


def test_an_unknown_format_version_is_ignored_even_when_signed() -> None:
    token = base64.urlsafe_b64decode(server_token("web-1", SECRET))
    body = cookie._BODY.pack(2, NOW)
    tag = hmac.digest(SECRET, cookie._TAG_LABEL + token + body, "sha256")[:16]
    value = base64.urlsafe_b64encode(token + body + tag)
    assert len(value) == COOKIE_CHARS
    assert decode(value, SECRET, TOKENS, 3600, NOW) is None


def test_encode_rejects_a_short_secret_and_an_out_of_range_time() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        encode("web-1", b"short", NOW)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        server_tokens(["web-1"], b"")
    with pytest.raises(ValueError, match="Unix seconds"):
        encode("web-1", SECRET, -1)
    with pytest.raises(ValueError, match="Unix seconds"):
        encode("web-1", SECRET, 2**32)


def test_server_tokens_ignores_a_repeated_name() -> None:
    assert server_tokens(["a", "a"], SECRET) == {server_token("a", SECRET): "a"}


# -- Set-Cookie --------------------------------------------------------------------------------


def test_set_cookie_defaults_are_path_httponly_and_lax() -> None:
    assert set_cookie_header("SRV", "abc") == b"SRV=abc; Path=/; HttpOnly; SameSite=Lax"


def test_set_cookie_with_every_attribute() -> None:
    header = set_cookie_header(
        "SRV",
        "abc",
        path="/app",
        domain="example.com",
        max_age=3600,
        secure=True,
        httponly=True,
        samesite="none",
    )
    assert header == (
        b"SRV=abc; Path=/app; Domain=example.com; Max-Age=3600; Secure; HttpOnly; SameSite=None"
    )


def test_set_cookie_with_no_optional_attribute() -> None:
    header = set_cookie_header("SRV", "abc", path=None, httponly=False, samesite=None)
    assert header == b"SRV=abc"


@pytest.mark.parametrize(("given", "sent"), [("strict", b"Strict"), ("LAX", b"Lax")])
def test_samesite_is_spelled_canonically(given: str, sent: bytes) -> None:
    assert cookie_attributes(samesite=given).endswith(b"; SameSite=" + sent)


def test_samesite_none_requires_secure() -> None:
    with pytest.raises(ValueError, match="needs secure"):
        cookie_attributes(samesite="None", secure=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"samesite": "sometimes"}, "samesite must be"),
        ({"max_age": -1}, "max_age must be"),
        ({"max_age": True}, "max_age must be"),
        ({"path": "/a;b"}, "valid cookie path"),
        ({"domain": "a\r\nb"}, "valid cookie domain"),
    ],
)
def test_invalid_attributes_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cookie_attributes(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "value"), [("a b", "v"), ("a;b", "v"), ("", "v")])
def test_an_invalid_cookie_name_is_refused(name: str, value: str) -> None:
    with pytest.raises(ValueError, match="cookie name"):
        set_cookie_header(name, value)


@pytest.mark.parametrize("value", ["a b", "a;b", 'a"b', "a,b", "a\\b", "a\x7fb"])
def test_an_invalid_cookie_value_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="cookie value"):
        set_cookie_header("SRV", value)


def test_a_session_cookie_has_no_max_age_and_zero_deletes() -> None:
    assert b"Max-Age" not in cookie_attributes()
    assert b"; Max-Age=0" in cookie_attributes(max_age=0)


# -- prefix mode -------------------------------------------------------------------------------


def test_prefix_round_trips() -> None:
    token = server_token("web-2", SECRET)
    value = prefix(b"abc123", token)
    assert value == token.encode() + b"~abc123"
    assert unprefix(value) == (token, b"abc123")
    assert TOKENS[token] == "web-2"


def test_unprefix_keeps_a_tilde_in_the_applications_value() -> None:
    token = server_token("web-1", SECRET)
    assert unprefix(prefix(b"a~b~", token)) == (token, b"a~b~")
    assert unprefix(prefix(b"", token)) == (token, b"")


@pytest.mark.parametrize(
    "value", [b"", b"abc123", b"~abc", b"short~abc", b"ABCDEFGHIJK+~abc", b"ABCDEFGHIJKLM~abc"]
)
def test_unprefix_of_a_value_without_a_token_is_none(value: bytes) -> None:
    assert unprefix(value) is None


# -- Cookie and Set-Cookie edits ----------------------------------------------------------------


def test_cookie_value_finds_a_cookie_among_others() -> None:
    header = b"a=1; SRV=xyz;b=2"
    assert cookie_value(header, b"SRV") == b"xyz"
    assert cookie_value(header, b"b") == b"2"
    assert cookie_value(header, b"c") is None
    assert cookie_value(b"SRVX=1; XSRV=2", b"SRV") is None


def test_without_cookie_removes_only_that_cookie() -> None:
    assert without_cookie(b"a=1; SRV=xyz; b=2", b"SRV") == b"a=1; b=2"
    assert without_cookie(b"SRV=xyz", b"SRV") == b""
    assert without_cookie(b"a=1;b=2", b"SRV") == b"a=1; b=2"


def test_rewrite_cookie_gives_the_server_its_own_value_back() -> None:
    token = server_token("web-1", SECRET)
    header = b"a=1; JSESSIONID=" + prefix(b"abc", token)
    found = cookie_value(header, b"JSESSIONID")
    assert found is not None
    unprefixed = unprefix(found)
    assert unprefixed == (token, b"abc")
    assert rewrite_cookie(header, b"JSESSIONID", unprefixed[1]) == b"a=1; JSESSIONID=abc"


def test_set_cookie_value_reads_the_applications_session_id() -> None:
    assert set_cookie_value(b"JSESSIONID=abc; Path=/; HttpOnly", b"JSESSIONID") == b"abc"
    assert set_cookie_value(b"other=1; Path=/", b"JSESSIONID") is None
    assert set_cookie_value(b"JSESSIONID", b"JSESSIONID") is None


def test_prefix_set_cookie_prefixes_the_value_and_keeps_attributes() -> None:
    token = server_token("web-1", SECRET)
    rewritten = prefix_set_cookie(b"JSESSIONID=abc; Path=/; HttpOnly", b"JSESSIONID", token)
    assert rewritten == b"JSESSIONID=" + token.encode() + b"~abc; Path=/; HttpOnly"
    assert prefix_set_cookie(b"JSESSIONID=abc", b"JSESSIONID", token) == (
        b"JSESSIONID=" + token.encode() + b"~abc"
    )
    assert prefix_set_cookie(b"other=abc; Path=/", b"JSESSIONID", token) is None
    assert prefix_set_cookie(b"JSESSIONID=; Max-Age=0", b"JSESSIONID", token) is None
