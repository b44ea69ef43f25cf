"""The check at accept (`ListenerGuards.allows_peer`): who a listener lets in before a byte
is read, with its config list, its bans by address and the run-time entries of the admin API."""

from __future__ import annotations

import time

from portico.config.load import parse_config
from portico.security.access import RuntimeEntries, RuntimeEntry
from portico.security.bans import Ban, BanTable
from portico.worker import ListenerGuards

CONFIG = """
listeners:
  - name: web
    bind: 127.0.0.1:0
    default_pool: app
{extra}pools:
  app:
    servers:
      - address: 127.0.0.1:9
"""


def guards(extra: str = "") -> tuple[ListenerGuards, RuntimeEntries, BanTable]:
    config = parse_config(CONFIG.format(extra=extra), "<test>")
    runtime, bans = RuntimeEntries(), BanTable()
    return ListenerGuards(config.listeners[0], runtime, bans, lambda ban: None), runtime, bans


def test_without_a_list_a_peer_is_let_in_until_a_runtime_entry_denies_it() -> None:
    """No configured list and no ban by address (the usual listener): everyone passes, but a
    run-time entry added later takes effect on the next connection, and lifting it too."""
    check, runtime, _ = guards()
    assert check.allows_peer("192.0.2.1")
    runtime.add(RuntimeEntry("192.0.2.1/32", "deny", scope="web"))
    assert not check.allows_peer("192.0.2.1")
    assert check.allows_peer("192.0.2.2")
    runtime.remove("web", "192.0.2.1/32")
    assert check.allows_peer("192.0.2.1")
    runtime.replace([RuntimeEntry("192.0.2.0/24", "deny")])  # from another instance (Redis)
    assert not check.allows_peer("192.0.2.1")
    runtime.replace([])
    assert check.allows_peer("192.0.2.1")


def test_a_configured_list_and_a_ban_by_address_are_checked_at_accept() -> None:
    check, _, _ = guards("    access: {deny: [192.0.2.1]}\n")
    assert not check.allows_peer("192.0.2.1")
    assert check.allows_peer("192.0.2.2")
    rule = (
        "    bans:\n"
        "      - {name: flood, key: client_ip, status: [429], count: 3, window: 1m,"
        " duration: 1h}\n"
    )
    check, _, bans = guards(rule)
    assert check.allows_peer("192.0.2.1")
    bans.add(Ban("web", "192.0.2.1", time.time() + 3600, "flood"))
    assert not check.allows_peer("192.0.2.1")
    assert check.allows_peer("192.0.2.2")
