"""The one channel between the control plane and a worker: small JSON messages, one per line.

Owns the message format (versioned) and nothing else. The supervisor holds one end of a Unix
socketpair per worker; a worker whose channel reaches EOF knows its supervisor is gone and shuts
down, and a supervisor that reads EOF knows the worker died. Messages:

- supervisor → worker: ``config`` (the validated YAML text and its file name), ``stop``
  (with ``reload: true`` when a new generation takes over)
- worker → supervisor: ``ready`` (listening, with its pid)
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

VERSION = 1


def encode(kind: str, **fields: Any) -> bytes:
    return json.dumps({"v": VERSION, "type": kind, **fields}).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    message = json.loads(line)
    if not isinstance(message, dict) or message.get("v") != VERSION:
        raise ValueError(f"unsupported channel message: {line[:80]!r}")
    return message


async def receive(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at EOF."""
    line = await reader.readline()
    if not line:
        return None
    return decode(line)
