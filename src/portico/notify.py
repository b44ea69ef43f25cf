"""systemd's service notification protocol (sd_notify), for `Type=notify` units.

Owns the datagram sent to the socket `$NOTIFY_SOCKET` names: ``READY=1`` once Portico serves,
``RELOADING=1`` with ``MONOTONIC_USEC`` when a reload begins (then ``READY=1`` again),
``STOPPING=1`` when it drains, ``STATUS=`` lines for `systemctl status`, and ``WATCHDOG=1``
pings at half the interval `$WATCHDOG_USEC` asks for. The protocol is one datagram of
newline-separated assignments on a Unix socket (a path, or ``@name`` for the abstract
namespace), so plain socket code does it: no libsystemd binding.

Never raises: outside systemd (no `$NOTIFY_SOCKET`) every call is a no-op returning False, and
a socket that is gone is logged once. Never decides when to notify: the supervisor does.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier", "watchdog_interval"]

log = logging.getLogger("portico")


def _address(value: str) -> str | None:
    """The socket address `$NOTIFY_SOCKET` names: a path, or ``@name`` (abstract namespace)."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # vsock and other forms: not supported here


def watchdog_interval(environ: Mapping[str, str] = os.environ, pid: int | None = None) -> float:
    """Seconds between two ``WATCHDOG=1`` pings (half of `$WATCHDOG_USEC`, as sd_watchdog_enabled
    advises), or 0.0 when no watchdog is asked of this process (`$WATCHDOG_PID` names another)."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return 0.0
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return 0.0
    return int(usec) / 1e6 / 2


class Notifier:
    """Sends sd_notify datagrams to the socket `$NOTIFY_SOCKET` named when it was made."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self.address = _address(environ.get("NOTIFY_SOCKET", ""))
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``NAME=value`` lines (``ready=1`` becomes ``READY=1``) in one datagram; True if
        it was sent."""
        if self.address is None:
            return False
        text = "".join(f"{name.upper()}={value}\n" for name, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(text.encode("utf-8"), self.address)
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd on %r: %s", self.address, exc)
                self._failed = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(ready=1, status=status, mainpid=os.getpid())

    def reloading(self) -> bool:
        # systemd >= 253 wants the monotonic time with RELOADING=1 (Type=notify-reload)
        return self.send(
            reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        )

    def stopping(self) -> bool:
        return self.send(stopping=1, status="draining")

    def watchdog(self) -> bool:
        return self.send(watchdog=1)
