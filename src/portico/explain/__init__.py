"""`portico explain`: why one request goes where it goes, told by the proxy's own objects.

`explain` (in `decide.py`) runs a sample request through the listener, filters, router, pool
and policy that a worker would build from the same config, with the server state as the config
starts it or as a running Portico reports it, and records why each step decided what it did.
`render_text` lays that out for people; the `Explanation` model is the JSON for tools and the
admin API's `POST /api/explain`. Everything here is *pure*: no I/O, no clock, seeded chance.
"""

from portico.explain.decide import LiveState, ServerLive, explain
from portico.explain.model import ExplainRequest, Explanation
from portico.explain.request import SampleRequest, parse_request
from portico.explain.text import render_text

__all__ = [
    "ExplainRequest",
    "Explanation",
    "LiveState",
    "SampleRequest",
    "ServerLive",
    "explain",
    "parse_request",
    "render_text",
]
