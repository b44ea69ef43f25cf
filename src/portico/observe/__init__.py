"""Seeing what Portico does: counters, metrics, request ids and the access log.

One module per concern: `stats` (the counters a worker keeps and their sum over all workers,
*pure*), `prometheus` (those sums as Prometheus metrics, in the supervisor), `request_id`
(`X-Request-Id`) and `access_log` (one line per request). Nothing here decides how a request is
handled; the proxy calls in, and the control plane reads out.
"""
