"""Certificates made on the spot for the TLS tests: trustme for the usual ones, cryptography's
builder for those trustme will not make (no subjectAltName, a small RSA key, odd subjects)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Pair:
    """A certificate chain file and its key file."""

    cert: Path
    key: Path

    def config(self) -> dict[str, str]:
        """The pair as one entry of ``tls.certificates``."""
        return {"cert": str(self.cert), "key": str(self.key)}


def write_leaf(directory: Path, name: str, leaf: trustme.LeafCert) -> Pair:
    """Write `leaf`'s chain (leaf first) and key as NAME.pem and NAME.key in `directory`."""
    pair = Pair(directory / f"{name}.pem", directory / f"{name}.key")
    pair.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(pair.key))
    return pair


def issue(
    ca: trustme.CA,
    directory: Path,
    name: str,
    *names: str,
    rsa_key: bool = False,
    common_name: str | None = None,
) -> Pair:
    """A certificate from `ca` for `names` (ECDSA unless `rsa_key`), written as NAME.pem/.key."""
    key_type = trustme.KeyType.RSA if rsa_key else trustme.KeyType.ECDSA
    leaf = ca.issue_cert(*names, common_name=common_name, key_type=key_type)
    return write_leaf(directory, name, leaf)


def self_signed(
    directory: Path,
    name: str,
    *,
    names: tuple[str, ...] = (),
    subject: x509.Name | None = None,
    rsa_bits: int | None = None,
) -> Pair:
    """A self-signed certificate with subjectAltName `names` (none: no extension at all),
    P-256 unless `rsa_bits` is given."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if rsa_bits is not None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    subject = subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    certificate = builder.sign(key, hashes.SHA256())
    pair = Pair(directory / f"{name}.pem", directory / f"{name}.key")
    pair.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pair
