"""An HTTP cache for the proxy, correct by RFC 9111 as a shared cache (with RFC 5861 and
RFC 9211). The decisions are pure (`directives`, `policy`, `key`, `status`), the memory tier
is a plain object (`store`), and `runtime` is the thin shell an exchange talks to."""
