"""Session persistence: keeping a client on the server it started with.

`cookie` (*pure*): the signed, opaque insert-mode cookie, HAProxy's prefix mode on an
application cookie, and the Cookie/Set-Cookie edits. `stick`: stick tables (a key -> a server
with a TTL and a size bound) over a `portico.state.StateStore`. Neither picks a server on its
own: a missing, invalid or unusable persistence value means the pool's policy picks, and the
client is given the new server's cookie. Never an error for the client.
"""

from __future__ import annotations

from portico.persistence.stick import StickTable, find_named

__all__ = ["StickTable", "find_named"]
