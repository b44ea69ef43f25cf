"""TLS termination end to end: Portico speaks HTTPS to real TLS clients, HTTP to servers."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest
import trustme

from conftest import simple_config
from fakes import ResponseReader, connect, pool_yaml


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, object]:
    ca = trustme.CA()
    site_a = ca.issue_cert("a.example.com", "*.a.example.com")
    site_b = ca.issue_cert("b.example.com")
    client = ca.issue_cert("client@example.com", common_name="portico-test-client")
    out: dict[str, object] = {"ca": ca, "client": client}
    for name, cert in (("a", site_a), ("b", site_b)):
        chain = tmp_path / f"{name}.pem"
        key = tmp_path / f"{name}.key"
        chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        key.write_bytes(cert.private_key_pem.bytes())
        out[name] = (chain, key)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem.bytes())
    out["ca_file"] = ca_file
    return out


def _https(backends_list, pki, extra_tls: str = "", extra_listener: str = "") -> str:  # type: ignore[no-untyped-def]
    (a_chain, a_key), (b_chain, b_key) = pki["a"], pki["b"]
    return (
        "workers: 1\n"
        "listeners:\n"
        "  - name: secure\n"
        "    bind: 127.0.0.1:0\n"
        "    protocol: https\n"
        "    default_pool: app\n"
        f"{extra_listener}"
        "    tls:\n"
        "      certificates:\n"
        f"        - {{cert: {a_chain}, key: {a_key}}}\n"
        f"        - {{cert: {b_chain}, key: {b_key}}}\n"
        '      hsts: "max-age=31536000"\n'
        f"{extra_tls}"
        "pools:\n"
        "  app:\n"
        "    servers:\n" + pool_yaml(backends_list)
    )


def _client(pki, server_name: str, **options: object) -> ssl.SSLContext:  # type: ignore[no-untyped-def]
    context = ssl.create_default_context()
    pki["ca"].configure_trust(context)
    for key, value in options.items():
        setattr(context, key, value)
    return context


def _get(port: int, context: ssl.SSLContext, server_name: str) -> tuple[ssl.SSLSocket, bytes]:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    tls = context.wrap_socket(raw, server_hostname=server_name)
    tls.sendall(f"GET /x HTTP/1.1\r\nHost: {server_name}\r\n\r\n".encode())
    return tls, b""


def test_https_request_is_terminated_and_forwarded_as_http(backends, portico, pki) -> None:
    b = backends("b")
    proxy = portico(_https([b], pki))
    with _get(proxy.port, _client(pki, "a.example.com"), "a.example.com")[0] as tls:
        response = ResponseReader(tls).read()  # type: ignore[arg-type]
        assert tls.version() in ("TLSv1.3", "TLSv1.2")
        assert tls.selected_alpn_protocol() in (None, "http/1.1")
    assert response.status == 200
    assert response.header("Strict-Transport-Security") == "max-age=31536000"
    seen = b.seen[0]
    assert seen.header("X-Forwarded-Proto") == "https"
    assert "proto=https" in (seen.header("Forwarded") or "")


@pytest.mark.parametrize(
    ("server_name", "expected"),
    [
        ("a.example.com", "a.example.com"),
        ("www.a.example.com", "*.a.example.com"),
        ("b.example.com", "b.example.com"),
    ],
)
def test_certificate_is_chosen_by_sni(backends, portico, pki, server_name, expected) -> None:
    proxy = portico(_https([backends("b")], pki))
    context = _client(pki, server_name)
    with (
        socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        names = [v for k, v in tls.getpeercert()["subjectAltName"] if k == "DNS"]
    assert expected in names


def test_tls_1_1_is_refused_and_tls_1_3_can_be_required(backends, portico, pki) -> None:
    proxy = portico(_https([backends("b")], pki, extra_tls='      min_version: "1.3"\n'))
    old = _client(pki, "a.example.com", maximum_version=ssl.TLSVersion.TLSv1_2)
    with (
        socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw,
        pytest.raises((ssl.SSLError, ConnectionError)),
    ):
        old.wrap_socket(raw, server_hostname="a.example.com")
    new = _client(pki, "a.example.com")
    with (
        socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw,
        new.wrap_socket(raw, server_hostname="a.example.com") as tls,
    ):
        assert tls.version() == "TLSv1.3"


def test_mutual_tls_passes_the_verified_subject_and_drops_a_forged_one(
    backends, portico, pki
) -> None:
    b = backends("b")
    tls_extra = f"      client_auth: require\n      client_ca: {pki['ca_file']}\n"
    proxy = portico(_https([b], pki, extra_tls=tls_extra))
    context = _client(pki, "a.example.com")
    pki["client"].configure_cert(context)
    with (
        socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="a.example.com") as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX-Client-Cert-Subject: CN=admin\r\n\r\n")
        assert ResponseReader(tls).read().status == 200  # type: ignore[arg-type]
    subject = b.seen[0].all("X-Client-Cert-Subject")
    assert len(subject) == 1
    assert "portico-test-client" in subject[0]
    assert _refused(proxy.port, _client(pki, "a.example.com"))


def _refused(port: int, context: ssl.SSLContext) -> bool:
    """True when the server refuses this client: the handshake fails, or (TLS 1.3, where a
    client certificate is checked after the client's handshake ends) no answer ever comes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="a.example.com") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                return tls.recv(1) == b""
        except (ssl.SSLError, ConnectionError):
            return True


def test_garbage_and_stalled_handshakes_are_closed_and_others_are_served(
    backends, portico, pki
) -> None:
    proxy = portico(_https([backends("b")], pki, extra_tls="      handshake_timeout: 300ms\n"))
    started = time.monotonic()
    with connect(proxy.port) as garbage, connect(proxy.port) as stalled:
        garbage.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP on a TLS port
        stalled.sendall(b"\x16\x03\x01")  # a record header, then nothing
        for sock in (garbage, stalled):  # each is closed (after an alert, maybe)
            while sock.recv(4096):
                pass
    assert time.monotonic() - started < 5
    tls, _ = _get(proxy.port, _client(pki, "b.example.com"), "b.example.com")
    with tls:
        assert ResponseReader(tls).read().status == 200  # type: ignore[arg-type]


def test_plain_listener_redirects_to_https(backends, portico) -> None:
    b = backends("b")
    proxy = portico(simple_config([b], extra_listener="    redirect_https: true\n"))
    with connect(proxy.port) as sock:
        sock.sendall(
            b"POST /pay?x=1 HTTP/1.1\r\nHost: shop.example.com:8080\r\nContent-Length: 0\r\n\r\n"
        )
        response = ResponseReader(sock).read()
    assert response.status == 308
    assert response.header("Location") == "https://shop.example.com/pay?x=1"
    assert b.seen == []


def test_redirect_goes_to_the_port_of_the_https_listener(backends, portico, pki) -> None:
    b = backends("b")
    plain = (
        "  - name: plain\n    bind: 127.0.0.1:0\n    default_pool: app\n    redirect_https: true\n"
    )
    config = _https([b], pki).replace("listeners:\n", "listeners:\n" + plain, 1)
    proxy = portico(config)
    plain_port, https_port = proxy.ports  # the ready line names them in config order
    with connect(plain_port) as sock:
        sock.sendall(b"GET /pay?x=1 HTTP/1.1\r\nHost: shop.example.com:8080\r\n\r\n")
        response = ResponseReader(sock).read()
    assert response.status == 308
    assert response.header("Location") == f"https://shop.example.com:{https_port}/pay?x=1"
