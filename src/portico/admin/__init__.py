"""The admin listener of the control plane: a JSON API over the live pools, Prometheus metrics
and the dashboard's files.

`api` decides what each request means and answers (routing, the token, validation, the JSON
shapes, the OpenAPI document) without touching a socket; `server` is the asyncio/httptools shell
that the supervisor runs on its own socket. Both reach Portico only through the small
`SupervisorView` protocol, so neither knows how workers are told about a change.
"""

from portico.admin.api import (
    AdminApi,
    AdminError,
    Conflict,
    NotFound,
    ReloadResult,
    SupervisorView,
    Unprocessable,
    listener_views,
    pool_views,
)
from portico.admin.server import AdminServer, resolve_token

__all__ = [
    "AdminApi",
    "AdminError",
    "AdminServer",
    "Conflict",
    "NotFound",
    "ReloadResult",
    "SupervisorView",
    "Unprocessable",
    "listener_views",
    "pool_views",
    "resolve_token",
]
