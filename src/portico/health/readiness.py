"""Whether this Portico is ready for traffic, as `/readyz` and `portico health --ready` say it.

Here, not in `portico.admin`: the supervisor answers it on its control socket with or without an
admin listener, and the admin API (pydantic models, the explain engine, the dashboard) is loaded
only when the config has one.
"""

from __future__ import annotations

from typing_extensions import TypedDict  # pydantic reads only this one on Python < 3.12


class Check(TypedDict):
    ok: bool
    detail: str


class Readiness(TypedDict):
    """What `GET /readyz` answers (200 when `ready`, else 503)."""

    ready: bool
    checks: dict[str, Check]  # listening, workers, config, and state_store when required


def readiness(
    *,
    started: bool,
    stopping: bool,
    listening: bool,
    listeners: int,
    workers_up: int,
    workers_expected: int,
    config: str,
    store: Check | None,
) -> Readiness:
    """Ready means: past start-up and not stopping, every listener open, every worker up,
    a config loaded, and the state store answering when the config has one (`store` None:
    not required). Each check says why in words, for logs and `portico health`."""
    checks: dict[str, Check] = {
        "listening": {
            "ok": listening and not stopping,
            "detail": (
                "stopping: draining"
                if stopping
                else f"{listeners} listener(s) open"
                if listening
                else "starting"
                if not started
                else "a listener is closed"
            ),
        },
        "workers": {
            "ok": workers_up >= workers_expected and not stopping,
            "detail": f"{workers_up}/{workers_expected} ready",
        },
        "config": {"ok": started, "detail": config if started else "starting"},
    }
    if store is not None:
        checks["state_store"] = store
    return {"ready": all(check["ok"] for check in checks.values()), "checks": checks}
