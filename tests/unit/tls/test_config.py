"""The ``tls:`` section: defaults, and errors that name the file and the reason."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from portico.config.schema import format_loc
from portico.config.tls import (
    INTERMEDIATE_CIPHERS,
    TlsConfig,
    read_certificate,
)
from tests.unit.tls.pki import Pair, issue, self_signed


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pair(ca: trustme.CA, tmp_path: Path) -> Pair:
    return issue(ca, tmp_path, "site", "a.example.com", "*.example.com")


def problems(data: dict[str, Any]) -> list[str]:
    """Every error as the loader shows it (``tls.`` + key path + message); [] when valid."""
    try:
        TlsConfig.model_validate(data)
    except ValidationError as exc:
        out = []
        for error in exc.errors():
            if error["type"] == "too_short" and error["loc"] == ("certificates",):
                continue  # the loader drops it when the item has its own error
            ctx = error.get("ctx") or {}
            message = str(ctx["error"]) if "error" in ctx else error["msg"]
            out.append(f"tls.{format_loc(error['loc'])}: {message}")
        return out
    return []


def tls(pair: Pair, **fields: Any) -> dict[str, Any]:
    return {"certificates": [pair.config()], **fields}


# ---------------------------------------------------------------------------------------------
# A good config


def test_defaults_are_mozilla_intermediate(pair: Pair) -> None:
    config = TlsConfig.model_validate(tls(pair))
    assert config.certificates[0].cert == str(pair.cert)
    assert config.min_version == "1.2"
    assert config.ciphers is None
    assert config.cipher_string() == INTERMEDIATE_CIPHERS
    assert config.alpn == ("http/1.1",)
    assert config.client_auth == "none"
    assert config.client_ca is None
    assert config.handshake_timeout == 10.0
    assert config.hsts is None


def test_a_full_config_is_taken_as_written(ca: trustme.CA, pair: Pair, tmp_path: Path) -> None:
    ca.cert_pem.write_to_path(str(tmp_path / "clients.pem"))
    config = TlsConfig.model_validate(
        tls(
            pair,
            min_version=1.3,  # YAML reads an unquoted 1.3 as a number
            alpn=[],
            client_auth="require",
            client_ca=str(tmp_path / "clients.pem"),
            handshake_timeout="5s",
            hsts="max-age=31536000; includeSubDomains; preload",
        )
    )
    assert config.min_version == "1.3"
    assert config.alpn == ()
    assert config.client_auth == "require"
    assert config.handshake_timeout == 5.0
    assert config.hsts == "max-age=31536000; includeSubDomains; preload"


def test_paths_may_be_path_objects(pair: Pair) -> None:
    config = TlsConfig.model_validate({"certificates": [{"cert": pair.cert, "key": pair.key}]})
    assert config.certificates[0].key == str(pair.key)


def test_the_model_is_frozen_and_strict(pair: Pair) -> None:
    config = TlsConfig.model_validate(tls(pair))
    with pytest.raises(ValidationError):
        config.min_version = "1.3"
    assert problems(tls(pair, certificate="x")) == [
        "tls.certificate: Extra inputs are not permitted"
    ]


def test_names_come_from_the_certificate(pair: Pair) -> None:
    info = read_certificate(str(pair.cert))
    assert info.names == ("a.example.com", "*.example.com")
    assert info.key_type == "ecdsa"
    assert info.chain_length == 1


def test_a_certificate_without_names_may_be_the_default(pair: Pair, tmp_path: Path) -> None:
    nameless = self_signed(tmp_path, "nameless")
    assert read_certificate(str(nameless.cert)).names == ()
    assert problems({"certificates": [nameless.config(), pair.config()]}) == []


# ---------------------------------------------------------------------------------------------
# Certificate and key files


def test_missing_certificate_file_is_named(pair: Pair, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    assert problems({"certificates": [{"cert": str(missing), "key": str(pair.key)}]}) == [
        f"tls.certificates[0].cert: {missing}: no such file"
    ]


def test_missing_key_file_is_named(pair: Pair, tmp_path: Path) -> None:
    missing = tmp_path / "missing.key"
    assert problems({"certificates": [{"cert": str(pair.cert), "key": str(missing)}]}) == [
        f"tls.certificates[0].key: {missing}: no such file"
    ]


def test_a_directory_is_not_a_certificate(pair: Pair, tmp_path: Path) -> None:
    assert problems({"certificates": [{"cert": str(tmp_path), "key": str(pair.key)}]}) == [
        f"tls.certificates[0].cert: {tmp_path}: is a directory, not a file"
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_key_is_named(pair: Pair) -> None:
    pair.key.chmod(0)
    assert problems(tls(pair)) == [
        f"tls.certificates[0].key: {pair.key}: permission denied (the file must be readable)"
    ]


def test_empty_path_is_refused(pair: Pair) -> None:
    assert problems({"certificates": [{"cert": " ", "key": str(pair.key)}]}) == [
        "tls.certificates[0].cert: must not be empty: write the path of a PEM certificate chain"
    ]


def test_certificate_that_is_not_pem(pair: Pair, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    assert problems({"certificates": [{"cert": str(garbage), "key": str(pair.key)}]}) == [
        f"tls.certificates[0].cert: {garbage}: not a PEM certificate "
        "(no -----BEGIN CERTIFICATE----- line)"
    ]


def test_der_certificate_gets_a_conversion_hint(pair: Pair, tmp_path: Path) -> None:
    der = tmp_path / "site.der"
    certificate = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    der.write_bytes(certificate.public_bytes(serialization.Encoding.DER))
    [problem] = problems({"certificates": [{"cert": str(der), "key": str(pair.key)}]})
    assert problem.startswith(f"tls.certificates[0].cert: {der}: not a PEM certificate")
    assert "it looks like DER: convert it with `openssl x509 -inform der -in FILE`" in problem


def test_broken_pem_certificate(pair: Pair, tmp_path: Path) -> None:
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    [problem] = problems({"certificates": [{"cert": str(broken), "key": str(pair.key)}]})
    assert problem.startswith(
        f"tls.certificates[0].cert: {broken}: the certificate cannot be parsed:"
    )


def test_key_that_is_not_pem(pair: Pair, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"\x00\x01 not a key")
    assert problems({"certificates": [{"cert": str(pair.cert), "key": str(garbage)}]}) == [
        f"tls.certificates[0].key: {garbage}: not a PEM private key "
        '(no "-----BEGIN ... PRIVATE KEY-----" line)'
    ]


def test_swapped_cert_and_key_are_called_out(pair: Pair) -> None:
    assert problems({"certificates": [{"cert": str(pair.key), "key": str(pair.cert)}]}) == [
        f"tls.certificates[0].cert: {pair.key}: holds a private key, not a certificate "
        "(are cert and key swapped?)",
        f"tls.certificates[0].key: {pair.cert}: holds a certificate, not a private key "
        "(are cert and key swapped?)",
    ]


def test_key_of_another_certificate_does_not_match(
    ca: trustme.CA, pair: Pair, tmp_path: Path
) -> None:
    other = issue(ca, tmp_path, "other", "b.example.com")
    assert problems({"certificates": [{"cert": str(pair.cert), "key": str(other.key)}]}) == [
        f"tls.certificates[0].key: {other.key} does not match the certificate {pair.cert}"
    ]


def test_key_of_another_type_does_not_match(ca: trustme.CA, pair: Pair, tmp_path: Path) -> None:
    rsa_pair = issue(ca, tmp_path, "rsa", "b.example.com", rsa_key=True)
    assert problems({"certificates": [{"cert": str(pair.cert), "key": str(rsa_pair.key)}]}) == [
        f"tls.certificates[0].key: {rsa_pair.key} does not match the certificate {pair.cert}"
    ]


def test_chain_in_the_wrong_order_is_explained(ca: trustme.CA, tmp_path: Path) -> None:
    intermediate = ca.create_child_ca()
    leaf = intermediate.issue_cert("a.example.com")
    cert, key = tmp_path / "chain.pem", tmp_path / "site.key"
    intermediate_pem, leaf_pem = leaf.cert_chain_pems[1].bytes(), leaf.cert_chain_pems[0].bytes()
    cert.write_bytes(intermediate_pem + leaf_pem)  # the server's certificate belongs first
    leaf.private_key_pem.write_to_path(str(key))
    assert problems({"certificates": [{"cert": str(cert), "key": str(key)}]}) == [
        f"tls.certificates[0].key: {key} does not match the certificate {cert} (it matches "
        "certificate number 2 in that file: put the server's own certificate first)"
    ]
    cert.write_bytes(leaf_pem + intermediate_pem)
    assert problems({"certificates": [{"cert": str(cert), "key": str(key)}]}) == []
    assert read_certificate(str(cert)).chain_length == 2


def test_encrypted_key_is_refused(tmp_path: Path) -> None:
    pair = self_signed(tmp_path, "site", names=("a.example.com",))
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    assert problems(tls(pair)) == [
        f"tls.certificates[0].key: {pair.key}: the key is encrypted with a passphrase; "
        "Portico needs it unencrypted (protect it with file permissions instead)"
    ]


def test_key_too_small_for_openssl_is_refused(tmp_path: Path) -> None:
    weak = self_signed(tmp_path, "weak", names=("a.example.com",), rsa_bits=1024)
    [problem] = problems(tls(weak))
    assert problem == (
        f"tls.certificates[0].key: {weak.key}: the key of {weak.cert} is too small for "
        "OpenSSL's security level (use RSA 2048 bits or more, or ECDSA P-256)"
    )


def test_a_later_certificate_needs_names_to_be_reachable(pair: Pair, tmp_path: Path) -> None:
    nameless = self_signed(tmp_path, "nameless")
    assert problems({"certificates": [pair.config(), nameless.config()]}) == [
        f"tls.certificates: certificates[1] ({nameless.cert}) has no DNS names "
        "(subjectAltName), so no client's SNI can select it: list it first to make it the "
        "default"
    ]


def test_certificates_are_required() -> None:
    with pytest.raises(ValidationError, match="at least 1 item"):
        TlsConfig.model_validate({"certificates": []})
    assert problems({}) == ["tls.certificates: Field required"]


# ---------------------------------------------------------------------------------------------
# Versions, ciphers, ALPN


@pytest.mark.parametrize(
    ("written", "expected"), [("1.2", "1.2"), (1.2, "1.2"), ("TLSv1.3", "1.3"), (1.3, "1.3")]
)
def test_min_version_forms(pair: Pair, written: object, expected: str) -> None:
    assert TlsConfig.model_validate(tls(pair, min_version=written)).min_version == expected


@pytest.mark.parametrize("old", ["1.0", 1.1, "TLSv1.1"])
def test_old_min_versions_are_refused(pair: Pair, old: object) -> None:
    [problem] = problems(tls(pair, min_version=old))
    assert problem.startswith("tls.min_version: TLS 1.")
    assert problem.endswith(' is not offered: it is deprecated (RFC 8996); use "1.2" or "1.3"')


def test_nonsense_min_version(pair: Pair) -> None:
    assert problems(tls(pair, min_version="1.4")) == [
        'tls.min_version: must be "1.2" or "1.3", not "1.4"'
    ]


def test_custom_ciphers_must_select_something(pair: Pair) -> None:
    [problem] = problems(tls(pair, ciphers="NO-SUCH-CIPHER"))
    assert problem.startswith('tls.ciphers: "NO-SUCH-CIPHER" selects no cipher this OpenSSL')


def test_ciphers_must_fit_the_certificate_key(pair: Pair) -> None:
    assert problems(tls(pair, ciphers="ECDHE-RSA-AES128-GCM-SHA256")) == [
        'tls.ciphers: "ECDHE-RSA-AES128-GCM-SHA256" has no cipher for the ECDSA key of '
        f"certificates[0] ({pair.cert}): TLS 1.2 clients could not connect"
    ]
    assert problems(tls(pair, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")) == []


def test_ciphers_make_no_sense_with_tls13_only(pair: Pair) -> None:
    assert problems(tls(pair, min_version="1.3", ciphers=INTERMEDIATE_CIPHERS)) == [
        'tls.ciphers: only applies to TLS 1.2, and min_version is "1.3": leave ciphers out '
        "(TLS 1.3 suites are all strong)"
    ]


def test_alpn_offers_only_what_portico_speaks(pair: Pair) -> None:
    assert problems(tls(pair, alpn=["h2", "http/1.1"])) == []  # the listener needs http2
    assert problems(tls(pair, alpn=["spdy/3"])) == [
        'tls.alpn[0]: "spdy/3" is not a protocol Portico speaks: use h2, http/1.1'
    ]
    assert problems(tls(pair, alpn=["http/1.1", "http/1.1"])) == [
        'tls.alpn: "http/1.1" is listed twice'
    ]


# ---------------------------------------------------------------------------------------------
# Client certificates


def test_client_auth_needs_a_ca(pair: Pair) -> None:
    assert problems(tls(pair, client_auth="require")) == [
        "tls.client_ca: client_auth: require needs client_ca: the PEM bundle of the CA "
        "certificates that sign your clients' certificates"
    ]


def test_client_ca_without_client_auth_is_a_mistake(
    ca: trustme.CA, pair: Pair, tmp_path: Path
) -> None:
    ca.cert_pem.write_to_path(str(tmp_path / "clients.pem"))
    assert problems(tls(pair, client_ca=str(tmp_path / "clients.pem"))) == [
        "tls.client_ca: is only used with client_auth: optional or require (client_auth is none)"
    ]


def test_client_ca_must_be_a_pem_bundle(pair: Pair, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    assert problems(tls(pair, client_auth="optional", client_ca=str(missing))) == [
        f"tls.client_ca: {missing}: no such file"
    ]
    assert problems(tls(pair, client_auth="optional", client_ca=str(pair.key))) == [
        f"tls.client_ca: {pair.key}: not a PEM CA bundle (no -----BEGIN CERTIFICATE----- line)"
    ]


def test_client_auth_choices(pair: Pair) -> None:
    [problem] = problems(tls(pair, client_auth="mandatory"))
    assert problem.startswith("tls.client_auth: Input should be 'none', 'optional' or 'require'")


# ---------------------------------------------------------------------------------------------
# HSTS


@pytest.mark.parametrize(
    "value",
    [
        "max-age=31536000",
        "max-age=0",
        'max-age="600"; includeSubDomains',
        "MAX-AGE=600;includesubdomains;preload",
    ],
)
def test_hsts_values_accepted(pair: Pair, value: str) -> None:
    assert problems(tls(pair, hsts=value)) == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("includeSubDomains", '"includeSubDomains" has no max-age: write e.g. "max-age=31536000"'),
        ("max-age=1y", '"max-age=1y": max-age needs a number of seconds'),
        (
            "max-age=1; includeSubdomain",
            '"max-age=1; includeSubdomain": unknown directive "includeSubdomain" '
            "(use max-age=SECONDS, includeSubDomains, preload)",
        ),
        ("max-age=1; max-age=2", '"max-age=1; max-age=2": "max-age" is given twice'),
        ("max-age=1; preload=yes", '"max-age=1; preload=yes": "preload" takes no value'),
        ("max-age=1\r\nX-Evil: 1", "must not contain control characters or line breaks"),
    ],
)
def test_hsts_mistakes_are_refused(pair: Pair, value: str, message: str) -> None:
    assert problems(tls(pair, hsts=value)) == [f"tls.hsts: {message}"]


def test_subject_is_rfc4514(tmp_path: Path) -> None:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Inc."),
            x509.NameAttribute(NameOID.COMMON_NAME, "www.example.com"),
        ]
    )
    pair = self_signed(tmp_path, "site", names=("www.example.com",), subject=subject)
    assert read_certificate(str(pair.cert)).subject == "CN=www.example.com,O=Example\\, Inc."
