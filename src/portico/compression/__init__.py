"""Response compression: which coding a client gets (`negotiate`), which responses are
compressed and how their heads change (`policy`), and the streaming compressors (`codecs`).
The proxy attaches a compressor to a response as a body transform; nothing here touches a
socket."""
