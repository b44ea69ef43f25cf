"""A body filter: replace a text in the bodies of a server's HTML responses, as they stream.

    filters:
      - use: rewrite:ReplaceText
        with: {old: "http://intranet.example", new: "https://www.example.com"}

`on_response` looks at the response head and attaches a `BodyTransform` to the body: the
body then streams through it piece by piece (never held whole), and since its length changes
Portico sends it chunked to HTTP/1.1 clients and as DATA frames to HTTP/2 ones. `on_done`
counts how requests ended (`Outcome`), for a log line every `report_every` requests.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, Field

from portico.plugins import Filter, Outcome, Request, ResponseHeaders

log = logging.getLogger(__name__)


class Replacing:
    """Streams `old` -> `new`. A match may span two pieces, so the last len(old) - 1 bytes of
    each piece wait for the next one (or for the end): memory is one piece plus that tail."""

    def __init__(self, old: bytes, new: bytes) -> None:
        self.old = old
        self.new = new
        self.held = b""

    def feed(self, data: bytes | memoryview) -> bytes:
        old = self.old
        buffer = self.held + bytes(data)
        out = []
        position = 0
        while (found := buffer.find(old, position)) >= 0:
            out += (buffer[position:found], self.new)
            position = found + len(old)
        rest = buffer[position:]
        # hold back the longest end of the rest that could still begin a match
        cut = max(len(rest) - (len(old) - 1), 0)
        while cut < len(rest) and not old.startswith(rest[cut:]):
            cut += 1
        self.held = rest[cut:]
        out.append(rest[:cut])
        return b"".join(out)

    def flush(self) -> bytes:
        return b""  # a partial match stays held: the next piece decides

    def end(self) -> bytes:
        out, self.held = self.held, b""
        return out

    def abort(self) -> None:
        self.held = b""


class ReplaceText(Filter):
    class Options(BaseModel):
        old: str = Field(min_length=1)
        new: str
        content_types: list[str] = ["text/html"]
        report_every: int = 0  # log how requests ended every N requests (0: never)

    def __init__(self, options: Options) -> None:
        self.old = options.old.encode()
        self.new = options.new.encode()
        self.types = tuple(options.content_types)
        self.report_every = options.report_every
        self.ended = {"complete": 0, "cut": 0}

    def on_response(self, request: Request, response: ResponseHeaders) -> None:
        content_type = (response.header("Content-Type") or "").split(";")[0].strip()
        encoded = response.header("Content-Encoding")
        if content_type in self.types and not encoded:  # compressed bytes cannot be searched
            response.transform(Replacing(self.old, self.new))

    def on_done(self, request: Request, outcome: Outcome) -> None:
        self.ended["complete" if outcome.complete else "cut"] += 1
        total = sum(self.ended.values())
        if self.report_every and total % self.report_every == 0:
            log.info("rewrite: %d responses complete, %d cut", *self.ended.values())
