"""A balancing policy: the server that answered fastest lately, fewest requests on a tie.

    pools:
      app:
        policy: policies:LeastLatency

`needs_latency` asks the pool to time every response (peak EWMA, as `p2c_ewma` uses); a
server with no sample yet counts as fastest, so new servers are tried at once. Unlike
`p2c_ewma`, which compares two random servers, this always takes the global best: simpler,
and fine for one proxy in front of a few servers (many proxies would herd onto one server).
"""

from __future__ import annotations

from collections.abc import Sequence

from portico.plugins import C, Policy


class LeastLatency(Policy):
    needs_latency = True

    def pick(self, candidates: Sequence[C], key: bytes) -> C | None:
        return min(candidates, key=lambda c: (c.latency, c.in_flight), default=None)
