"""End-to-end: bodies stream through Portico, never held whole, with back-pressure both ways.

A 1 GiB download and a 1 GiB upload pass through the real `portico run` (one worker) while the
worker's memory is read from /proc: its peak resident size (VmHWM) after the transfer may exceed
its resident size before it (VmRSS) by less than 64 MiB. A client that stops reading must stop
the server's writing, and a server that stops reading must stop the client's sending, while the
worker's memory stays flat. Every body is checked whole with a CRC-32 computed on both ends.
Run with `-s` to see the throughput and memory figures.
"""

from __future__ import annotations

import contextlib
import socket
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import httptools
import pytest

from conftest import simple_config
from fakes import FakeBackend, Portico, Reply, ResponseReader, Seen, connect, request

MiB = 1 << 20
GiB = 1 << 30
MEMORY_BUDGET = 64 * MiB  # the most the worker may grow while a body passes through
# Back-pressure: how much a stalled transfer may have moved before it stopped. The bytes in
# flight sit in kernel socket buffers (client, proxy, server), which Linux sizes up to a few
# MiB each on loopback; far less than the bodies sent (256 MiB).
STALL_LIMIT = 64 * MiB


class Pattern:
    """A body of `total` bytes made of numbered 1 MiB blocks; `crc` covers what was produced."""

    def __init__(self, total: int, size: int = MiB) -> None:
        self.total = total
        self.size = size
        self.crc = 0
        self._block = bytes(range(256)) * (size // 256)

    def chunks(self) -> Iterator[bytes]:
        sent = 0
        index = 0
        while sent < self.total:
            n = min(self.size, self.total - sent)
            # the block number makes a dropped, repeated or reordered block change the CRC
            chunk = (index.to_bytes(8, "big") + self._block[8:])[:n]
            self.crc = zlib.crc32(chunk, self.crc)
            yield chunk
            sent += n
            index += 1


def worker_memory(proxy: Portico) -> tuple[int, int]:
    """(VmRSS, VmHWM) of the only worker process, in bytes."""
    (pid,) = proxy.worker_pids()
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def report(what: str, size: int, seconds: float, growth: int) -> None:
    print(
        f"\n{what}: {size / MiB:.0f} MiB in {seconds:.2f} s = {size / MiB / seconds:.0f} MiB/s, "
        f"worker peak RSS growth {growth / MiB:.1f} MiB"
    )


@dataclass
class StreamedResponse:
    """httptools callbacks that count and checksum a response body instead of keeping it."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    size: int = 0
    crc: int = 0
    complete: bool = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        self.crc = zlib.crc32(body, self.crc)

    def on_message_complete(self) -> None:
        self.complete = True


class StreamingReader:
    """Reads one response from a socket, body bytes counted as they arrive."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.response = StreamedResponse()
        self.parser = httptools.HttpResponseParser(self.response)
        self._buffer = bytearray(MiB)

    def read(self, up_to: int | None = None) -> StreamedResponse:
        """Read until the response is complete (or `up_to` body bytes); EOFError on a close."""
        view = memoryview(self._buffer)
        response = self.response
        while not response.complete and (up_to is None or response.size < up_to):
            n = self.sock.recv_into(view)
            if not n:
                raise EOFError(f"closed after {response.size} body bytes")
            self.parser.feed_data(view[:n])
            if response.status == 0:
                response.status = self.parser.get_status_code()
        return response


def streaming_backend(backends, pattern: Pattern, framing: str) -> FakeBackend:  # type: ignore[no-untyped-def]
    def handler(seen: Seen) -> Reply:
        if seen.target != "/big":
            return Reply(body=b"small")  # the warm-up request
        return Reply(body=pattern.chunks(), length=pattern.total, framing=framing)

    return backends("big", handler)


def start_proxy(portico, backend: FakeBackend) -> Portico:  # type: ignore[no-untyped-def]
    proxy = portico(simple_config([backend]))
    assert request(proxy.port).status == 200  # warm the path up before the baseline
    return proxy


# -- downloads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_gigabyte_download_streams_through_in_bounded_memory(backends, portico, framing) -> None:
    pattern = Pattern(GiB)
    backend = streaming_backend(backends, pattern, framing)
    proxy = start_proxy(portico, backend)
    rss_before, _ = worker_memory(proxy)
    started = time.monotonic()
    with connect(proxy.port, timeout=30) as sock:
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: test.local\r\n\r\n")
        response = StreamingReader(sock).read()
    elapsed = time.monotonic() - started
    _, peak = worker_memory(proxy)
    report(f"download ({framing})", GiB, elapsed, peak - rss_before)
    assert response.status == 200
    if framing == "length":
        assert response.headers["content-length"] == str(GiB)
    else:
        assert response.headers["transfer-encoding"] == "chunked"
    assert response.size == GiB
    assert response.crc == pattern.crc
    assert peak - rss_before < MEMORY_BUDGET


# -- uploads -------------------------------------------------------------------------------------


def upload_backend(backends) -> FakeBackend:  # type: ignore[no-untyped-def]
    backend = backends("sink", lambda seen: Reply(body=b"stored"))
    backend.discard_body = True  # count and checksum the body, never keep it
    return backend


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_gigabyte_upload_streams_through_in_bounded_memory(backends, portico, framing) -> None:
    backend = upload_backend(backends)
    proxy = start_proxy(portico, backend)
    pattern = Pattern(GiB)
    framing_header = (
        f"Content-Length: {GiB}" if framing == "length" else "Transfer-Encoding: chunked"
    )
    rss_before, _ = worker_memory(proxy)
    started = time.monotonic()
    with connect(proxy.port, timeout=30) as sock:
        sock.sendall(f"PUT /big HTTP/1.1\r\nHost: test.local\r\n{framing_header}\r\n\r\n".encode())
        for chunk in pattern.chunks():
            if framing == "chunked":
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            else:
                sock.sendall(chunk)
        if framing == "chunked":
            sock.sendall(b"0\r\n\r\n")
        response = StreamingReader(sock).read()
    elapsed = time.monotonic() - started
    _, peak = worker_memory(proxy)
    report(f"upload ({framing})", GiB, elapsed, peak - rss_before)
    assert response.status == 200
    assert [s.target for s in backend.seen] == ["/", "/big"]
    assert backend.body_bytes == GiB
    assert backend.body_crc == pattern.crc
    assert peak - rss_before < MEMORY_BUDGET


# -- back-pressure -------------------------------------------------------------------------------


def test_client_that_stops_reading_stops_the_backend_not_the_proxy_memory(
    backends, portico
) -> None:
    pattern = Pattern(256 * MiB)
    backend = streaming_backend(backends, pattern, "length")
    proxy = start_proxy(portico, backend)
    rss_before, _ = worker_memory(proxy)
    with connect(proxy.port, timeout=30) as sock:
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: test.local\r\n\r\n")
        reader = StreamingReader(sock)
        reader.read(up_to=1)  # the response has started; now the client reads nothing more
        # wait until the backend's writes are held by flow control and stay held
        stalled = backend.wait_stalled(quiet=0.5, timeout=10)
        sent_when_stalled = backend.body_bytes_sent
        rss_stalled, peak_stalled = worker_memory(proxy)
        print(
            f"\nstalled download: backend sent {sent_when_stalled / MiB:.1f} MiB of 256 MiB, "
            f"worker RSS +{(rss_stalled - rss_before) / MiB:.1f} MiB "
            f"(peak +{(peak_stalled - rss_before) / MiB:.1f} MiB)"
        )
        assert sent_when_stalled < STALL_LIMIT  # the proxy stopped reading from the backend
        assert peak_stalled - rss_before < MEMORY_BUDGET
        assert stalled, "the backend never had to stop writing"
        response = reader.read()  # the client reads again: the rest follows, complete
    assert response.status == 200
    assert response.size == 256 * MiB
    assert response.crc == pattern.crc
    _, peak = worker_memory(proxy)
    assert peak - rss_before < MEMORY_BUDGET


def test_backend_that_stops_reading_stops_the_client_upload_not_the_proxy_memory(
    backends, portico
) -> None:
    backend = upload_backend(backends)
    proxy = start_proxy(portico, backend)
    backend.hold_body = True  # reads the request head, then not one body byte until released
    pattern = Pattern(256 * MiB)
    chunks = pattern.chunks()
    rss_before, _ = worker_memory(proxy)
    with connect(proxy.port, timeout=30) as sock:
        sock.sendall(
            f"PUT /big HTTP/1.1\r\nHost: test.local\r\nContent-Length: {256 * MiB}\r\n\r\n".encode()
        )
        # send until the proxy has taken nothing for half a second: it stopped reading us
        sock.settimeout(0.5)
        accepted = 0
        rest = b""
        try:
            for chunk in chunks:
                rest = memoryview(chunk)
                while rest:
                    n = sock.send(rest)
                    accepted += n
                    rest = rest[n:]
        except TimeoutError:
            pass
        rss_stalled, peak_stalled = worker_memory(proxy)
        print(
            f"\nstalled upload: proxy took {accepted / MiB:.1f} MiB of 256 MiB, backend read "
            f"{backend.body_bytes / MiB:.1f} MiB, worker RSS "
            f"+{(rss_stalled - rss_before) / MiB:.1f} MiB "
            f"(peak +{(peak_stalled - rss_before) / MiB:.1f} MiB)"
        )
        assert len(backend.heads) == 2  # the upload's head reached the backend (after the warm-up)
        assert accepted < STALL_LIMIT
        assert peak_stalled - rss_before < MEMORY_BUDGET
        backend.release_body()  # the backend reads again: the rest of the upload goes through
        sock.settimeout(30)
        sock.sendall(rest)
        for chunk in chunks:
            sock.sendall(chunk)
        response = StreamingReader(sock).read()
    assert response.status == 200
    assert backend.body_bytes == 256 * MiB
    assert backend.body_crc == pattern.crc
    _, peak = worker_memory(proxy)
    assert peak - rss_before < MEMORY_BUDGET


def test_slow_upload_outlasting_the_pool_read_timeout_still_completes(backends, portico) -> None:
    """The pool's read timeout bounds the wait for the server's answer, which starts once the
    request is sent (NGINX's proxy_read_timeout): a client still sending its body, slowly but
    steadily, is not cut off with a 504 (its idle gaps are the listener's body timeout)."""
    backend = upload_backend(backends)
    proxy = portico(simple_config([backend], extra_pool="    timeouts: {read: 300ms}\n"))
    with connect(proxy.port) as sock:
        sock.sendall(b"PUT /slow HTTP/1.1\r\nHost: test.local\r\nContent-Length: 10\r\n\r\n")
        with contextlib.suppress(OSError):  # a proxy that gave up closes: its answer says why
            for _ in range(10):
                # pacing, not synchronisation: the upload's slowness is what is under test
                time.sleep(0.1)
                sock.sendall(b"x")
        response = ResponseReader(sock).read()
    assert response.status == 200
    assert backend.body_bytes == 10
