"""The socket object of an accepted connection, for the acceptor (compiled) to hand to the
loop: a plain Python subclass of socket.socket, so it lives in a module mypyc leaves alone."""

from __future__ import annotations

import _socket
import socket


class AcceptedSocket(socket.socket):
    """An accepted connection's socket, made from accept(2)'s descriptor as socket.accept
    does, but whose `family` and `type` read the C socket's plain ints: socket.socket's
    properties convert each to an enum member in interpreted code, and accepting plus the
    loop's connect_accepted_socket read them five times per connection."""

    __slots__ = ()
    family = _socket.socket.family  # type: ignore[assignment]
    type = _socket.socket.type  # type: ignore[assignment]
