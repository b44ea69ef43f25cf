"""Which servers are fit for traffic, and how much extra load a failing pool may be sent.

The pure parts, re-exported here: `HealthState` (active checks' rise/fall verdict),
`slow_start_factor` (the ramp after a server comes back), `OutlierDetector` (passive health:
ejection on consecutive failures of real requests) and `RetryBudget` (retries as a share of
recent requests). They never await, touch sockets or read the clock. Running the probes is
the control plane's job (`checker.py`, `probes.py`), never a worker's.
"""

from __future__ import annotations

from portico.health.budget import RetryBudget
from portico.health.passive import OutlierDetector
from portico.health.state import SLOW_START_FLOOR, HealthState, slow_start_factor

__all__ = [
    "SLOW_START_FLOOR",
    "HealthState",
    "OutlierDetector",
    "RetryBudget",
    "slow_start_factor",
]
