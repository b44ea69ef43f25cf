"""An active health probe that reads a JSON health document.

    health:
      active:
        type: probes:JsonField
        with: {path: /health, field: status, expect: ok}

The server is healthy when GET `path` answers 2xx with a JSON body whose `field` (dots go
down into objects: `checks.db`) equals `expect`. The response is parsed by httptools (what
Portico itself uses) and read up to 64 KiB.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httptools
from pydantic import BaseModel

from portico.plugins import Probe, ProbeResult

MAX_BODY = 64 * 1024


class JsonField(Probe):
    class Options(BaseModel):
        path: str = "/health"
        field: str = "status"
        expect: Any = "ok"

    def __init__(self, options: Options) -> None:
        self.options = options

    async def check(self, host: str, port: int, timeout: float) -> ProbeResult:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(
                    f"GET {self.options.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    "Accept: application/json\r\nConnection: close\r\n\r\n".encode()
                )
                response = _Response()
                parser = httptools.HttpResponseParser(response)
                while not response.complete and len(response.body) <= MAX_BODY:
                    data = await reader.read(65536)
                    if not data:
                        break
                    parser.feed_data(data)
                status = parser.get_status_code()
            finally:
                writer.close()
        if not 200 <= status < 300:
            return ProbeResult(False, f"HTTP {status}")
        try:
            value: Any = json.loads(bytes(response.body))
            for part in self.options.field.split("."):
                value = value[part]
        except (ValueError, KeyError, TypeError):
            return ProbeResult(False, f"no JSON field {self.options.field}")
        if value != self.options.expect:
            return ProbeResult(False, f"{self.options.field} is {value!r}")
        return ProbeResult(True, f"{self.options.field} is {value!r}")


class _Response:
    """httptools' callbacks: the body, and whether the message is complete."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.complete = False

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True
