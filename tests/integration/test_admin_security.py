"""The admin listener hardened: HTTPS with client certificates, and guessing the token
rate limited per address (logged)."""

from __future__ import annotations

import json
import re
import socket
import ssl
from pathlib import Path

import trustme

from fakes import Portico, ResponseReader, pool_yaml

TOKEN = "admin-token-for-tests"


def test_admin_https_with_client_certificates_and_token_guessing(backends, tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    server.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "admin.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client = ca.issue_cert("operator@example.com")
    client.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "client.pem"))
    pem, ca_pem = tmp_path / "admin.pem", tmp_path / "ca.pem"
    config = (
        "workers: 1\n"
        "listeners:\n  - {name: web, bind: 127.0.0.1:0, default_pool: app}\n"
        "admin:\n"
        "  bind: 127.0.0.1:0\n"
        f"  token: {TOKEN}\n"
        f"  tls: {{cert: {pem}, key: {pem}, client_auth: require, client_ca: {ca_pem}}}\n"
        "pools:\n  app:\n    servers:\n" + pool_yaml([backends("b")])
    )
    with Portico(config, tmp_path) as proxy:
        found = re.search(r"admin https://127\.0\.0\.1:(\d+)", proxy.ready_line)
        assert found, proxy.ready_line
        port = int(found.group(1))

        def call(token: str, *, with_cert: bool = True) -> int | None:
            context = ssl.create_default_context()
            ca.configure_trust(context)
            if with_cert:
                client.configure_cert(context)
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            try:
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
                    conn.sendall(
                        b"GET /api/pools HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        + f"Authorization: Bearer {token}\r\n\r\n".encode()
                    )
                    answer = ResponseReader(conn).read()
                    if answer.status == 200:
                        assert json.loads(answer.body)[0]["name"] == "app"
                    return answer.status
            except (
                ssl.SSLError,
                ConnectionError,
                OSError,
                EOFError,
            ):  # TLS 1.3: after the handshake
                return None
            finally:
                raw.close()

        assert call(TOKEN) == 200
        assert call(TOKEN, with_cert=False) is None  # no client certificate: no connection
        # guessing: 10 wrong tokens, then even the right one waits (429), and it is logged
        assert [call(f"guess-{i}") for i in range(10)] == [403] * 10
        assert call(TOKEN) == 429
        assert proxy.wait_for_stderr("too many failed attempts", timeout=5) is not None
