"""Slow clients and resource exhaustion end to end: what a slow reader makes Portico hold,
a server's oversized response head, and a worker out of file descriptors."""

from __future__ import annotations

import shutil
import socket
import time

import pytest

from fakes import (
    Portico,
    Reply,
    ResponseReader,
    Seen,
    held_kib,
    pool_yaml,
    request,
    settled,
)

MIB = 1 << 20
SLOW_READERS = 150
WARM_READERS = 10
RESPONSE = 10 * MIB


def big(seen: Seen) -> Reply:
    if seen.target == "/small":
        return Reply(body=b"small")
    chunk = b"x" * (256 * 1024)
    return Reply(body=(chunk for _ in range(RESPONSE // len(chunk))), length=RESPONSE)


def slow_readers(port: int, count: int) -> list[socket.socket]:
    """`count` clients that each ask for the download and never read a byte of it."""
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        socks.append(sock)  # never read: as slow as a reader gets
    return socks


def held_per_slow_reader(backends, portico, readers: int, limits: str = "") -> float:
    """KiB of worker RSS and pipes (`held_kib`) each of `readers` never-reading clients of a
    10 MiB download makes Portico hold once every response stalled: the rise they cause beyond
    a first few such readers (what the first ones grow once per worker, e.g. library and heap
    pages a forked worker touches for the first time, is not what each reader holds)."""
    backend = backends("b", big)
    proxy = portico(
        "workers: 1\n"
        "listeners:\n  - {name: web, bind: 127.0.0.1:0, default_pool: app" + limits + "}\n"
        "pools:\n  app:\n    servers:\n" + pool_yaml([backend])
    )
    [worker] = proxy.worker_pids()
    assert request(proxy.port, target="/small").status == 200  # warm: first-request allocations
    # ... and one fast download: what big reads grow once per worker (the shared read buffer,
    # the allocator's arenas) is not what each slow reader holds
    assert len(request(proxy.port, target="/").body) == RESPONSE
    socks = slow_readers(proxy.port, WARM_READERS)
    try:
        settled(lambda: backend.body_bytes_sent)
        before = settled(lambda: held_kib(worker))
        socks += slow_readers(proxy.port, readers)
        # every response stalls: Portico stopped reading from the server
        settled(lambda: backend.body_bytes_sent)
        held = settled(lambda: held_kib(worker)) - before
    finally:
        for sock in socks:
            sock.close()
    per_reader = held / readers
    print(
        f"limits {{{limits.lstrip(', ')}}}: worker RSS + pipes rise with {readers} slow readers "
        f"(after {WARM_READERS}): {held} KiB, {per_reader:.0f} KiB each"
    )
    return per_reader


def test_slow_readers_hold_at_most_64_kib_each(backends, portico) -> None:
    per_reader = held_per_slow_reader(backends, portico, SLOW_READERS)
    # The bound is 64 KiB of response bytes each beyond the socket buffers (a server read is
    # 64 KiB less what the client's write buffer holds), the figure. RSS counts the
    # two connections' own objects too (about 3 KiB each, the benchmark's idle-connection
    # figure), hence the allowance. 150 readers, not 50: one step of the allocator's arenas
    # (~1 MiB) is then 7 KiB a reader, not 20 (50 readers read 42 to 58 KiB each in all and
    # once 71 in CI; 150 read 63 to 65 each). Those readings were flattered: a spawned worker's
    # start-up leaves ~1.8 MiB of free heap that the readers' connections use first (see
    # bench/idle_regions.py); a forked worker has none, and reads 69 to 72 (2026-12-06):
    # 64 KiB plus two connections at ~3.2 KiB each; with one arena step (7 KiB a reader) on
    # top, 14 (a CI run on a busy host read 77 once, 2026-12-06; quiet runs read 70 to 72;
    # with three helpers compiling 71 to 78), and 2 more for the heap's fragments.
    # Before the bound a 1 KiB/s reader held ~300 KiB (the issue).
    assert per_reader <= 64 + 16, f"{per_reader:.0f} KiB per slow reader"


def test_slow_readers_stay_bounded_when_the_kernels_tcp_memory_is_short(backends, portico) -> None:
    """Twice as many readers: their servers' unread bodies, queued in the kernel's buffers,
    take TCP's memory past net.ipv4.tcp_mem's marks here (24 GiB machine: ~1.6 GB against a
    pressure mark of 1.5 GiB), where the kernel refuses sends a socket's buffer would have
    taken. A read sized by that buffer's room (up to 256 KiB, for fast readers) then stayed in
    Portico: 150 to 250 KiB each (2026-12-06). Big reads stop once TCP memory passes the
    first mark: 72 to 103 KiB each in all (2026-12-06, busy host). Under pressure the kernel
    takes a write in part more often, and such a write stays whole in user space until the
    rest is sent, so the bound here is twice 64 KiB plus the connections' objects. On a
    machine with more memory per core the marks are not reached and this is the test above,
    doubled."""
    per_reader = held_per_slow_reader(backends, portico, 2 * SLOW_READERS)
    assert per_reader <= 2 * 64 + 16, f"{per_reader:.0f} KiB per slow reader"


def test_a_larger_response_buffer_is_honoured_and_bounds_what_a_slow_reader_holds(
    backends, portico
) -> None:
    """`limits.response_buffer: 1MiB`: a stalled reader's write buffer fills to between half
    the setting (the high-water mark: no read past it) and the setting (no read larger than
    what is left), so each holds about 0.5 to 1 MiB: more than the default's bound (the
    setting is honoured), and about the setting at most (it still bounds): asyncio's write
    buffer is a bytearray (Python 3.11) that over-allocates by up to 1/8 as it grows, and the
    worker's one shared read buffer grows to 1 MiB (measured: 1132 KiB each in all)."""
    readers = 10
    per_reader = held_per_slow_reader(
        backends, portico, readers, ", limits: {response_buffer: 1MiB}"
    )
    assert per_reader >= 384, f"{per_reader:.0f} KiB per slow reader: the setting is not used"
    assert per_reader <= 1.25 * 1024 + 48, f"{per_reader:.0f} KiB per slow reader: unbounded?"


def pattern(tag: bytes, size: int) -> bytes:
    """`size` bytes in which every 16-byte line says which body and where."""
    return b"".join(b"%s%013d\n" % (tag, i) for i in range((size + 15) // 16))[:size]


def sized(target: str) -> int:
    """The body size a target asks for: /s... 3 MiB, /m... 1 MiB, /k... 16 KiB + 1."""
    return {"s": 3 * MIB, "m": MIB, "k": 16 * 1024 + 1}[target[1]]


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_slow_and_fast_readers_each_get_their_own_bytes(backends, portico, framing: str) -> None:
    """Response bytes go on from the worker's read buffers as views (not copies) wherever the
    client's socket takes them at once; a slow reader's socket does not, and the rest of its
    write stays queued as a view of the buffer, which later reads (the fast readers') must
    then never overwrite. Every body is checked byte for byte, the slow ones read last."""
    backend = backends(
        "b",
        lambda seen: Reply(body=pattern(seen.target.encode(), sized(seen.target)), framing=framing),
    )
    proxy = portico(
        "workers: 1\n"
        "listeners:\n  - {name: web, bind: 127.0.0.1:0, default_pool: app}\n"
        "pools:\n  app:\n    servers:\n" + pool_yaml([backend])
    )
    # each asks for 3 MiB in 16 KiB responses at once (pipelined): once its socket's send
    # queue is full, the next ones' writes stay queued in the worker, as views of the reads
    slow = slow_readers_of(proxy.port, [[f"/k{i}-{j}" for j in range(192)] for i in range(2)])
    slow += slow_readers_of(proxy.port, [[f"/s{i}", f"/k{i}"] for i in range(2)])
    try:
        for i in range(6):
            target = f"/m{i}" if i % 2 else f"/k{i}"
            response = request(proxy.port, target=target)
            assert response.status == 200
            assert response.body == pattern(target.encode(), sized(target)), target
        for targets, sock in slow:
            reader = ResponseReader(sock)
            for target in targets:
                response = reader.read()
                assert response.status == 200
                assert response.body == pattern(target.encode(), sized(target)), target
    finally:
        for _, sock in slow:
            sock.close()


def slow_readers_of(port: int, asks: list[list[str]]) -> list[tuple[list[str], socket.socket]]:
    """A client per list of targets, with a small receive buffer, that asks for them all at
    once and reads nothing yet."""
    socks = []
    for targets in asks:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"".join(f"GET {t} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for t in targets))
        socks.append((targets, sock))
    return socks


def test_oversized_response_head_is_502(backends, portico) -> None:
    huge = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * (70 * 1024) + b"\r\n\r\nbody"
    proxy = portico(
        "workers: 1\n"
        "listeners:\n  - {name: web, bind: 127.0.0.1:0, default_pool: app}\n"
        "pools:\n  app:\n    retries: 0\n    servers:\n"
        + pool_yaml([backends("b", lambda seen: Reply(raw=huge))])
    )
    assert request(proxy.port).status == 502


@pytest.fixture
def prlimit() -> str:
    path = shutil.which("prlimit")
    assert path is not None, "prlimit (util-linux, essential on Debian) is needed"
    return path


def test_out_of_file_descriptors_pauses_accepting(backends, tmp_path, prlimit: str) -> None:
    """With 64 descriptors, a worker that runs out neither spins nor dies: accepting pauses,
    one log line a second says so, the metric counts it, and it serves again once
    connections close."""
    config = (
        "workers: 1\n"
        "listeners:\n  - {name: web, bind: 127.0.0.1:0, default_pool: app}\n"
        "admin: {bind: 127.0.0.1:0}\n"
        "pools:\n  app:\n    servers:\n" + pool_yaml([backends("b")])
    )
    with Portico(config, tmp_path, prefix=[prlimit, "--nofile=64:64"]) as proxy:
        [worker] = proxy.worker_pids()
        flood = []
        try:
            for _ in range(80):  # more than the worker can hold: the rest wait in the backlog
                flood.append(socket.create_connection(("127.0.0.1", proxy.port), timeout=5))
            assert proxy.wait_for_stderr("pausing accepting", timeout=10) is not None
            cpu_before = _cpu_seconds(worker)
            time.sleep(1.0)  # a spinning loop would burn this whole second
            assert _cpu_seconds(worker) - cpu_before < 0.5
        finally:
            for sock in flood:
                sock.close()
        deadline = time.monotonic() + 10
        while request(proxy.port).status != 200:
            assert time.monotonic() < deadline
        assert proxy.proc.poll() is None
        assert [worker] == proxy.worker_pids()  # the same worker: it did not die
        lines = [line for line in proxy.stderr_lines if "pausing accepting" in line]
        assert 1 <= len(lines) <= 3  # at most one a second


def _cpu_seconds(pid: int) -> float:
    import os

    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
