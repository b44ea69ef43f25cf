"""Who may use the proxy: IP access lists, abuse bans and the client address behind trusted
proxies. Pure decisions (no sockets, no clock reads); listeners and filters apply them."""
