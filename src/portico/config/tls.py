"""TLS termination settings: the ``tls:`` section of an HTTPS listener, and the certificate files.

This module owns the frozen models (`TlsConfig`, `CertificateConfig`), their defaults (Mozilla's
"intermediate" profile), and the reading and checking of the PEM files they name: certificate
chains, private keys and client CA bundles. Unlike `schema.py` it reads files, on purpose: a
certificate that cannot be used is a config error at load, naming the file and the reason, and
not a failed handshake hours later. `portico.listeners.tls` uses the same checks on reload, so an
operator reads the same words either way.

It never keeps an `ssl.SSLContext` (the one it builds to check a key against its certificate is
thrown away), never opens sockets and never decides which certificate a client gets.
"""

from __future__ import annotations

import datetime
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from portico.config.units import Duration, show

__all__ = [
    "ALPN_PROTOCOLS",
    "INTERMEDIATE_CIPHERS",
    "CertificateConfig",
    "CertificateInfo",
    "ClientAuth",
    "TlsConfig",
    "TlsVersion",
    "check_ca_bundle",
    "check_private_key",
    "load_certificate_pair",
    "read_certificate",
]

INTERMEDIATE_CIPHERS: Final = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
"""TLS 1.2 ciphers of Mozilla's "intermediate" profile (guidelines 6.0): forward-secret AEAD
only. 5.7's DHE-RSA suites are gone, so no DH parameters are needed. TLS 1.3 suites are not
set here: OpenSSL's defaults are the profile's three."""

ALPN_PROTOCOLS: Final[tuple[str, ...]] = ("h2", "http/1.1")
"""Application protocols Portico can speak after the handshake. Offering one it cannot speak
(h2 before the HTTP/2 codec exists) would break every client that accepts it."""

TlsVersion = Literal["1.2", "1.3"]
ClientAuth = Literal["none", "optional", "require"]
KeyType = Literal["rsa", "ecdsa", "dsa", "other"]

# TLS 1.2 cipher "auth" (ssl.SSLContext.get_ciphers) that can sign with each key type; EdDSA
# keys use the ECDSA suites (RFC 8422).
_AUTH_FOR_KEY: Final[dict[KeyType, str]] = {
    "rsa": "auth-rsa",
    "ecdsa": "auth-ecdsa",
    "dsa": "auth-dss",
}


# ---------------------------------------------------------------------------------------------
# Reading PEM files


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What a server certificate says about itself, read from the first certificate (the leaf)
    of a PEM chain file."""

    path: str
    names: tuple[str, ...]  # subjectAltName DNS names, lower case, in file order; may be empty
    subject: str  # RFC 4514
    not_after: datetime.datetime  # UTC
    key_type: KeyType
    chain_length: int  # certificates in the file, the leaf included


_CERT_BEGIN = b"-----BEGIN CERTIFICATE-----"
_KEY_BEGIN = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )?PRIVATE KEY-----")


def _read(path: str) -> bytes:
    """The bytes of `path`, or ValueError("PATH: reason") in an operator's words."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not a file") from None
    except PermissionError:
        raise ValueError(f"{path}: permission denied (the file must be readable)") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _not_pem_hint(data: bytes, command: str) -> str:
    # DER is an ASN.1 SEQUENCE: it starts with 0x30. A common mix-up with .crt/.cer files.
    if data[:1] == b"\x30":
        return f" (it looks like DER: convert it with `openssl {command} -inform der -in FILE`)"
    return ""


def read_certificate(path: str) -> CertificateInfo:
    """Read a PEM certificate chain file (the server's certificate first, then intermediates).

    Returns what the leaf certificate says. Raises ValueError naming `path` and the reason: no
    such file, unreadable, not PEM, a private key where a certificate belongs, unparsable.
    """
    from cryptography import x509  # cryptography costs ~6 MiB: loaded when TLS is configured

    data = _read(path)
    if _CERT_BEGIN not in data:
        if _KEY_BEGIN.search(data):
            raise ValueError(
                f"{path}: holds a private key, not a certificate (are cert and key swapped?)"
            )
        raise ValueError(
            f"{path}: not a PEM certificate (no {_CERT_BEGIN.decode()} line)"
            f"{_not_pem_hint(data, 'x509')}"
        )
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"{path}: the certificate cannot be parsed: {exc}") from None
    leaf = chain[0]
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns_names = []
    names = tuple(dict.fromkeys(name.lower().rstrip(".") for name in dns_names))
    return CertificateInfo(
        path=path,
        names=names,
        subject=leaf.subject.rfc4514_string(),
        not_after=leaf.not_valid_after_utc,
        key_type=_key_type(leaf.public_key()),
        chain_length=len(chain),
    )


def _key_type(key: object) -> KeyType:
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return "rsa"
    if isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "ecdsa"
    if isinstance(key, dsa.DSAPublicKey):
        return "dsa"
    return "other"  # pragma: no cover - X.509 server keys are one of the above


def check_private_key(path: str) -> None:
    """Check that `path` holds one unencrypted PEM private key.

    Raises ValueError naming `path` and the reason. An encrypted key is refused: a server that
    restarts unattended has nobody to type the passphrase, and OpenSSL would prompt on the
    terminal and hang.
    """
    from cryptography.hazmat.primitives import serialization

    data = _read(path)
    if not _KEY_BEGIN.search(data):
        if _CERT_BEGIN in data:
            raise ValueError(
                f"{path}: holds a certificate, not a private key (are cert and key swapped?)"
            )
        raise ValueError(
            f'{path}: not a PEM private key (no "-----BEGIN ... PRIVATE KEY-----" line)'
            f"{_not_pem_hint(data, 'pkey')}"
        )
    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's word for "encrypted, and no password given"
        raise ValueError(
            f"{path}: the key is encrypted with a passphrase; Portico needs it unencrypted "
            "(protect it with file permissions instead)"
        ) from None
    except ValueError as exc:
        raise ValueError(f"{path}: the private key cannot be parsed: {exc}") from None
    except Exception as exc:  # e.g. cryptography.exceptions.UnsupportedAlgorithm
        raise ValueError(f"{path}: the private key cannot be used: {exc}") from None


def _no_password() -> bytes:
    # Given to load_cert_chain so that OpenSSL never prompts on a terminal for a passphrase
    # (a worker would hang); check_private_key has already refused encrypted keys.
    raise ValueError("the private key is encrypted")


def load_certificate_pair(context: ssl.SSLContext, cert: str, key: str) -> None:
    """Load the chain `cert` and the private key `key` into `context`.

    This is where a key is proven to MATCH its certificate (OpenSSL compares them). Raises
    ValueError naming the key file and why it cannot be used with `cert`; `context` is then
    unusable. Call `read_certificate` and `check_private_key` first for clearer messages about
    the files themselves.
    """
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        raise ValueError(_pair_problem(cert, key, exc)) from None
    except ValueError as exc:
        raise ValueError(f"{key}: {exc} (Portico needs it unencrypted)") from None
    except OSError as exc:  # a file replaced or removed since it was checked
        raise ValueError(f"{exc.filename or key}: cannot read: {exc.strerror or exc}") from None


def _pair_problem(cert: str, key: str, exc: ssl.SSLError) -> str:
    # OpenSSL words a mismatch differently by key type (KEY_VALUES_MISMATCH for two EC keys,
    # NO_CERTIFICATE_ASSIGNED for an RSA key with an EC certificate), so compare the public
    # keys ourselves before reading its reason.
    position = _key_position(cert, key)
    if position != 1:
        hint = ""
        if position is not None:
            hint = (
                f" (it matches certificate number {position} in that file: "
                "put the server's own certificate first)"
            )
        return f"{key} does not match the certificate {cert}{hint}"
    reason = exc.reason or ""
    if reason in ("EE_KEY_TOO_SMALL", "CA_KEY_TOO_SMALL"):
        return (
            f"{key}: the key of {cert} is too small for OpenSSL's security level "
            "(use RSA 2048 bits or more, or ECDSA P-256)"
        )
    if reason == "CA_MD_TOO_WEAK":
        return f"{cert}: a certificate in it is signed with a digest too weak (such as SHA-1)"
    return f"{key} cannot be used with the certificate {cert}: {reason or exc}"


def _key_position(cert: str, key: str) -> int | None:
    """Which certificate of the chain file `cert` (1 = the first) has the public half of `key`;
    None if none has. A match further down means the chain is in the wrong order."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        chain = x509.load_pem_x509_certificates(_read(cert))
        private = serialization.load_pem_private_key(_read(key), password=None)
    except Exception:
        return 1  # unreadable now: let OpenSSL's reason speak
    public = private.public_key().public_bytes(der, spki)
    for position, certificate in enumerate(chain, start=1):
        if certificate.public_key().public_bytes(der, spki) == public:
            return position
    return None


def check_ca_bundle(path: str) -> int:
    """Check that `path` is a PEM bundle of CA certificates that OpenSSL can trust.

    Returns how many certificates it holds. Raises ValueError naming `path` and the reason.
    """
    from cryptography import x509

    data = _read(path)
    if _CERT_BEGIN not in data:
        raise ValueError(
            f"{path}: not a PEM CA bundle (no {_CERT_BEGIN.decode()} line)"
            f"{_not_pem_hint(data, 'x509')}"
        )
    try:
        count = len(x509.load_pem_x509_certificates(data))
    except ValueError as exc:
        raise ValueError(f"{path}: a certificate in it cannot be parsed: {exc}") from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"{path}: OpenSSL cannot use it: {exc}") from None
    return count


# ---------------------------------------------------------------------------------------------
# Field rules


def _fspath(value: object) -> object:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _non_empty(what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not value.strip():
            raise ValueError(f"must not be empty: write the path of {what}")
        return value

    return check


def _check_cert_file(value: str) -> str:
    read_certificate(value)
    return value


def _check_key_file(value: str) -> str:
    check_private_key(value)
    return value


_Path = BeforeValidator(_fspath)
CertPath = Annotated[
    str,
    _Path,
    AfterValidator(_non_empty("a PEM certificate chain")),
    AfterValidator(_check_cert_file),
]
KeyPath = Annotated[
    str, _Path, AfterValidator(_non_empty("a PEM private key")), AfterValidator(_check_key_file)
]
CaPath = Annotated[str, _Path, AfterValidator(_non_empty("a PEM CA bundle"))]


def _tls_version(value: object) -> object:
    """YAML reads an unquoted 1.2 as a number; take it as the text the operator meant."""
    if isinstance(value, float) and not isinstance(value, bool):
        value = f"{value:g}"
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("tlsv").removeprefix("tls").strip()
        if text in ("1.2", "1.3"):
            return text
        old = {"1": "1.0", "1.0": "1.0", "1.1": "1.1"}.get(text)
        if old is not None:
            raise ValueError(
                f'TLS {old} is not offered: it is deprecated (RFC 8996); use "1.2" or "1.3"'
            )
    raise ValueError(f'must be "1.2" or "1.3", not {show(value)}')


def _check_alpn(value: str) -> str:
    if value not in ALPN_PROTOCOLS:
        speaks = ", ".join(ALPN_PROTOCOLS)
        raise ValueError(f"{show(value)} is not a protocol Portico speaks: use {speaks}")
    return value


def _check_hsts(value: str) -> str:
    """A Strict-Transport-Security value (RFC 6797 §6.1): max-age required, includeSubDomains
    and preload allowed, each once. Unknown directives are refused rather than passed on,
    since browsers silently ignore a misspelt includeSubDomains."""
    if any(c < " " or c == "\x7f" for c in value):
        raise ValueError("must not contain control characters or line breaks")
    seen: set[str] = set()
    for part in value.split(";"):
        directive, equals, argument = (s.strip() for s in part.partition("="))
        name = directive.lower()
        if not name:
            if part.strip() or equals:
                raise ValueError(f"{show(value)}: a directive has no name")
            continue
        if name in seen:
            raise ValueError(f'{show(value)}: "{directive}" is given twice')
        seen.add(name)
        if name == "max-age":
            seconds = argument.strip('"') if equals else ""
            if not (seconds.isascii() and seconds.isdigit()):
                raise ValueError(f"{show(value)}: max-age needs a number of seconds")
        elif name in ("includesubdomains", "preload"):
            if equals:
                raise ValueError(f'{show(value)}: "{directive}" takes no value')
        else:
            raise ValueError(
                f'{show(value)}: unknown directive "{directive}" '
                "(use max-age=SECONDS, includeSubDomains, preload)"
            )
    if "max-age" not in seen:
        raise ValueError(f'{show(value)} has no max-age: write e.g. "max-age=31536000"')
    return value


class _Model(BaseModel):
    """Shared settings, as in `schema.py`: frozen, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# ---------------------------------------------------------------------------------------------
# Models


class CertificateConfig(_Model):
    """One certificate chain and its private key. The names it serves are not written in the
    config: they are the certificate's own subjectAltName DNS names, so they cannot drift."""

    cert: CertPath  # PEM chain: the server's certificate first, then intermediates
    key: KeyPath  # PEM private key, unencrypted

    @field_validator("key")
    @classmethod
    def _key_matches_cert(cls, value: str, info: ValidationInfo) -> str:
        cert = info.data.get("cert")
        if cert is not None:  # a bad cert has its own error; no mismatch on top
            load_certificate_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, value)
        return value


class TlsConfig(_Model):
    """TLS termination on a listener: certificates chosen by SNI, protocol versions, ciphers,
    ALPN, client certificates (mTLS) and HSTS. Defaults follow Mozilla's intermediate profile."""

    # The first certificate is the default: for clients without SNI or with an unknown name.
    certificates: tuple[CertificateConfig, ...] = Field(min_length=1)
    min_version: Annotated[  # YAML reads an unquoted 1.2 as a number: both are taken
        TlsVersion,
        BeforeValidator(_tls_version),
        WithJsonSchema({"enum": ["1.2", "1.3", 1.2, 1.3]}),
    ] = "1.2"
    ciphers: str | None = None  # OpenSSL cipher string for TLS 1.2; default INTERMEDIATE_CIPHERS
    # the server's cipher order wins (ChaCha20 first for clients that put it first); false:
    # the client's order
    prefer_server_ciphers: bool = True
    alpn: tuple[Annotated[str, AfterValidator(_check_alpn)], ...] = ("http/1.1",)
    client_auth: ClientAuth = "none"  # client certificates: none | optional | require
    client_ca: CaPath | None = Field(default=None, validate_default=True)
    handshake_timeout: Duration = 10.0
    hsts: Annotated[str, AfterValidator(_check_hsts)] | None = None  # Strict-Transport-Security

    @field_validator("certificates")
    @classmethod
    def _later_certificates_need_names(
        cls, value: tuple[CertificateConfig, ...]
    ) -> tuple[CertificateConfig, ...]:
        for i, certificate in enumerate(value[1:], start=1):
            if not read_certificate(certificate.cert).names:
                raise ValueError(
                    f"certificates[{i}] ({certificate.cert}) has no DNS names (subjectAltName), "
                    "so no client's SNI can select it: list it first to make it the default"
                )
        return value

    @field_validator("ciphers")
    @classmethod
    def _check_ciphers(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("must not be empty (leave it out for the intermediate profile)")
        if info.data.get("min_version") == "1.3":
            raise ValueError(
                'only applies to TLS 1.2, and min_version is "1.3": leave ciphers out '
                "(TLS 1.3 suites are all strong)"
            )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.set_ciphers(value)
        except ssl.SSLError:
            raise ValueError(
                f"{show(value)} selects no cipher this OpenSSL allows "
                f"({ssl.OPENSSL_VERSION}; see `openssl ciphers -v`)"
            ) from None
        _check_ciphers_fit_keys(value, context, info.data.get("certificates") or ())
        return value

    @field_validator("alpn")
    @classmethod
    def _alpn_once_each(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for protocol in value:
            if value.count(protocol) > 1:
                raise ValueError(f"{show(protocol)} is listed twice")
        return value

    @field_validator("client_ca")
    @classmethod
    def _ca_goes_with_client_auth(cls, value: str | None, info: ValidationInfo) -> str | None:
        client_auth = info.data.get("client_auth")
        if client_auth is None:  # invalid itself: reported there
            return value
        if value is None:
            if client_auth != "none":
                raise ValueError(
                    f"client_auth: {client_auth} needs client_ca: the PEM bundle of the CA "
                    "certificates that sign your clients' certificates"
                )
            return None
        if client_auth == "none":
            raise ValueError(
                "is only used with client_auth: optional or require (client_auth is none)"
            )
        check_ca_bundle(value)
        return value

    def cipher_string(self) -> str:
        """The OpenSSL cipher string for TLS 1.2 connections."""
        return self.ciphers if self.ciphers is not None else INTERMEDIATE_CIPHERS


def _check_ciphers_fit_keys(
    ciphers: str, context: ssl.SSLContext, certificates: tuple[CertificateConfig, ...]
) -> None:
    """Refuse a cipher string with no TLS 1.2 cipher that can sign with a certificate's key
    type (only ECDHE-RSA suites, say, for an ECDSA certificate): a TLS 1.2 client given that
    certificate could never finish a handshake."""
    offered = {c["auth"] for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"}
    if not offered:
        raise ValueError(f"{show(ciphers)} selects no TLS 1.2 cipher")
    for i, certificate in enumerate(certificates):
        key_type = read_certificate(certificate.cert).key_type
        auth = _AUTH_FOR_KEY.get(key_type)
        if auth is not None and auth not in offered:
            raise ValueError(
                f"{show(ciphers)} has no cipher for the {key_type.upper()} key of "
                f"certificates[{i}] ({certificate.cert}): TLS 1.2 clients could not connect"
            )
