"""Helpers shared by the routing tests: routes from plain data, as the config file gives them."""

from typing import Any

from pydantic import TypeAdapter

from portico.config.routes import RouteConfig, Routes
from portico.routing import Router

_ROUTES: TypeAdapter[tuple[RouteConfig, ...]] = TypeAdapter(Routes)


def routes(*data: dict[str, Any]) -> tuple[RouteConfig, ...]:
    return _ROUTES.validate_python(list(data))


def router(*data: dict[str, Any], default_pool: str = "app") -> Router:
    return Router.compile(routes(*data), default_pool)
