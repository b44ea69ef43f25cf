"""The listener's TLS side without sockets: SNI choice, context settings, reload, peer subject."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from portico.config.tls import INTERMEDIATE_CIPHERS, TlsConfig
from portico.listeners.tls import (
    OP_PRIORITIZE_CHACHA,
    FastSSLObject,
    SniTable,
    TlsError,
    TlsTerminator,
    build_server_context,
    peer_subject,
)
from tests.unit.tls.pki import Pair, issue, self_signed

# ---------------------------------------------------------------------------------------------
# SniTable (pure)


@pytest.fixture
def table() -> SniTable[str]:
    # The wildcard is listed before the exact name on purpose: exact wins whatever the order.
    return SniTable(
        [
            (["www.example.org"], "default"),
            (["*.example.com", "example.net"], "wildcard"),
            (["a.example.com"], "exact"),
        ],
        default="default",
    )


@pytest.mark.parametrize(
    ("server_name", "expected"),
    [
        ("a.example.com", "exact"),
        ("b.example.com", "wildcard"),
        ("example.net", "wildcard"),
        ("www.example.org", "default"),
        ("x.b.example.com", "default"),  # a wildcard covers one label only
        ("example.com", "default"),  # ... and never the bare parent
        ("unknown.org", "default"),
        (None, "default"),
        ("", "default"),
    ],
)
def test_exact_beats_wildcard_beats_default(
    table: SniTable[str], server_name: str | None, expected: str
) -> None:
    assert table.lookup(server_name) == expected


def test_names_match_without_case_or_trailing_dot(table: SniTable[str]) -> None:
    assert table.lookup("A.Example.COM") == "exact"
    assert table.lookup("a.example.com.") == "exact"
    assert table.lookup("B.EXAMPLE.COM") == "wildcard"


def test_first_listed_wins_a_shared_name() -> None:
    table = SniTable([(["a.example.com"], 1), (["A.example.com", "*.example.com"], 2)], default=0)
    assert table.lookup("a.example.com") == 1
    assert table.lookup("b.example.com") == 2


def test_partial_wildcards_are_never_matched() -> None:
    table = SniTable([(["w*.example.com"], 1)], default=0)
    assert table.lookup("www.example.com") == 0
    assert table.lookup("w*.example.com") == 0


# ---------------------------------------------------------------------------------------------
# Contexts


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def config(*pairs: Pair, **fields: Any) -> TlsConfig:
    return TlsConfig.model_validate({"certificates": [p.config() for p in pairs], **fields})


def test_context_follows_mozilla_intermediate(ca: trustme.CA, tmp_path: Path) -> None:
    terminator = build_server_context(config(issue(ca, tmp_path, "a", "a.example.com")))
    context = terminator.context
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert context.options & OP_PRIORITIZE_CHACHA  # a bit Python does not name: it sticks
    assert context.verify_mode == ssl.CERT_NONE
    tls12 = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == set(INTERMEDIATE_CIPHERS.split(":"))
    assert terminator.handshake_timeout == 10.0


def test_client_cipher_order_on_request(ca: trustme.CA, tmp_path: Path) -> None:
    pair = issue(ca, tmp_path, "a", "a.example.com")
    context = build_server_context(config(pair, prefer_server_ciphers=False)).context
    assert not context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert not context.options & OP_PRIORITIZE_CHACHA


def test_tls13_only(ca: trustme.CA, tmp_path: Path) -> None:
    terminator = TlsTerminator(config(issue(ca, tmp_path, "a", "a"), min_version="1.3"))
    assert terminator.context.minimum_version == ssl.TLSVersion.TLSv1_3


@pytest.mark.parametrize(
    ("mode", "verify"), [("optional", ssl.CERT_OPTIONAL), ("require", ssl.CERT_REQUIRED)]
)
def test_client_auth_sets_verify_mode(
    ca: trustme.CA, tmp_path: Path, mode: str, verify: ssl.VerifyMode
) -> None:
    ca.cert_pem.write_to_path(str(tmp_path / "clients.pem"))
    pair = issue(ca, tmp_path, "a", "a.example.com")
    terminator = TlsTerminator(
        config(pair, client_auth=mode, client_ca=str(tmp_path / "clients.pem"))
    )
    assert terminator.context.verify_mode == verify
    assert terminator.context.cert_store_stats()["x509_ca"] == 1


def test_select_uses_the_certificate_names(ca: trustme.CA, tmp_path: Path) -> None:
    first = issue(ca, tmp_path, "first", "www.example.org")
    wildcard = issue(ca, tmp_path, "wild", "*.example.com")
    exact = issue(ca, tmp_path, "exact", "a.example.com")
    terminator = TlsTerminator(config(first, wildcard, exact))
    default = terminator.context
    assert terminator.select("www.example.org") is default
    assert terminator.select(None) is default
    assert terminator.select("nothing.test") is default
    chosen = {terminator.select(n) for n in ("a.example.com", "b.example.com", "c.example.com")}
    assert len(chosen) == 2
    assert default not in chosen
    assert [c.names for c in terminator.certificates] == [
        ("www.example.org",),
        ("*.example.com",),
        ("a.example.com",),
    ]


def test_reload_reads_new_files_into_new_contexts(ca: trustme.CA, tmp_path: Path) -> None:
    pair = issue(ca, tmp_path, "site", "a.example.com")
    terminator = TlsTerminator(config(pair))
    listening, before = terminator.context, terminator.select("a.example.com")
    issue(ca, tmp_path, "site", "a.example.com", "b.example.com")  # renewed in place
    [info] = terminator.reload()
    assert info.names == ("a.example.com", "b.example.com")
    assert terminator.select("a.example.com") is not before
    assert terminator.context is listening  # what create_server holds never changes
    assert terminator.reloads == 1


def test_failed_reload_keeps_the_old_certificates(ca: trustme.CA, tmp_path: Path) -> None:
    pair = issue(ca, tmp_path, "site", "a.example.com")
    terminator = TlsTerminator(config(pair))
    before = terminator.select("a.example.com")
    other = issue(ca, tmp_path, "other", "a.example.com")
    pair.key.write_bytes(other.key.read_bytes())  # half-way through a renewal: new key only
    with pytest.raises(TlsError) as caught:
        terminator.reload()
    assert str(caught.value) == (
        f"tls.certificates[0].key: {pair.key} does not match the certificate {pair.cert}"
    )
    assert terminator.select("a.example.com") is before
    assert terminator.reloads == 0
    pair.cert.unlink()
    with pytest.raises(TlsError, match=r"^tls\.certificates\[0\]\.cert: .*: no such file$"):
        terminator.reload()


def test_building_fails_clearly_if_a_file_vanished(ca: trustme.CA, tmp_path: Path) -> None:
    pair = issue(ca, tmp_path, "site", "a.example.com")
    checked = config(pair)
    pair.key.unlink()
    with pytest.raises(TlsError, match=r"^tls\.certificates\[0\]\.key: .*site\.key: no such file$"):
        build_server_context(checked)


# ---------------------------------------------------------------------------------------------
# peer_subject


class FakeConnection:
    """What peer_subject reads from an SSLObject: the verified dict and the DER form."""

    def __init__(self, der: bytes | None, verified: bool) -> None:
        self.der = der
        self.verified = verified

    def getpeercert(self, binary_form: bool = False) -> Any:
        if binary_form:
            return self.der
        if self.der is None:
            return None
        return {"subject": ()} if self.verified else {}


def der_of(pair: Pair) -> bytes:
    certificate = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    return certificate.public_bytes(serialization.Encoding.DER)


def test_peer_subject_of_a_verified_certificate(tmp_path: Path) -> None:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
            x509.NameAttribute(NameOID.COMMON_NAME, "alice"),
        ]
    )
    pair = self_signed(tmp_path, "alice", subject=subject)
    assert peer_subject(FakeConnection(der_of(pair), verified=True)) == "CN=alice,O=Example"  # type: ignore[arg-type]


def test_no_subject_without_a_verified_certificate(tmp_path: Path) -> None:
    pair = self_signed(tmp_path, "alice")
    assert peer_subject(None) is None
    assert peer_subject(FakeConnection(None, verified=False)) is None  # type: ignore[arg-type]
    assert peer_subject(FakeConnection(der_of(pair), verified=False)) is None  # type: ignore[arg-type]


def test_peer_subject_is_safe_for_a_header(tmp_path: Path) -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil\r\nX-Admin: 1 é")])
    pair = self_signed(tmp_path, "evil", subject=subject)
    text = peer_subject(FakeConnection(der_of(pair), verified=True))  # type: ignore[arg-type]
    assert text == "CN=evil\\0D\\0AX-Admin: 1 \\C3\\A9"


# ---------------------------------------------------------------------------------------------
# The connection objects the loop creates


def _pump(source: ssl.MemoryBIO, target: ssl.MemoryBIO) -> None:
    data = source.read()
    if data:
        target.write(data)


def test_connections_use_the_native_record_methods_and_still_talk(
    ca: trustme.CA, tmp_path: Path
) -> None:
    first = issue(ca, tmp_path, "first", "www.example.org")
    other = issue(ca, tmp_path, "other", "a.example.com")
    terminator = TlsTerminator(config(first, other))
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    # what the event loop's TLS transport does: wrap_bio on the listening context
    server = terminator.context.wrap_bio(server_in, server_out, server_side=True)
    assert isinstance(server, FastSSLObject)
    assert isinstance(server, ssl.SSLObject)
    # read/write/pending are OpenSSL's own, no Python frame in between
    assert type(server.read).__name__ == "builtin_function_or_method"
    assert type(server.write).__name__ == "builtin_function_or_method"
    assert type(server.pending).__name__ == "builtin_function_or_method"
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    client = client_context.wrap_bio(client_in, client_out, server_hostname="a.example.com")
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        _pump(client_out, server_in)
        _pump(server_out, client_in)
        if server.version() is not None and client.version() is not None:
            break
    # SNI still switched the connection to the second certificate's context
    assert server.context is terminator.select("a.example.com")
    assert server.context is not terminator.context
    assert client.getpeercert()["subjectAltName"] == (("DNS", "a.example.com"),)  # type: ignore[index]
    client.write(b"GET / HTTP/1.1\r\n\r\n")
    _pump(client_out, server_in)
    buffer = bytearray(64)
    assert server.read(64, buffer) == 18
    assert bytes(buffer[:18]) == b"GET / HTTP/1.1\r\n\r\n"
    assert server.pending() == 0
    with pytest.raises(ssl.SSLWantReadError):
        server.read(64)
    assert server.write(b"HTTP/1.1 200 OK\r\n\r\n") == 19
    _pump(server_out, client_in)
    assert client.read(1024) == b"HTTP/1.1 200 OK\r\n\r\n"
