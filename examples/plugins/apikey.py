"""An API-key check: requests without a known key get 401 and never reach a server.

    filters:
      - use: apikey:ApiKey
        with: {header: X-Api-Key, keys_file: keys.txt}

`keys.txt` holds one key per line (blank lines and # comments ignored); a relative path is
taken from the config file's directory. The key is removed before the request goes on, so
servers never see it. Keys are read when the worker starts: edit the file, then reload.
"""

from __future__ import annotations

import hmac

from pydantic import BaseModel

from portico.plugins import ConfigPath, Filter, Request, Response


class ApiKey(Filter):
    class Options(BaseModel):
        header: str = "X-Api-Key"
        keys_file: ConfigPath

    def __init__(self, options: Options) -> None:
        self.header = options.header
        lines = options.keys_file.read_text().splitlines()
        self.keys = [k.strip() for k in lines if k.strip() and not k.lstrip().startswith("#")]
        if not self.keys:
            raise ValueError(f"{options.keys_file} holds no key")

    def on_request(self, request: Request) -> Response | None:
        key = request.header(self.header)
        # compare_digest: the time taken says nothing about how much of a key was right
        if key is None or not any(hmac.compare_digest(key, k) for k in self.keys):
            return Response(
                401,
                "missing or unknown API key\n",
                headers=[("WWW-Authenticate", f'ApiKey header="{self.header}"')],
            )
        request.remove_header(self.header)
        return None
