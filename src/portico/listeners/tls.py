"""TLS termination for one listener: its SSLContexts, the certificate chosen by SNI, and reloads.

Owns: building one `ssl.SSLContext` per configured certificate, all with the same protocol
settings (Mozilla intermediate: TLS 1.2 and 1.3, forward-secret AEAD ciphers, no compression,
no renegotiation, the server's cipher order); choosing a context for each ClientHello's server
name; swapping in freshly read certificates on `reload()`; and reading the subject of a verified
client certificate (`peer_subject`).

Never: opens sockets, reads or writes application bytes, or decides what the listener does with
the client's subject or the HSTS header (the HTTP listener puts them in headers). The asyncio
server (`loop.create_server(ssl=terminator.context, ssl_handshake_timeout=...)`) and the
handshake itself belong to the worker and to OpenSSL.

How SNI and reload work: the server keeps the one context it was given for its whole life, so
that context's `sni_callback` (OpenSSL calls it for every ClientHello, with or without a server
name) moves each new connection to a context of the *current* generation. A reload builds a new
generation and swaps one reference; a connection already established keeps the context it
started with, and old contexts are freed when their last connection closes.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from portico.config.tls import (
    CertificateInfo,
    TlsConfig,
    check_ca_bundle,
    check_private_key,
    load_certificate_pair,
    read_certificate,
)

__all__ = [
    "OP_PRIORITIZE_CHACHA",
    "SERVER_OPTIONS",
    "FastSSLObject",
    "SniTable",
    "TlsError",
    "TlsTerminator",
    "build_server_context",
    "peer_subject",
]

T = TypeVar("T")

SERVER_OPTIONS: Final = ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
"""Set on every context: no compression (CRIME) and no renegotiation (a client-driven CPU
sink; TLS 1.3 has none). Session tickets stay on, as in HAProxy, nginx and Envoy by default:
resumption saves a full handshake's CPU. Their key is random per worker process and lives as
long as the worker (Python cannot rotate it), which bounds how long a stolen key could decrypt
recorded sessions; turning tickets off (OP_NO_TICKET) would move TLS 1.3 resumption into
OpenSSL's per-process session cache instead."""

OP_PRIORITIZE_CHACHA: Final = 0x00200000
"""OpenSSL's SSL_OP_PRIORITIZE_CHACHA (1.1.1+), which Python's ssl module does not name: with
the server's cipher order, a client whose first choice is ChaCha20-Poly1305 (a phone without
AES hardware) gets ChaCha20; every other client gets the server's first choice (AES-GCM)."""

_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_VERIFY: Final = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "require": ssl.CERT_REQUIRED,
}


class TlsError(ValueError):
    """Certificate files that cannot be loaded (at start or on reload); the message names the
    config key, the file and the reason."""


# ---------------------------------------------------------------------------------------------
# Choosing by server name (pure)


class SniTable(Generic[T]):
    """Server name -> value, for the certificate a ClientHello gets.

    An exact name beats a wildcard; ``*.example.com`` covers exactly one more label
    (``a.example.com``, not ``example.com`` nor ``x.a.example.com``, as RFC 6125 §6.4.3 has
    clients check it). When several entries list a name, the first listed wins. No name, or
    one nothing covers, gets `default`. Matching ignores case and a trailing dot.
    """

    __slots__ = ("_default", "_exact", "_wildcard")

    def __init__(self, entries: Iterable[tuple[Iterable[str], T]], default: T) -> None:
        self._default = default
        self._exact: dict[str, T] = {}
        self._wildcard: dict[str, T] = {}  # keyed by the parent: "example.com" for *.example.com
        for names, value in entries:
            for name in names:
                name = name.lower().rstrip(".")
                if name.startswith("*."):
                    self._wildcard.setdefault(name[2:], value)
                elif "*" not in name:  # partial wildcards (w*.example.com) are never matched
                    self._exact.setdefault(name, value)

    def lookup(self, server_name: str | None) -> T:
        """The value for `server_name` (an SNI host name; None when the client sent none)."""
        if not server_name:
            return self._default
        name = server_name.lower().rstrip(".")
        found = self._exact.get(name)
        if found is not None:
            return found
        _, dot, parent = name.partition(".")
        if dot and parent:
            found = self._wildcard.get(parent)
            if found is not None:
                return found
        return self._default


# ---------------------------------------------------------------------------------------------
# Contexts


class FastSSLObject(ssl.SSLObject):
    """`ssl.SSLObject` whose `read`, `write` and `pending` are the C methods of the OpenSSL
    connection it wraps, not the stdlib's Python methods that only forward to them.

    The event loop's TLS protocol calls these three for every TLS record each way (uvloop's
    binds them once per connection); each forwarding method cost an interpreted frame, about
    a tenth of what TLS adds to a small proxied request (bench/relaypath.py --mode tls
    --callgrind). Same signatures, results and exceptions: `read(len, buffer)` is the C
    `read(size, [buffer])`. Everything else (`getpeercert`, ALPN, `context` for SNI) is
    inherited unchanged.
    """

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> FastSSLObject:
        self: FastSSLObject = super()._create(*args, **kwargs)  # type: ignore[misc]
        native = getattr(self, "_sslobj", None)
        # instance attributes shadow the class's (plain functions, not data descriptors); a
        # Python whose SSLObject differs keeps the forwarding methods, which work the same
        if native is not None and hasattr(self, "__dict__"):
            self.__dict__.update(read=native.read, write=native.write, pending=native.pending)
        return self


@dataclass(frozen=True, slots=True)
class _Generation:
    """The contexts built from one reading of the certificate files; swapped whole."""

    table: SniTable[ssl.SSLContext]
    contexts: tuple[ssl.SSLContext, ...]  # one per certificate, in config order
    certificates: tuple[CertificateInfo, ...]


class TlsTerminator:
    """The TLS side of one listener: the context to listen with, and the certificate switch.

    Hand `context` to ``loop.create_server(ssl=...)`` with
    ``ssl_handshake_timeout=handshake_timeout``. Call `reload()` to pick up renewed certificate
    files without touching open connections. Lives as long as the listening socket; a changed
    `TlsConfig` (other than the files' contents) needs a new terminator and server, because
    OpenSSL copies versions, options and verify mode from the listening context into each
    connection before SNI is seen.
    """

    def __init__(self, config: TlsConfig) -> None:
        """Read every certificate file and build the contexts; raises TlsError naming the file
        if one cannot be loaded (it changed since the config was checked)."""
        self.config = config
        self.reloads = 0  # how many reloads succeeded: for the admin view and tests
        self._current = self._build()
        # create_server keeps this one for good; the sni_callback moves connections off it
        self._listening = self._current.contexts[0]

    @property
    def context(self) -> ssl.SSLContext:
        """The context to pass to ``create_server(ssl=...)``: the same object for the life of
        this terminator, whatever reloads happen."""
        return self._listening

    @property
    def handshake_timeout(self) -> float:
        """Seconds a client has to finish its handshake (``ssl_handshake_timeout``)."""
        return self.config.handshake_timeout

    @property
    def certificates(self) -> tuple[CertificateInfo, ...]:
        """The certificates new handshakes get, in config order (the first is the default)."""
        return self._current.certificates

    def select(self, server_name: str | None) -> ssl.SSLContext:
        """The current context for a ClientHello naming `server_name` (None: no SNI)."""
        return self._current.table.lookup(server_name)

    def reload(self) -> tuple[CertificateInfo, ...]:
        """Re-read the certificate, key and client CA files into new contexts, used by every
        handshake from now on; connections already open keep theirs.

        Returns the certificates now served. Raises TlsError (and keeps serving the previous
        certificates) if any file is missing, unparsable or mismatched: a renewal caught half
        way (new certificate, old key) must not take the listener down.
        """
        self._current = self._build()
        self.reloads += 1
        return self._current.certificates

    def _build(self) -> _Generation:
        config = self.config
        contexts: list[ssl.SSLContext] = []
        infos: list[CertificateInfo] = []
        for i, certificate in enumerate(config.certificates):
            where = f"tls.certificates[{i}]"
            try:
                info = read_certificate(certificate.cert)
            except ValueError as exc:
                raise TlsError(f"{where}.cert: {exc}") from None
            try:
                check_private_key(certificate.key)
                context = self._new_context()
                load_certificate_pair(context, certificate.cert, certificate.key)
            except ValueError as exc:
                raise TlsError(f"{where}.key: {exc}") from None
            # The names come from one read and the chain from another: refuse a file replaced
            # in between, or SNI would route names to a certificate that lacks them.
            try:
                again = read_certificate(certificate.cert)
            except ValueError as exc:
                raise TlsError(f"{where}.cert: {exc}") from None
            if again != info:
                raise TlsError(f"{where}.cert: {certificate.cert} changed while being read")
            contexts.append(context)
            infos.append(info)
        table = SniTable(
            ((info.names, context) for info, context in zip(infos, contexts, strict=True)),
            default=contexts[0],
        )
        return _Generation(table, tuple(contexts), tuple(infos))

    def _new_context(self) -> ssl.SSLContext:
        """A server context with this listener's protocol settings and no certificate yet."""
        config = self.config
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.sslobject_class = FastSSLObject  # what the loop's wrap_bio() creates
        context.minimum_version = _VERSIONS[config.min_version]
        context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
        context.options |= SERVER_OPTIONS
        if config.prefer_server_ciphers:
            # The server's order, so a client offering a weaker suite first still gets the
            # strongest both support (TLS scanners flag "no server cipher order"); ChaCha20
            # moves up only for clients that prefer it, as they lack AES hardware.
            context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | OP_PRIORITIZE_CHACHA
        else:
            context.options &= ~(ssl.OP_CIPHER_SERVER_PREFERENCE | OP_PRIORITIZE_CHACHA)
        context.set_ciphers(config.cipher_string())
        if config.alpn:
            context.set_alpn_protocols(list(config.alpn))
        if config.client_auth != "none" and config.client_ca is not None:
            try:
                check_ca_bundle(config.client_ca)
                context.load_verify_locations(cafile=config.client_ca)
            except (ValueError, OSError, ssl.SSLError) as exc:
                raise TlsError(f"tls.client_ca: {exc}") from None
            context.verify_mode = _VERIFY[config.client_auth]
        context.sni_callback = self._on_client_hello
        return context

    def _on_client_hello(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: object
    ) -> None:
        # Called by OpenSSL inside the handshake, for every ClientHello. It must not raise (the
        # handshake would fail with an internal error and Python would report it as unraisable).
        connection.context = self._current.table.lookup(server_name)


def build_server_context(
    config: TlsConfig, *, http2: bool = False, http2_only: bool = False
) -> TlsTerminator:
    """Build the TLS side of a listener from its validated `tls:` section; `.context` is what
    ``create_server(ssl=...)`` takes. Raises TlsError if a file changed since validation.
    With `http2`, ALPN offers "h2" first unless the section orders it itself; with
    `http2_only`, "h2" alone."""
    if http2_only:
        config = config.model_copy(update={"alpn": ("h2",)})
    elif http2 and "h2" not in config.alpn:
        config = config.model_copy(update={"alpn": ("h2", *config.alpn)})
    return TlsTerminator(config)


# ---------------------------------------------------------------------------------------------
# The client's certificate


def peer_subject(connection: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The subject of the client's certificate as an RFC 4514 string (``CN=alice,O=Example``),
    or None when the client sent none or it was not verified (client_auth: none).

    Precondition: the handshake is done (asyncio: in or after ``connection_made``, from
    ``transport.get_extra_info("ssl_object")``). The result is printable ASCII: control and
    non-ASCII characters are written as RFC 4514 ``\\XX`` escapes of their UTF-8 bytes, so it
    can go into a header as is (a CA may sign a subject with a line break in it).
    """
    if connection is None or not connection.getpeercert():  # {}: not verified
        return None
    der = connection.getpeercert(binary_form=True)
    if der is None:  # pragma: no cover - a verified certificate always has its DER form
        return None
    from cryptography import x509  # only mTLS listeners need it

    subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    return _printable(subject)


def _printable(text: str) -> str:
    if text.isascii() and text.isprintable():
        return text
    out: list[str] = []
    for char in text:
        if " " <= char < "\x7f":
            out.append(char)
        else:
            out.extend(f"\\{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out)
