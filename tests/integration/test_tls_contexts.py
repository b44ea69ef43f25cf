"""TLS termination contexts against real clients: Python's ssl, `openssl s_client` and curl.

A tiny HTTP/1.1 server (`TlsServer`) runs on 127.0.0.1, port 0, on its own event loop in a
thread, with a `TlsTerminator`'s context, exactly as a worker passes it to `create_server`. It
answers every request with JSON of what the server side saw (version, cipher, ALPN, client
subject). Every test runs on the stock asyncio loop and on uvloop (the worker's loop when
installed), whose TLS implementations differ. No Portico process is involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import threading
import warnings
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import trustme

from portico.config.tls import INTERMEDIATE_CIPHERS, TlsConfig
from portico.listeners.tls import TlsError, TlsTerminator, build_server_context, peer_subject
from tests.unit.tls.pki import Pair, issue

T = TypeVar("T")

LOOPS: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
try:
    import uvloop

    LOOPS.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
    pass


class _Answer(asyncio.Protocol):
    """Answers each request head with 200 and a JSON body describing the TLS session."""

    def __init__(self, server: TlsServer) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.server.connections += 1
        self.server.transports.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server.transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            ssl_object = self.transport.get_extra_info("ssl_object")
            body = json.dumps(
                {
                    "version": ssl_object.version(),
                    "cipher": ssl_object.cipher()[0],
                    "alpn": ssl_object.selected_alpn_protocol(),
                    "subject": peer_subject(ssl_object),
                }
            ).encode()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )


class TlsServer:
    """An asyncio TLS server in a thread, listening with `terminator.context` (or, for the
    control experiments, with any server `context`)."""

    def __init__(
        self,
        new_loop: Callable[[], Any],
        terminator: TlsTerminator | None = None,
        context: ssl.SSLContext | None = None,
    ) -> None:
        self.terminator = terminator
        self.context = context or (terminator.context if terminator else None)
        assert self.context is not None
        self.handshake_timeout = terminator.handshake_timeout if terminator else 10.0
        self.connections = 0  # handshakes that completed (connection_made calls)
        self.transports: set[asyncio.Transport] = set()
        self.loop: asyncio.AbstractEventLoop = new_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self.port = self.call(self._start())

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def reload(self) -> None:
        """`terminator.reload()` on the loop thread, where a worker would call it."""

        async def reload() -> None:
            assert self.terminator is not None
            self.terminator.reload()

        self.call(reload())

    async def _start(self) -> int:
        self._server = await self.loop.create_server(
            lambda: _Answer(self),
            "127.0.0.1",
            0,
            ssl=self.context,
            ssl_handshake_timeout=self.handshake_timeout,
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        for transport in list(self.transports):
            transport.abort()
        await self._server.wait_closed()
        await asyncio.sleep(0)  # let aborted transports run connection_lost

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(params=LOOPS)
def serve(request: pytest.FixtureRequest) -> Iterator[Callable[..., TlsServer]]:
    """Start a TlsServer for a `tls:` section (a dict, validated here); stopped at the end."""
    started: list[TlsServer] = []

    def start(
        tls: dict[str, Any] | None = None, context: ssl.SSLContext | None = None
    ) -> TlsServer:
        terminator = build_server_context(TlsConfig.model_validate(tls)) if tls else None
        server = TlsServer(request.param, terminator, context)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def sites(ca: trustme.CA, tmp_path: Path) -> dict[str, Pair]:
    """A default certificate, a wildcard one listed before an exact one."""
    return {
        "default": issue(ca, tmp_path, "default", "www.example.org"),
        "wildcard": issue(ca, tmp_path, "wildcard", "*.example.com"),
        "exact": issue(ca, tmp_path, "exact", "a.example.com"),
    }


def tls_of(*pairs: Pair, **fields: Any) -> dict[str, Any]:
    return {"certificates": [p.config() for p in pairs], **fields}


# ---------------------------------------------------------------------------------------------
# Clients


def client_context(
    ca_file: Path,
    *,
    max_version: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
    alpn: list[str] | None = None,
    cert: Pair | None = None,
) -> ssl.SSLContext:
    """A verifying client context; host names are not checked so that the default
    certificate can be seen for any name (the tests compare names themselves)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = False
    if max_version is not None:
        context.maximum_version = max_version
    if ciphers is not None:
        context.set_ciphers(ciphers)
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    if cert is not None:
        context.load_cert_chain(str(cert.cert), str(cert.key))
    return context


@contextlib.contextmanager
def tls_connect(
    port: int, context: ssl.SSLContext, server_name: str | None = "a.example.com"
) -> Iterator[ssl.SSLSocket]:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        # an EOF without close_notify is an error here, not a quiet end: see EOF_INSTEAD_OF_ALERT
        context.wrap_socket(raw, server_hostname=server_name, suppress_ragged_eofs=False) as sock,
    ):
        yield sock


def ask(sock: ssl.SSLSocket) -> dict[str, Any]:
    """One request on `sock`; the server's JSON view of the session."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("closed before a response")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    result: dict[str, Any] = json.loads(body)
    return result


def served_names(sock: ssl.SSLSocket) -> tuple[str, ...]:
    """The DNS names of the certificate the server presented (verified by the client)."""
    peer = sock.getpeercert()
    assert peer
    entries = cast(tuple[tuple[str, str], ...], peer["subjectAltName"])
    return tuple(value for kind, value in entries if kind == "DNS")


# asyncio and uvloop close the connection on a failed handshake without sending the alert that
# OpenSSL prepared (python/cpython#98078, fixed in later CPythons): the client then sees an
# unexpected EOF right after its ClientHello instead of the alert. Either is the server's "no".
EOF_INSTEAD_OF_ALERT = "UNEXPECTED_EOF_WHILE_READING"


def assert_refused(server: TlsServer, context: ssl.SSLContext, alert: str) -> None:
    """Connect expecting the server to refuse the handshake with `alert` (or with the bare
    close above); the server's side must never have seen a connection."""
    with pytest.raises(ssl.SSLError) as caught, tls_connect(server.port, context) as sock:
        ask(sock)  # TLS 1.3 clients learn of a refused certificate only when reading
    assert caught.value.reason in (alert, EOF_INSTEAD_OF_ALERT), caught.value
    assert server.connections == 0


# ---------------------------------------------------------------------------------------------
# Versions, ciphers, ALPN


def test_tls13_is_negotiated_by_default(
    serve: Callable[..., TlsServer], sites: dict[str, Pair], ca_file: Path
) -> None:
    server = serve(tls_of(sites["default"]))
    with tls_connect(server.port, client_context(ca_file)) as sock:
        assert sock.version() == "TLSv1.3"
        assert ask(sock)["version"] == "TLSv1.3"


def test_tls12_client_gets_an_intermediate_cipher(
    serve: Callable[..., TlsServer], sites: dict[str, Pair], ca_file: Path
) -> None:
    server = serve(tls_of(sites["default"]))
    context = client_context(ca_file, max_version=ssl.TLSVersion.TLSv1_2)
    with tls_connect(server.port, context) as sock:
        assert sock.version() == "TLSv1.2"
        view = ask(sock)
    assert view["version"] == "TLSv1.2"
    assert view["cipher"] in INTERMEDIATE_CIPHERS.split(":")


AES256 = "ECDHE-ECDSA-AES256-GCM-SHA384"
AES128 = "ECDHE-ECDSA-AES128-GCM-SHA256"  # the intermediate profile's first choice
CHACHA = "ECDHE-ECDSA-CHACHA20-POLY1305"


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        ((AES256, AES128), AES128),  # the server's order wins over the client's
        ((CHACHA, AES128), CHACHA),  # ... except for a client that puts ChaCha20 first
        ((AES128, CHACHA), AES128),
    ],
)
def test_the_server_cipher_order_wins(
    serve: Callable[..., TlsServer],
    sites: dict[str, Pair],
    ca_file: Path,
    offered: tuple[str, str],
    chosen: str,
) -> None:
    server = serve(tls_of(sites["default"]))
    context = client_context(ca_file, max_version=ssl.TLSVersion.TLSv1_2, ciphers=":".join(offered))
    with tls_connect(server.port, context) as sock:
        assert sock.cipher()[0] == chosen
        assert ask(sock)["cipher"] == chosen


def test_the_client_cipher_order_on_request(
    serve: Callable[..., TlsServer], sites: dict[str, Pair], ca_file: Path
) -> None:
    server = serve(tls_of(sites["default"], prefer_server_ciphers=False))
    context = client_context(
        ca_file, max_version=ssl.TLSVersion.TLSv1_2, ciphers=f"{AES256}:{AES128}"
    )
    with tls_connect(server.port, context) as sock:
        assert sock.cipher()[0] == AES256


def test_min_version_13_refuses_tls12(
    serve: Callable[..., TlsServer], sites: dict[str, Pair], ca_file: Path
) -> None:
    server = serve(tls_of(sites["default"], min_version="1.3"))
    context = client_context(ca_file, max_version=ssl.TLSVersion.TLSv1_2)
    assert_refused(server, context, "TLSV1_ALERT_PROTOCOL_VERSION")
    with tls_connect(server.port, client_context(ca_file)) as sock:
        assert ask(sock)["version"] == "TLSv1.3"


def old_client(ca_file: Path, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that offers only TLS 1.0 or 1.1. Security level 0 lets this OpenSSL build
    the ClientHello at all, so that the refusal the test sees comes from the server."""
    context = client_context(ca_file, ciphers="DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the point of the test
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = version
    return context


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_tls10_and_tls11_are_refused(
    serve: Callable[..., TlsServer], sites: dict[str, Pair], ca_file: Path, version: str
) -> None:
    server = serve(tls_of(sites["default"]))
    context = old_client(ca_file, ssl.TLSVersion[version])
    assert_refused(server, context, "TLSV1_ALERT_PROTOCOL_VERSION")


WEAK_CIPHERS = [
    "AES128-SHA",  # RSA key exchange: no forward secrecy
    "AES256-GCM-SHA384",  # RSA key exchange, even with an AEAD
    "ECDHE-RSA-AES128-SHA",  # CBC with SHA-1
    "ECDHE-RSA-AES128-SHA256",  # CBC (Lucky13 family): not in the profile, in Python's default
    "DES-CBC3-SHA:@SECLEVEL=0",  # 3DES (Sweet32), if this OpenSSL still has it
]


def weak_client(ca_file: Path, ciphers: str) -> ssl.SSLContext:
    try:
        return client_context(ca_file, max_version=ssl.TLSVersion.TLSv1_2, ciphers=ciphers)
    except ssl.SSLError:
        pytest.skip(f"this OpenSSL cannot offer {ciphers}")


@pytest.mark.parametrize("ciphers", WEAK_CIPHERS)
def test_weak_tls12_ciphers_are_refused(
    serve: Callable[..., TlsServer],
    ca: trustme.CA,
    tmp_path: Path,
    ca_file: Path,
    ciphers: str,
) -> None:
    rsa_site = issue(ca, tmp_path, "rsa", "a.example.com", rsa_key=True)
    server = serve(tls_of(rsa_site))
    assert_refused(server, weak_client(ca_file, ciphers), "SSLV3_ALERT_HANDSHAKE_FAILURE")


def permissive_context(pair: Pair) -> ssl.SSLContext:
    """A server that takes anything this OpenSSL can still speak: the control showing that the
    old and weak clients above really can shake hands, so their refusal is Portico's doing."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.load_cert_chain(str(pair.cert), str(pair.key))
    return context


@pytest.mark.parametrize(("version", "name"), [("TLSv1", "TLSv1"), ("TLSv1_1", "TLSv1.1")])
def test_control_old_clients_reach_a_permissive_server(
    serve: Callable[..., TlsServer],
    sites: dict[str, Pair],
    ca_file: Path,
    version: str,
    name: str,
) -> None:
    server = serve(context=permissive_context(sites["default"]))
    with tls_connect(server.port, old_client(ca_file, ssl.TLSVersion[version])) as sock:
        assert sock.version() == name
        assert ask(sock)["version"] == name


@pytest.mark.parametrize("ciphers", WEAK_CIPHERS)
def test_control_weak_clients_reach_a_permissive_server(
    serve: Callable[..., TlsServer],
    ca: trustme.CA,
    tmp_path: Path,
    ca_file: Path,
    ciphers: str,
) -> None:
    rsa_site = issue(ca, tmp_path, "rsa", "a.example.com", rsa_key=True)
    server = serve(context=permissive_context(rsa_site))
    with tls_connect(server.port, weak_client(ca_file, ciphers)) as sock:
        assert ask(sock)["cipher"] == ciphers.split(":")[0]


def test_custom_ciphers_replace_the_profile(
    serve: Callable[..., TlsServer], ca: trustme.CA, tmp_path: Path, ca_file: Path
) -> None:
    # With an RSA certificate a refused cipher works as soon as the operator asks for it.
    rsa_site = issue(ca, tmp_path, "rsa", "a.example.com", rsa_key=True)
    server = serve(tls_of(rsa_site, ciphers="AES128-SHA"))
    with tls_connect(server.port, weak_client(ca_file, "AES128-SHA")) as sock:
        assert ask(sock)["cipher"] == "AES128-SHA"


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [(["h2", "http/1.1"], "http/1.1"), (["http/1.1"], "http/1.1"), (None, None)],
)
def test_alpn_result(
    serve: Callable[..., TlsServer],
    sites: dict[str, Pair],
    ca_file: Path,
    offered: list[str] | None,
    chosen: str | None,
) -> None:
    server = serve(tls_of(sites["default"]))
    with tls_connect(server.port, client_context(ca_file, alpn=offered)) as sock:
        assert sock.selected_alpn_protocol() == chosen
        assert ask(sock)["alpn"] == chosen


def test_no_alpn_when_the_config_has_none(
    serve: Callable[..., TlsServer], sites: dict[str, Pair], ca_file: Path
) -> None:
    server = serve(tls_of(sites["default"], alpn=[]))
    with tls_connect(server.port, client_context(ca_file, alpn=["http/1.1"])) as sock:
        assert sock.selected_alpn_protocol() is None


# ---------------------------------------------------------------------------------------------
# SNI


@pytest.mark.parametrize(
    ("server_name", "names"),
    [
        ("a.example.com", ("a.example.com",)),  # exact beats the wildcard listed before it
        ("b.example.com", ("*.example.com",)),
        ("x.b.example.com", ("www.example.org",)),  # a wildcard covers one label
        ("unknown.test", ("www.example.org",)),
        (None, ("www.example.org",)),  # no SNI at all
    ],
)
def test_certificate_is_chosen_by_sni(
    serve: Callable[..., TlsServer],
    sites: dict[str, Pair],
    ca_file: Path,
    server_name: str | None,
    names: tuple[str, ...],
) -> None:
    server = serve(tls_of(sites["default"], sites["wildcard"], sites["exact"]))
    with tls_connect(server.port, client_context(ca_file), server_name) as sock:
        assert served_names(sock) == names
        assert ask(sock)["version"] == "TLSv1.3"


def test_sni_works_for_tls12_too(
    serve: Callable[..., TlsServer], sites: dict[str, Pair], ca_file: Path
) -> None:
    server = serve(tls_of(sites["default"], sites["wildcard"], sites["exact"]))
    context = client_context(ca_file, max_version=ssl.TLSVersion.TLSv1_2)
    with tls_connect(server.port, context, "b.example.com") as sock:
        assert served_names(sock) == ("*.example.com",)
        assert ask(sock)["version"] == "TLSv1.2"


# ---------------------------------------------------------------------------------------------
# Client certificates


@pytest.fixture
def clients(ca: trustme.CA, tmp_path: Path) -> dict[str, Pair]:
    stranger_ca = trustme.CA()
    return {
        "alice": issue(ca, tmp_path, "alice", "alice.clients.test", common_name="alice"),
        "stranger": issue(stranger_ca, tmp_path, "mallory", "mallory.test", common_name="m"),
    }


def test_mtls_require_refuses_a_client_without_certificate(
    serve: Callable[..., TlsServer], sites: dict[str, Pair], ca_file: Path
) -> None:
    server = serve(tls_of(sites["default"], client_auth="require", client_ca=str(ca_file)))
    assert_refused(server, client_context(ca_file), "TLSV13_ALERT_CERTIFICATE_REQUIRED")


def test_mtls_require_refuses_a_certificate_from_another_ca(
    serve: Callable[..., TlsServer],
    sites: dict[str, Pair],
    clients: dict[str, Pair],
    ca_file: Path,
) -> None:
    server = serve(tls_of(sites["default"], client_auth="require", client_ca=str(ca_file)))
    context = client_context(ca_file, cert=clients["stranger"])
    assert_refused(server, context, "TLSV1_ALERT_UNKNOWN_CA")


@pytest.mark.parametrize("mode", ["require", "optional"])
def test_mtls_accepts_a_client_of_the_ca_and_names_it(
    serve: Callable[..., TlsServer],
    sites: dict[str, Pair],
    clients: dict[str, Pair],
    ca_file: Path,
    mode: str,
) -> None:
    server = serve(tls_of(sites["default"], client_auth=mode, client_ca=str(ca_file)))
    with tls_connect(server.port, client_context(ca_file, cert=clients["alice"])) as sock:
        subject = ask(sock)["subject"]
    assert subject.startswith("CN=alice,")
    assert "O=trustme" in subject


def test_mtls_optional_lets_anonymous_clients_in(
    serve: Callable[..., TlsServer], sites: dict[str, Pair], ca_file: Path
) -> None:
    server = serve(tls_of(sites["default"], client_auth="optional", client_ca=str(ca_file)))
    with tls_connect(server.port, client_context(ca_file)) as sock:
        assert ask(sock)["subject"] is None


def test_no_subject_without_client_auth(
    serve: Callable[..., TlsServer],
    sites: dict[str, Pair],
    clients: dict[str, Pair],
    ca_file: Path,
) -> None:
    server = serve(tls_of(sites["default"]))
    with tls_connect(server.port, client_context(ca_file, cert=clients["alice"])) as sock:
        assert ask(sock)["subject"] is None


# ---------------------------------------------------------------------------------------------
# Reload


def test_reload_serves_new_certificates_to_new_handshakes_only(
    serve: Callable[..., TlsServer], ca: trustme.CA, tmp_path: Path, ca_file: Path
) -> None:
    site = issue(ca, tmp_path, "site", "a.example.com")
    server = serve(tls_of(site))
    context = client_context(ca_file)
    with tls_connect(server.port, context) as old:
        assert served_names(old) == ("a.example.com",)
        assert ask(old)["version"] == "TLSv1.3"

        issue(ca, tmp_path, "site", "a.example.com", "renewed.example.com")  # same files
        server.reload()

        for server_name in ("a.example.com", None):
            with tls_connect(server.port, context, server_name) as new:
                assert served_names(new) == ("a.example.com", "renewed.example.com")
                assert ask(new)["version"] == "TLSv1.3"
        # the connection from before the reload is untouched
        assert ask(old)["version"] == "TLSv1.3"
        assert served_names(old) == ("a.example.com",)
    assert server.terminator is not None
    assert server.terminator.reloads == 1


def test_failed_reload_keeps_serving(
    serve: Callable[..., TlsServer], ca: trustme.CA, tmp_path: Path, ca_file: Path
) -> None:
    site = issue(ca, tmp_path, "site", "a.example.com")
    server = serve(tls_of(site))
    stray = issue(ca, tmp_path, "stray", "a.example.com")
    site.key.write_bytes(stray.key.read_bytes())  # renewal caught half way
    with pytest.raises(TlsError, match="does not match the certificate"):
        server.reload()
    with tls_connect(server.port, client_context(ca_file)) as sock:
        assert served_names(sock) == ("a.example.com",)
        assert ask(sock)["version"] == "TLSv1.3"


# ---------------------------------------------------------------------------------------------
# Handshake timeout


def test_a_silent_client_is_dropped_after_the_handshake_timeout(
    serve: Callable[..., TlsServer], sites: dict[str, Pair]
) -> None:
    server = serve(tls_of(sites["default"], handshake_timeout="200ms"))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        assert raw.recv(1024) == b""  # closed by the server, long before our 10 s timeout
    assert server.connections == 0


# ---------------------------------------------------------------------------------------------
# Other clients


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")
def test_openssl_s_client_verifies_and_negotiates(
    serve: Callable[..., TlsServer], sites: dict[str, Pair], ca_file: Path
) -> None:
    server = serve(tls_of(sites["default"], sites["wildcard"], sites["exact"]))
    done = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{server.port}",
            "-servername",
            "b.example.com",
            "-verify_hostname",
            "b.example.com",
            "-verify_return_error",
            "-CAfile",
            str(ca_file),
            "-alpn",
            "h2,http/1.1",
            "-tls1_2",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Verify return code: 0 (ok)" in done.stdout
    assert "ALPN protocol: http/1.1" in done.stdout
    assert "New, TLSv1.2, Cipher is ECDHE-ECDSA-" in done.stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl command")
def test_curl_verifies_the_sni_certificate(
    serve: Callable[..., TlsServer], sites: dict[str, Pair], ca_file: Path
) -> None:
    server = serve(tls_of(sites["default"], sites["wildcard"], sites["exact"]))
    done = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            "20",
            "--cacert",
            str(ca_file),
            "--resolve",
            f"a.example.com:{server.port}:127.0.0.1",
            f"https://a.example.com:{server.port}/",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr  # curl checks the name against the certificate
    view = json.loads(done.stdout)
    assert view["version"] == "TLSv1.3"
    assert view["alpn"] == "http/1.1"  # curl offers h2 first
