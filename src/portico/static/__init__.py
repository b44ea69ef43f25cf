"""Static content: a route's `static:` action answers GET and HEAD from a directory (`site`),
with safe path resolution (`paths`), validators, conditional requests and ranges
(`conditional`) and file bodies the edges stream or sendfile (`files`). Nothing here touches a
socket."""
