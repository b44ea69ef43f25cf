"""What an explanation says, as frozen pydantic models: one shape for `--json`, the admin API's
`POST /api/explain` and the text renderer. *pure*

Owns the request body of the admin endpoint (`ExplainRequest`) and the answer
(`Explanation` and its parts). Never computes anything: `decide.py` fills these in.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Condition",
    "ExplainRequest",
    "Explanation",
    "FilterStep",
    "ListenerChoice",
    "PoolStep",
    "RequestSummary",
    "RouteStep",
    "ServerStep",
]


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ExplainRequest(_Out):
    """``POST /api/explain``: the request to explain, as `portico explain` takes it."""

    request: str = Field(
        description="METHOD URL, e.g. 'GET https://shop.example.com/cart?x=1'",
        examples=["GET https://shop.example.com/cart?x=1"],
    )
    headers: list[str] = Field(default_factory=list, examples=[["Cookie: beta=1"]])
    client_ip: str = "127.0.0.1"
    listener: str | None = Field(default=None, description="default: chosen from the URL")


class RequestSummary(_Out):
    method: str
    url: str
    host: str | None
    target: str
    client_ip: str
    headers: list[str]


class ListenerChoice(_Out):
    name: str
    reason: str


class FilterStep(_Out):
    """One listener filter, in the order it runs."""

    name: str  # its config key: redirect_https, rate_limit
    verdict: Literal["pass", "answer", "unknown"]
    detail: str


class Condition(_Out):
    condition: str  # e.g. 'path starts with "/cart"'
    holds: bool
    actual: str  # what the request has, e.g. 'path is "/cart"'


class RouteStep(_Out):
    """One route, in file order, until the one that matched (or the default route)."""

    index: int  # -1: the listener's default route
    name: str
    matched: bool
    reason: str
    conditions: list[Condition]
    outcome: str  # 'pool "shop"', 'redirect 301', 'respond 503'


class ServerStep(_Out):
    name: str
    address: str
    weight: int
    in_flight: int
    candidate: bool  # handed to the policy
    reasons: list[str]  # why not, or what limits it (slow start)
    score: float | None  # the policy's number for it (see PoolStep.score)
    chance: float | None  # its probability of being picked, for randomised and rotating policies
    chosen: bool


class PoolStep(_Out):
    name: str
    policy: str
    score: str  # what ServerStep.score means for this policy, or "" when it has none
    how: str  # how the policy decides, in one sentence
    key: str | None  # hashing policies: the key this request hashes on
    sticky: str | None  # persistence: what the request's cookie says
    servers: list[ServerStep]
    winner: str | None
    outcome: str  # 'server "s2"', '503: ...', 'queued: ...', 'fallback to pool "b"'


class Explanation(_Out):
    """Why one request goes where it goes, step by step, as the proxy would take it."""

    live: bool  # True: server state from a running Portico; False: as the config starts
    request: RequestSummary
    listener: ListenerChoice
    filters: list[FilterStep]
    routes: list[RouteStep]
    route: str | None  # the route taken; None when a filter answered first
    answer: str | None  # Portico answers itself (a filter or a route): what it sends
    upstream_target: str | None  # the target sent to the server, after any prefix rewrite
    request_headers: list[str]  # header edits the route makes on the way up
    response_headers: list[str]  # header edits the route makes on the way back
    pools: list[PoolStep]  # the route's pool, then its fallback if it is used
    pool: str | None
    server: str | None
    short: str  # what the listener's debug_header would carry
    notes: list[str]  # what an offline explanation cannot know
