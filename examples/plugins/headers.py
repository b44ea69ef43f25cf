"""A response filter: a header on every response a server sends through this listener or route.

    filters:
      - use: headers:ResponseHeader
        with: {name: X-Frame-Options, value: DENY}

`on_response` sees each response head from a server before the client does. (Portico's own
answers, errors and redirects, do not pass through response hooks yet.)
"""

from __future__ import annotations

from pydantic import BaseModel

from portico.plugins import Filter, Request, ResponseHeaders


class ResponseHeader(Filter):
    class Options(BaseModel):
        name: str
        value: str
        replace: bool = True  # False: keep a value the server set

    def __init__(self, options: Options) -> None:
        self.options = options

    def on_response(self, request: Request, response: ResponseHeaders) -> None:
        options = self.options
        if options.replace or response.header(options.name) is None:
            response.set_header(options.name, options.value)
