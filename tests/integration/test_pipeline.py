"""The response phases end to end (#12): response-head stages, streaming body transforms, the
done phase and streamed local answers, through `portico run` over HTTP/1.1 and HTTP/2.

One plugin module (written next to the config) does everything by path: `/upper/...`
uppercases the server's body and appends a marker (so the length changes), `/boom/...` attaches
a transform that raises, `/replace/...` answers instead of the server, `/status/...` changes
the status, `/file/...` and `/gen/...` answer locally with a streamed body (a file, a
generator). Its `on_done` appends each request's outcome to a JSON-lines file the test reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from fakes import FakeBackend, Reply, ResponseReader, Seen, connect, eventually, pool_yaml, request
from h2client import H2Client, H2Response

MiB = 1 << 20

PLUGIN = '''
import json
import os

from portico.plugins import ChunksBody, FileBody, Filter, Response


class Upper:
    """Uppercase, and one marker at the end: the length changes."""

    def __init__(self):
        self.fed = 0

    def feed(self, data):
        self.fed += len(data)
        return bytes(data).upper()

    def flush(self):
        return b""

    def end(self):
        return b"|END"

    def abort(self):
        pass


class Boom:
    def __init__(self, after):
        self.after = after
        self.fed = 0

    def feed(self, data):
        self.fed += len(data)
        if self.fed > self.after:
            raise ValueError("boom")
        return data

    def flush(self):
        return b""

    def end(self):
        return b""

    def abort(self):
        pass


async def generated():
    for n in range(3):
        yield b"part %d;" % n


class Pipeline(Filter):
    local_answers = True

    def __init__(self):
        self.log = os.environ.get("PIPELINE_LOG", "outcomes.jsonl")
        self.file = os.environ.get("PIPELINE_FILE", "")

    def on_request(self, request):
        if request.path.startswith("/file/"):
            return Response(200, FileBody(self.file), [("Content-Type", "application/x-blob")])
        if request.path.startswith("/gen/"):
            return Response(200, ChunksBody(generated()))
        if request.path.startswith("/local/"):
            return Response(200, "local answer")
        return None

    def on_response(self, request, response):
        path = request.path
        if path.startswith("/upper/") or (path.startswith("/local/") and response.local):
            response.transform(Upper())
        elif path.startswith("/boom/"):
            response.transform(Boom(int(request.query or 0)))
        elif path.startswith("/replace/"):
            response.replace(Response(203, "replaced", [("X-Replaced", "yes")]))
        elif path.startswith("/status/"):
            response.status = 299
            response.set_header("X-Status-Was", "200")

    def on_done(self, request, outcome):
        with open(self.log, "a") as out:
            out.write(json.dumps({
                "path": request.path, "status": outcome.status, "complete": outcome.complete,
                "bytes": outcome.bytes_sent, "server": outcome.server, "error": outcome.error,
            }) + "\\n")
'''


def start(portico, tmp_path: Path, app: FakeBackend, *, extra: str = "", file: Path | None = None):
    (tmp_path / "pipeline_plugin.py").write_text(PLUGIN)
    os.environ["PIPELINE_LOG"] = str(tmp_path / "outcomes.jsonl")
    os.environ["PIPELINE_FILE"] = str(file or tmp_path / "missing")
    text = (
        "workers: 1\n"
        "plugins:\n  path: ['.']\n"
        "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    default_pool: app\n"
        "    http2: true\n"
        f"{extra}"
        "    filters:\n      - use: pipeline_plugin:Pipeline\n"
        "pools:\n  app:\n    servers:\n" + pool_yaml([app])
    )
    try:
        return portico(text)
    finally:
        del os.environ["PIPELINE_LOG"]
        del os.environ["PIPELINE_FILE"]


def outcomes(tmp_path: Path) -> list[dict[str, object]]:
    path = tmp_path / "outcomes.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def outcome_of(tmp_path: Path, path: str) -> dict[str, object]:
    def found() -> dict[str, object] | None:
        return next((o for o in outcomes(tmp_path) if o["path"] == path), None)

    result = eventually(found, f"the outcome of {path}")
    assert isinstance(result, dict)
    return result


def h2_get(port: int, path: str, method: str = "GET") -> H2Response:
    with connect(port) as sock:
        client = H2Client(sock)
        response = client.response(client.request(method, path))
    return response


def test_a_transform_that_changes_the_length_is_chunked_on_http1_and_data_on_h2(
    backends, portico, tmp_path: Path
) -> None:
    app = backends("app", lambda seen: Reply(body=b"hello " * 1000))
    proxy = start(portico, tmp_path, app)
    with connect(proxy.port) as sock:
        sock.sendall(b"GET /upper/x HTTP/1.1\r\nHost: t\r\n\r\n")
        reader = ResponseReader(sock)
        response = reader.read()
        assert response.status == 200
        assert response.body == b"HELLO " * 1000 + b"|END"
        assert response.header("Transfer-Encoding") == "chunked"
        assert response.header("Content-Length") is None
        # the connection stays usable: the next request on it
        sock.sendall(b"GET /plain HTTP/1.1\r\nHost: t\r\n\r\n")
        again = reader.read()
        assert again.body == b"hello " * 1000
        assert again.header("Content-Length") == "6000"
    h2 = h2_get(proxy.port, "/upper/y")
    assert h2.status == 200
    assert bytes(h2.body) == b"HELLO " * 1000 + b"|END"
    assert h2.header("content-length") is None


def test_transforms_work_on_chunked_and_close_delimited_server_bodies(
    backends, portico, tmp_path: Path
) -> None:
    app = backends(
        "app",
        lambda seen: Reply(
            body=[b"ab", b"cd", b"ef"], framing="chunked" if "c" in seen.target else "close"
        ),
    )
    proxy = start(portico, tmp_path, app)
    assert request(proxy.port, target="/upper/c").body == b"ABCDEF|END"
    assert request(proxy.port, target="/upper/close").body == b"ABCDEF|END"


def test_an_http10_client_gets_a_transformed_body_until_the_close(
    backends, portico, tmp_path: Path
) -> None:
    app = backends("app", lambda seen: Reply(body=b"abc"))
    proxy = start(portico, tmp_path, app)
    with connect(proxy.port) as sock:
        sock.sendall(b"GET /upper/x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Connection: close" in head
    assert body == b"ABC|END"


def test_head_204_and_304_keep_no_body_under_a_transform(backends, portico, tmp_path: Path) -> None:
    def answer(seen) -> Reply:
        if "204" in seen.target:
            return Reply(status=204, reason="No Content")
        if "304" in seen.target:
            return Reply(status=304, reason="Not Modified")
        return Reply(body=b"abc")

    app = backends("app", answer)
    proxy = start(portico, tmp_path, app)
    with connect(proxy.port) as sock:
        sock.sendall(b"HEAD /upper/h HTTP/1.1\r\nHost: t\r\n\r\n")
        head_data = b""
        while b"\r\n\r\n" not in head_data:
            head_data += sock.recv(65536)
        assert head_data.startswith(b"HTTP/1.1 200")
        assert b"chunked" not in head_data.lower()
        assert head_data.endswith(b"\r\n\r\n")  # nothing after the head
        for status in (204, 304):
            sock.sendall(f"GET /upper/{status} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            assert data.startswith(f"HTTP/1.1 {status}".encode())
            assert b"transfer-encoding" not in data.lower()
            assert data.endswith(b"\r\n\r\n")
        sock.sendall(b"GET /upper/last HTTP/1.1\r\nHost: t\r\n\r\n")
        last = ResponseReader(sock).read()
        assert last.body == b"ABC|END"  # the connection stayed in step
    h2 = h2_get(proxy.port, "/upper/h2", "HEAD")
    assert h2.status == 200
    assert bytes(h2.body) == b""


def test_a_transform_that_raises_fails_the_request_cleanly(
    backends, portico, tmp_path: Path
) -> None:
    app = backends("app", lambda seen: Reply(body=b"x" * (4 * MiB)))
    proxy = start(portico, tmp_path, app)
    # at once: nothing was sent yet, the client gets a 500 and the connection stays usable
    with connect(proxy.port) as sock:
        sock.sendall(b"GET /boom/now?0 HTTP/1.1\r\nHost: t\r\n\r\n")
        reader = ResponseReader(sock)
        assert reader.read().status == 500
        sock.sendall(b"GET /plain HTTP/1.1\r\nHost: t\r\n\r\n")
        assert len(reader.read().body) == 4 * MiB
    # later: the body had started, so the response is cut, never presented as complete
    with connect(proxy.port) as sock:
        sock.sendall(b"GET /boom/later?1048576 HTTP/1.1\r\nHost: t\r\n\r\n")
        try:
            ResponseReader(sock).read()
            raise AssertionError("a cut response read as complete")
        except (EOFError, ConnectionResetError):
            pass
    assert proxy.wait_for_stderr("body transform Boom failed in feed: ValueError: boom")
    assert outcome_of(tmp_path, "/boom/later")["complete"] is False
    assert request(proxy.port, target="/plain").status == 200  # the worker lives


def test_replace_and_status_change(backends, portico, tmp_path: Path) -> None:
    app = backends("app", lambda seen: Reply(body=b"from the server"))
    proxy = start(portico, tmp_path, app)
    replaced = request(proxy.port, target="/replace/x")
    assert replaced.status == 203
    assert replaced.body == b"replaced"
    assert replaced.header("X-Replaced") == "yes"
    changed = request(proxy.port, target="/status/x")
    assert changed.status == 299
    assert changed.header("X-Status-Was") == "200"
    assert changed.body == b"from the server"
    h2 = h2_get(proxy.port, "/replace/y")
    assert h2.status == 203
    assert bytes(h2.body) == b"replaced"


def test_local_answers_stream_from_a_source_and_through_transforms(
    backends, portico, tmp_path: Path
) -> None:
    data = os.urandom(3 * MiB + 17)
    file = tmp_path / "blob.bin"
    file.write_bytes(data)
    app = backends("app")
    proxy = start(portico, tmp_path, app, file=file)
    # plain HTTP/1.1: sendfile; Content-Length from the source
    with connect(proxy.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(b"GET /file/a HTTP/1.1\r\nHost: t\r\n\r\n")
        got = reader.read()
        assert got.status == 200
        assert got.header("Content-Length") == str(len(data))
        assert got.body == data
        sock.sendall(b"HEAD /file/b HTTP/1.1\r\nHost: t\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        assert f"Content-Length: {len(data)}".encode() in head
        assert head.endswith(b"\r\n\r\n")
        sock.sendall(b"GET /gen/c HTTP/1.1\r\nHost: t\r\n\r\n")
        generated = reader.read()
        assert generated.body == b"part 0;part 1;part 2;"
        assert generated.header("Transfer-Encoding") == "chunked"  # length unknown
        sock.sendall(b"GET /local/d HTTP/1.1\r\nHost: t\r\n\r\n")
        local = reader.read()
        assert local.body == b"LOCAL ANSWER|END"  # a filter's answer through a transform
    h2 = h2_get(proxy.port, "/file/e")
    assert h2.status == 200
    assert bytes(h2.body) == data
    assert bytes(h2_get(proxy.port, "/gen/f").body) == b"part 0;part 1;part 2;"
    assert bytes(h2_get(proxy.port, "/local/g").body) == b"LOCAL ANSWER|END"
    assert app.seen == []
    assert outcome_of(tmp_path, "/file/a") == {
        "path": "/file/a",
        "status": 200,
        "complete": True,
        "bytes": len(data),
        "server": None,
        "error": None,
    }


def test_done_phase_outcome_complete_or_cut_when_the_server_dies(
    backends, portico, tmp_path: Path
) -> None:
    def answer(seen) -> Reply:
        cut = "cut" in seen.target
        return Reply(body=[b"y" * 500, b"y" * 500], action="truncate" if cut else "")

    app = backends("app", answer)
    proxy = start(portico, tmp_path, app)
    assert request(proxy.port, target="/whole").status == 200
    whole = outcome_of(tmp_path, "/whole")
    assert whole["complete"] is True
    assert whole["bytes"] == 1000
    assert whole["server"] == app.name
    with connect(proxy.port) as sock:
        sock.sendall(b"GET /cut HTTP/1.1\r\nHost: t\r\n\r\n")
        with contextlib.suppress(EOFError, ConnectionResetError):
            ResponseReader(sock).read()
    cut = outcome_of(tmp_path, "/cut")
    assert cut["complete"] is False
    assert cut["error"]


def worker_memory(proxy) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(VmRSS, VmHWM) of the only worker process, in bytes."""
    (pid,) = proxy.worker_pids()
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def test_a_slow_client_pauses_the_server_under_a_transform(
    backends, portico, tmp_path: Path
) -> None:
    total = 64 * MiB
    block = b"z" * MiB
    app = backends("app", lambda seen: Reply(body=(block for _ in range(64)), length=total))
    proxy = start(portico, tmp_path, app)
    rss_before, _ = worker_memory(proxy)
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    with sock:
        sock.sendall(b"GET /upper/big HTTP/1.1\r\nHost: t\r\n\r\n")
        sock.recv(1)  # the response started; now the client reads nothing for a while
        assert app.wait_stalled(quiet=0.5, timeout=15), "the server never had to stop writing"
        assert app.body_bytes_sent < 32 * MiB  # paused well before the end
        _, peak_stalled = worker_memory(proxy)
        assert peak_stalled - rss_before < 32 * MiB  # the transformed body is not held
        deadline = time.monotonic() + 60
        tail = b""
        received = 1
        while time.monotonic() < deadline:
            data = sock.recv(1 << 20)
            if not data:
                break
            received += len(data)
            tail = (tail + data)[-16:]
            if tail.endswith(b"|END\r\n0\r\n\r\n"):
                break
    assert tail.endswith(b"|END\r\n0\r\n\r\n")
    assert received > total  # every byte (uppercased), the chunk framing and the marker
    _, peak = worker_memory(proxy)
    assert peak - rss_before < 32 * MiB


def test_an_h2_stream_not_read_pauses_its_server_under_a_transform(
    backends, portico, tmp_path: Path
) -> None:
    block = b"q" * MiB

    def answer(seen: Seen) -> Reply:
        if seen.target == "/upper/small":
            return Reply(body=b"small")
        return Reply(body=(block for _ in range(64)), length=64 * MiB)

    app = backends("app", answer)
    proxy = start(portico, tmp_path, app)
    with connect(proxy.port) as sock:
        client = H2Client(sock, initial_window=16 * 1024)
        held = client.request("GET", "/upper/big")
        client.hold.add(held)  # never gives this stream its window back
        # the connection goes on: another stream is answered while this one is held
        assert bytes(client.response(client.request("GET", "/upper/small")).body) == b"SMALL|END"
        assert app.wait_stalled(quiet=0.5, timeout=15), "the server never had to stop writing"
        assert app.body_bytes_sent < 32 * MiB
        assert len(client.streams[held].body) <= 16 * 1024
        assert bytes(client.streams[held].body[:4]) == b"QQQQ"
