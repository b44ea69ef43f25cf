"""Header rules of a proxy (RFC 9110 §7.6, RFC 9112, RFC 7239), as pure functions over bytes.

Owns: which headers are hop-by-hop, how a request head is re-serialised for a server and a
response head for a client, and the forwarding headers. Never parses raw bytes (httptools does
that) and never touches a socket. Headers travel as a list of ``(name, value)`` byte pairs
exactly as the parser gave them; names are compared case-insensitively.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum
from typing import Final

Header = tuple[bytes, bytes]

# Hop-by-hop: meaningful for one connection only, never forwarded (RFC 9110 §7.6.1), besides
# those a Connection header lists. Content-Length and Transfer-Encoding are not forwarded either:
# Portico re-frames every body itself.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"}
)


class BodyKind(Enum):
    """How a message body is delimited on the wire (RFC 9112 §6.3)."""

    NONE = 0
    LENGTH = 1
    CHUNKED = 2
    CLOSE = 3  # until the connection closes: responses only


# The members as plain module names, for the hot path: on Python 3.11 `BodyKind.NONE` goes
# through EnumType.__getattr__'s slow attribute hook (~0.1 us per access), a global does not.
NO_BODY: Final = BodyKind.NONE
LENGTH_BODY: Final = BodyKind.LENGTH
CHUNKED_BODY: Final = BodyKind.CHUNKED
CLOSE_BODY: Final = BodyKind.CLOSE


def response_body_kind(
    request_method: bytes, status: int, length: int | None, transfer_encoding: bytes | None
) -> BodyKind:
    """The framing of a response body (RFC 9112 §6.3).

    HEAD and 1xx/204/304 have no body whatever the headers say; then a final `chunked` transfer
    coding (any other final coding runs to close); then Content-Length; else the body runs to
    close. The parser has already refused a Content-Length beside a Transfer-Encoding.
    """
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        return NO_BODY
    if transfer_encoding is not None:
        if transfer_encoding.rsplit(b",", 1)[-1].strip().lower() == b"chunked":
            return CHUNKED_BODY
        return CLOSE_BODY
    if length is not None:
        return LENGTH_BODY
    return CLOSE_BODY


# What the one pass over a request head must notice, by lower-case name.
# Final throughout: the compiled build reads a Final module name as a C static (or inlines it),
# any other as a look-up in the module's dict (~130 instructions each, several per header).
_HOST: Final = 0
_LENGTH: Final = 1
_TE: Final = 2
_CONNECTION: Final = 3
_HOP: Final = 4
_XFF: Final = 5
_XFP: Final = 6
_XFH: Final = 7
_FORWARDED: Final = 8
_UPGRADE: Final = 9
_REQUEST_NAMES: Final[dict[bytes, int]] = {
    b"host": _HOST,
    b"content-length": _LENGTH,
    b"transfer-encoding": _TE,
    b"connection": _CONNECTION,
    b"keep-alive": _HOP,
    b"proxy-connection": _HOP,
    b"te": _HOP,
    b"trailer": _HOP,
    b"upgrade": _UPGRADE,
    b"x-forwarded-for": _XFF,
    b"x-forwarded-proto": _XFP,
    b"x-forwarded-host": _XFH,
    b"forwarded": _FORWARDED,
}
# Connection tokens that name no header to remove; `host` is never removed because a client
# lists it there (a client must not be able to strip the Host the server routes on).
_PLAIN_CONNECTION_TOKENS: Final = frozenset({b"close", b"keep-alive", b"upgrade", b"host"})
_NO_TOKENS: Final[frozenset[bytes]] = frozenset()
_PLAIN: Final = -1  # a field of no class: forwarded as it is


class NameClasses:
    """Tells the class of a field name (framing, hop-by-hop, forwarding...) or `_PLAIN`, in
    any spelling, as cheaply as the common case allows: a name of no classed name's length is
    plain at once (a bit set of lengths, tested with a shift); then the usual spelling of its
    length (`usual`: nearly every peer spells Content-Length so, and the comparison hashes
    nothing); then the lower-case spellings of its length (as HTTP/2-minded clients send
    every name: h2load, proxies that lower-case); then a name whose first letter begins no
    classed name of its length is plain (`initials`: user-agent is as long as connection);
    then a bounded memo of names as sent (peers repeat the same few, so most skip
    `bytes.lower()` and the look-up of its result); then the lower-cased name. Each step
    before the memo saves hashing a new bytes object for it (~400 instructions)."""

    def __init__(self, names: dict[bytes, int], usual: dict[bytes, int], memo_limit: int) -> None:
        self.names = names
        self.size_bits = sum(1 << size for size in frozenset(len(name) for name in names))
        self.usual = _usual(usual)
        self.lower = _by_size(names)
        self.initials = _initials(names)
        self.memo: dict[bytes, int] = {}
        self.memo_limit = memo_limit

    def of(self, name: bytes) -> int:
        size = len(name)
        if not (self.size_bits >> size) & 1:
            return _PLAIN  # the usual field: no classed name is that long
        table = self.usual
        usual = table[size] if size < len(table) else None
        if usual is not None and name == usual[0]:
            return usual[1]
        for spelled, what in self.lower[size]:
            if name == spelled:
                return what
        if not (self.initials[size] >> _initial(name[0])) & 1:
            return _PLAIN  # lower-cased, it begins as no classed name of its length does
        found = self.memo.get(name)
        if found is not None:
            return found
        what = self.names.get(name.lower(), _PLAIN)
        if len(self.memo) < self.memo_limit:
            self.memo[name] = what
        return what


def _usual(spellings: dict[bytes, int]) -> tuple[tuple[bytes, int] | None, ...]:
    """By name length, the usual spelling of a classed name of that length and its class."""
    table: list[tuple[bytes, int] | None] = [None] * (max(map(len, spellings)) + 1)
    for name, what in spellings.items():
        table[len(name)] = (name, what)
    return tuple(table)


def _by_size(names: dict[bytes, int]) -> tuple[tuple[tuple[bytes, int], ...], ...]:
    """By name length, the classed names of that length (lower case) and their classes."""
    table: list[list[tuple[bytes, int]]] = [[] for _ in range(max(map(len, names)) + 1)]
    for name, what in names.items():
        table[len(name)].append((name, what))
    return tuple(tuple(entries) for entries in table)


def _initial(byte: int) -> int:
    """A name's first byte, folded so that both cases of a letter give its lower case's
    number (0-63: a shift that stays a machine word); other bytes may share a number with a
    letter, which only sends them on to the memo."""
    return (byte | 0x20) & 63


def _initials(names: dict[bytes, int]) -> tuple[int, ...]:
    """By name length, a bit set of `_initial` of the classed names of that length."""
    table = [0] * (max(map(len, names)) + 1)
    for name in names:
        table[len(name)] |= 1 << _initial(name[0])
    return tuple(table)


# Bounded, smaller than the servers' memo: clients are less trusted.
_REQUEST_CLASSES: Final = NameClasses(
    _REQUEST_NAMES,
    {
        b"Host": _HOST,
        b"Content-Length": _LENGTH,
        b"Transfer-Encoding": _TE,
        b"Connection": _CONNECTION,
        b"Upgrade": _UPGRADE,
        b"X-Forwarded-For": _XFF,
        b"X-Forwarded-Host": _XFH,
        b"Forwarded": _FORWARDED,
    },
    memo_limit=512,
)


def _decimal(value: bytes) -> int:
    """int(value) for a Content-Length as llhttp passes it (ASCII digits), read natively:
    int() on bytes costs ~800 instructions. Anything else goes to int() as before."""
    size = len(value)
    if 0 < size <= 18:
        total = 0
        for i in range(size):
            digit = value[i] - 48
            if digit < 0 or digit > 9:
                return int(value)
            total = total * 10 + digit
        return total
    return int(value)


class RequestHead:
    """A request head sorted in one pass: what to forward, and what framing and routing need."""

    __slots__ = (
        "connection",
        "forwarded",
        "headers",
        "host",
        "hosts",
        "kind",
        "length",
        "raw",
        "raw_fields",
        "te",
        "upgrade",
        "x_forwarded_for",
    )

    def __init__(self) -> None:
        self.headers: list[Header] = []  # end-to-end, in order; framing re-added by the proxy
        # `serialize_head`'s bytes of the request line and of `raw_fields` (a copy of
        # `headers` as split), without the final empty line, when the client's own head had
        # exactly those bytes (`split_request_headers`); b"": unknown
        self.host: bytes | None = None
        self.hosts = 0
        self.kind = NO_BODY
        self.length = 0
        self.te = b""
        self.connection: frozenset[bytes] = _NO_TOKENS
        # the client's values (lists once it sent some)
        self.x_forwarded_for: Sequence[bytes] = ()
        self.forwarded: Sequence[bytes] = ()
        self.upgrade: bytes | None = None  # the Upgrade field (hop-by-hop: forwarded only on
        # an upgrade the proxy relays, WebSocket)
        self.raw = b""
        self.raw_fields: list[Header] = _NO_FIELDS

    def copy(self) -> RequestHead:
        """The same head, with lists of its own (the proxy edits a request's)."""
        head = RequestHead()
        head.headers = list(self.headers)
        head.host = self.host
        head.hosts = self.hosts
        head.kind = self.kind
        head.length = self.length
        head.te = self.te
        head.connection = self.connection
        head.x_forwarded_for = list(self.x_forwarded_for) if self.x_forwarded_for else ()
        head.forwarded = list(self.forwarded) if self.forwarded else ()
        head.upgrade = self.upgrade
        head.raw = self.raw
        head.raw_fields = self.raw_fields  # never edited: a new list replaces it
        return head


_NO_FIELDS: Final[list[Header]] = []  # shared, never appended to
_END: Final = b"\r\n\r\n"


def split_request_headers(
    headers: list[Header],
    replace_x_forwarded: bool,
    replace_forwarded: bool,
    raw: bytes = b"",
    line: int = 0,
) -> RequestHead:
    """Sort a parsed request head (already validated by llhttp) for forwarding. (`headers`: a
    list, iterated natively by the compiled build.)

    Hop-by-hop headers and Content-Length/Transfer-Encoding are left out of `headers` (the proxy
    re-frames the body); with `replace_*`, the client's forwarding headers too (the proxy sets
    its own, keeping the prior X-Forwarded-For and Forwarded lists). Names listed in Connection
    are removed as RFC 9110 §7.6.1 asks.

    `raw`: the bytes llhttp parsed `headers` from, when they begin with the request line,
    `line` bytes long up to its CRLF, as `method SP target SP HTTP/1.1` (the line the proxy
    sends). Then, if they are what `serialize_head` makes of that line and of each field
    (`name: value`, one space, no other whitespace), the head's `raw` is those bytes less the
    fields left out: the head a server is sent is then made of one slice per run of kept
    fields, not four parts per field (`serialize_fields`), the same bytes. Checked at each
    field's place as serialized: the CR before it, the space after its colon, and CR LF CR LF
    after the last. llhttp (strict) reports a name and a value as the bytes they are in `raw`
    (a name up to its colon; a value from its first byte that is not whitespace, up to its
    CR; obs-fold, bare CR or LF refused), with no CR or LF in either, so a field with other
    whitespace than one space before its value moves every CR after it, and a check fails
    (`_fits` in the tests holds this against `serialize_head`, on llhttp's own parse).
    """
    head = RequestHead()
    out = head.headers
    listed: frozenset[bytes] | None = None
    # the raw bytes' checks: where the field being read begins if it was serialized (-1: it
    # was not), where the run of kept bytes being read began, and the runs before it
    pos = line if raw else -1
    size = len(raw)
    run = 0
    kept = end = 0
    runs: list[bytes] | None = None
    for header in headers:
        name = header[0]
        if pos >= 0:
            colon = pos + 2 + len(name)
            end = colon + 2 + len(header[1])
            # (its CR and the space after its colon: llhttp already holds the LF after a CR
            # and the colon right after a name, so a field in place has them)
            if end + 4 <= size and raw[pos] == 13 and raw[colon + 1] == 32:
                kept = len(out)  # (the branches below append a field they keep)
            else:
                pos = -1
        what = _REQUEST_CLASSES.of(name)
        if what == _PLAIN:
            out.append(header)
        elif what == _HOST:
            head.host = header[1]
            head.hosts += 1
            out.append(header)
        elif what == _LENGTH:
            head.kind = LENGTH_BODY
            head.length = _decimal(header[1])
        elif what == _TE:
            head.kind = CHUNKED_BODY
            # repeated fields are one list (RFC 9110 §5.3): gzip + chunked stays "gzip, chunked"
            head.te = header[1] if not head.te else head.te + b", " + header[1]
        elif what == _CONNECTION:
            tokens = connection_tokens(header[1])
            listed = tokens if listed is None else listed | tokens
        elif what == _XFF:
            if replace_x_forwarded:
                head.x_forwarded_for = [*head.x_forwarded_for, header[1]]
            else:
                out.append(header)
        elif what in (_XFP, _XFH):
            if not replace_x_forwarded:
                out.append(header)
        elif what == _FORWARDED:
            if replace_forwarded:
                head.forwarded = [*head.forwarded, header[1]]
            else:
                out.append(header)
        elif what == _UPGRADE:
            head.upgrade = header[1]
        if pos >= 0:
            if len(out) == kept:  # left out: the run of kept bytes before it ends
                if run >= 0:
                    if runs is None:
                        runs = [raw[run:pos]]
                    else:
                        runs.append(raw[run:pos])
                    run = -1
            elif run < 0:
                run = pos
            pos = end
    if listed is not None:
        head.connection = listed
        # a subset test makes no set: Connection lists only plain tokens, all but always
        if not _plain_tokens(listed):
            extra = listed - _PLAIN_CONNECTION_TOKENS
            head.headers = [h for h in out if h[0].lower() not in extra]
            pos = -1  # (rare: not worth finding the runs again)
    if (
        pos >= 0
        and pos + 4 <= size
        and raw[pos] == 13
        and raw[pos + 1] == 10
        and raw[pos + 2] == 13
        and raw[pos + 3] == 10
    ):
        if runs is None:
            head.raw = raw[:pos]  # every field kept: the usual case
        else:
            if run >= 0:
                runs.append(raw[run:pos])
            head.raw = b"".join(runs)
        head.raw_fields = list(out)
    return head


_RESPONSE_NAMES: Final[dict[bytes, int]] = {
    b"content-length": _LENGTH,
    b"transfer-encoding": _TE,
    b"connection": _CONNECTION,
    b"keep-alive": _HOP,
    b"proxy-connection": _HOP,
    b"te": _HOP,
    b"trailer": _HOP,
    b"upgrade": _UPGRADE,
}
# Servers repeat the same few names (Connection, Content-Length); the memo is bounded, so that
# a server inventing names cannot grow it.
_MEMO_LIMIT: Final = 2048
_RESPONSE_CLASSES: Final = NameClasses(
    _RESPONSE_NAMES,
    {
        b"Content-Length": _LENGTH,
        b"Transfer-Encoding": _TE,
        b"Connection": _CONNECTION,
        b"Upgrade": _UPGRADE,
        b"TE": _HOP,
    },
    memo_limit=_MEMO_LIMIT,
)


class ResponseHead:
    """A response head, sorted as the parser reports each header: end-to-end headers minus
    hidden ones, framing, keep-alive. Pure: no I/O.

    Trailer fields of a chunked body are not its business: the upstream connection collects
    them."""

    __slots__ = (
        "_hide",
        "_length",
        "_listed",
        "declared_length",
        "headers",
        "keep_alive",
        "kind",
        "length",
        "memo",
        "reason",
        "te",
        "upgrade",
    )

    def __init__(self, hide: frozenset[bytes] = frozenset()) -> None:
        self.headers: list[Header] = []
        self.reason = b""
        self.kind = NO_BODY
        self.length = 0
        self.declared_length: bytes | None = None  # as sent, for HEAD and 304
        self.te: bytes | None = None
        self.keep_alive = True
        self.upgrade: bytes | None = None  # the protocol a 101 switches to
        self._hide = hide
        self._length: int | None = None
        self._listed: frozenset[bytes] | None = None
        # the server connection's memo of this head's bytes (`HeadMemo`), if it keeps one
        self.memo: HeadMemo | None = None

    def copy(self) -> ResponseHead:
        """The same head, with a list of fields of its own (the proxy edits that list)."""
        head = ResponseHead(self._hide)
        head.headers = list(self.headers)
        head.reason = self.reason
        head.kind = self.kind
        head.length = self.length
        head.declared_length = self.declared_length
        head.te = self.te
        head.keep_alive = self.keep_alive
        head.upgrade = self.upgrade
        head._length = self._length
        head._listed = self._listed
        head.memo = self.memo
        return head

    # httptools callbacks
    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        what = _RESPONSE_CLASSES.of(name)
        if what == _PLAIN:
            hide = self._hide
            if not hide or name.lower() not in hide:
                self.headers.append((name, value))
        elif what == _LENGTH:
            self.declared_length = value
            self._length = _decimal(value)
        elif what == _CONNECTION:
            tokens = connection_tokens(value)
            self._listed = tokens if self._listed is None else self._listed | tokens
        elif what == _TE:
            self.te = value if self.te is None else self.te + b", " + value
        elif what == _UPGRADE:
            self.upgrade = value

    def finish(self, method: bytes, status: int, http11: bool) -> None:
        """The head is complete: settle framing and keep-alive (RFC 9112 §6.3, §9.3)."""
        listed = self._listed
        if listed is not None:
            self.keep_alive = b"close" not in listed if http11 else b"keep-alive" in listed
            if not _plain_tokens(listed):  # (no set made in the usual case)
                extra = listed - _PLAIN_CONNECTION_TOKENS
                self.headers = [h for h in self.headers if h[0].lower() not in extra]
        else:
            self.keep_alive = http11
        kind = self.kind = response_body_kind(method, status, self._length, self.te)
        if kind is LENGTH_BODY:
            self.length = self._length or 0
        elif kind is CLOSE_BODY:
            self.keep_alive = False


class HeadMemo:
    """A server connection's last final response head: its bytes, the request method it
    answered, and what parsing them gave. A head is a pure function of those (and of the
    connection's hidden fields, fixed), so the same bytes after the same method need not go
    through llhttp and `ResponseHead` again: servers repeat their heads byte for byte (a
    Date changes once a second). Also where the client head last serialized from such a
    response is kept (`Http1Framer.send_response_head`), reused only when its inputs are
    equal, compared by value."""

    __slots__ = (
        "_head",
        "http11",
        "method",
        "out_fields",
        "out_head",
        "out_reason",
        "out_status",
        "raw",
        "status",
    )

    def __init__(
        self, raw: bytes, method: bytes, status: int, http11: bool, head: ResponseHead
    ) -> None:
        self.raw = raw
        self.method = method
        self.status = status
        self.http11 = http11
        # a copy made before anyone edits the head's fields: copied again for each response
        # (pointing at no memo: a memo and its head referring to each other would outlive
        # their use, a cycle for the garbage collector, one per head read)
        self._head = head.copy()
        self._head.memo = None
        # the client head last serialized with it: status, reason, fields as framed, bytes
        self.out_status = 0
        self.out_reason = b""
        self.out_fields: list[Header] | None = None
        self.out_head = b""

    def head(self) -> ResponseHead:
        """A head as parsing `raw` again would give it."""
        head = self._head.copy()
        head.memo = self
        return head


# Fields a sender must not put in a trailer section, or that a recipient must not merge from
# one (RFC 9110 §6.5.1): framing, routing, authentication, response control, content meta.
_NOT_IN_TRAILERS: Final = frozenset(
    {
        b"age",
        b"authorization",
        b"cache-control",
        b"content-encoding",
        b"content-length",
        b"content-range",
        b"content-type",
        b"cookie",
        b"date",
        b"expires",
        b"host",
        b"location",
        b"proxy-authenticate",
        b"retry-after",
        b"set-cookie",
        b"trailer",
        b"transfer-encoding",
        b"vary",
        b"www-authenticate",
    }
)


def trailer_fields(fields: Sequence[Header], hide: frozenset[bytes] = frozenset()) -> list[Header]:
    """The fields of a server's trailer section that may be passed on (names lower-case,
    as HTTP/2 wants them and HTTP/1.1 allows), minus the pool's hidden ones."""
    out = []
    for name, value in fields:
        low = name.lower()
        if low not in _NOT_IN_TRAILERS and low not in HOP_BY_HOP and low not in hide:
            out.append((low, value))
    return out


_TOKENS_MEMO: Final[dict[bytes, frozenset[bytes]]] = {}


# the Connection values nearly every peer sends, as they spell them: found by a comparison,
# where the memo hashes each new bytes object (~400 instructions)
_CLOSE_TOKENS: Final = frozenset({b"close"})
_KEEP_ALIVE_TOKENS: Final = frozenset({b"keep-alive"})


def _plain_tokens(listed: frozenset[bytes]) -> bool:
    """Whether a Connection field lists only tokens that name no field to remove: the usual
    values by identity (a subset test costs ~400 instructions)."""
    return (
        listed is _CLOSE_TOKENS
        or listed is _KEEP_ALIVE_TOKENS
        or listed <= _PLAIN_CONNECTION_TOKENS
    )


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """The lower-cased options of one Connection field value (memoised: servers repeat
    `keep-alive` and `close` on every response)."""
    if value == b"close":
        return _CLOSE_TOKENS
    if value == b"keep-alive":
        return _KEEP_ALIVE_TOKENS
    tokens = _TOKENS_MEMO.get(value)
    if tokens is None:
        tokens = frozenset(t.strip().lower() for t in value.split(b",")) - {b""}
        if len(_TOKENS_MEMO) < _MEMO_LIMIT:
            _TOKENS_MEMO[value] = tokens
    return tokens


def split_response_headers(
    headers: Sequence[Header],
    *,
    method: bytes,
    status: int,
    http11: bool,
    hide: frozenset[bytes] = frozenset(),
) -> ResponseHead:
    """Sort a list of response headers (what the parser would report one by one)."""
    head = ResponseHead(hide)
    for name, value in headers:
        head.on_header(name, value)
    head.finish(method, status, http11)
    return head


def format_forwarded_for(client_ip: str) -> bytes:
    """A `for=` node of RFC 7239: IPv6 addresses quoted and bracketed."""
    if ":" in client_ip:
        return b'for="[' + client_ip.encode("ascii") + b']"'
    return b"for=" + client_ip.encode("ascii")


def forwarding_headers(
    client_ip: str,
    proto: bytes,
    host: bytes | None,
    *,
    x_forwarded_for: Sequence[bytes] | None,
    forwarded: Sequence[bytes] | None,
) -> list[Header]:
    """Headers that tell a server who the client is; None leaves that family out.

    X-Forwarded-For appends this hop to any list the client sent (what NGINX's
    $proxy_add_x_forwarded_for and HAProxy's `option forwardfor` do); X-Forwarded-Proto and
    X-Forwarded-Host state what this proxy saw, replacing anything the client claimed.
    Forwarded (RFC 7239) appends this hop's element to the client's list likewise.
    """
    out: list[Header] = []
    ip = client_ip.encode("ascii")
    if x_forwarded_for is not None:
        out.append(
            (b"X-Forwarded-For", b", ".join([*x_forwarded_for, ip]) if x_forwarded_for else ip)
        )
        out.append((b"X-Forwarded-Proto", proto))
        if host is not None:
            out.append((b"X-Forwarded-Host", host))
    if forwarded is not None:
        node = format_forwarded_for(client_ip) + b";proto=" + proto
        if host is not None and _is_token(host):
            node += b";host=" + host
        elif host is not None:
            node += b';host="' + host.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        out.append((b"Forwarded", b", ".join([*forwarded, node]) if forwarded else node))
    return out


_TOKEN_CHARS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
FORWARDING_NAMES: frozenset[bytes] = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
)


def _is_token(value: bytes) -> bool:
    return bool(value) and all(c in _TOKEN_CHARS for c in value)


def serialize_head(
    first_line: bytes,
    headers: Iterable[Header],
    block: bytes = b"",
    tail: list[Header] | None = None,
) -> bytes:
    """`first_line` CRLF, each header as `name: value` CRLF, then the empty line. `block`: more
    fields already serialized (`serialize_fields`), after `headers` and before `tail`'s."""
    # one flat list and one join: a single bytes object made, where joining each pair, then
    # the lines, then concatenating the ends made one per header and four more (compiled,
    # ~35% less time per head; twice per proxied request)
    parts = [first_line]
    for name, value in headers:
        parts.append(b"\r\n")
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
    if block:
        parts.append(block)
    if tail:
        for name, value in tail:
            parts.append(b"\r\n")
            parts.append(name)
            parts.append(b": ")
            parts.append(value)
    parts.append(b"\r\n\r\n")
    return b"".join(parts)


class RequestLineMemo:
    """The last request head one server connection was sent (`serialize`), with what it was
    made from, once its request line came twice in a row. Clients repeat their requests (a
    poll, a health check, a load test), and serializing a head is a tenth of a small
    request's cost."""

    __slots__ = (
        "block",
        "fields",
        "head",
        "method",
        "raw",
        "raw_block",
        "raw_head",
        "raw_tail",
        "tail",
        "target",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.fields: list[Header] | None = None  # None: nothing serialized yet
        self.block = b""
        self.tail: list[Header] | None = None
        self.head = b""
        # the last head made by `splice`, and what it was made of
        self.raw = b""
        self.raw_block = b""
        self.raw_tail: list[Header] | None = None
        self.raw_head = b""

    def splice(self, raw: bytes, block: bytes, tail: list[Header] | None) -> bytes:
        """`serialize_head` of a head whose request line and fields serialize as `raw`
        (`RequestHead.raw`), then `block` and `tail`: the bytes made last time when `raw` is
        the same object (a client's request read again, `_Repeat`, shares its head's) and
        the rest is equal, else made."""
        if raw is self.raw and block == self.raw_block and tail == self.raw_tail:
            return self.raw_head
        if tail is None:
            head = b"".join((raw, block, _END)) if block else raw + _END
        else:
            head = serialize_head(raw, _NO_FIELDS, block, tail)
        self.raw = raw
        self.raw_block = block
        self.raw_tail = None if tail is None else list(tail)
        self.raw_head = head
        return head

    def serialize(
        self,
        method: bytes,
        target: bytes,
        headers: list[Header],
        block: bytes,
        tail: list[Header] | None,
    ) -> bytes:
        """`serialize_head` of the request line `method target HTTP/1.1` and these fields:
        the bytes made last time when every input is equal (compared by value), else made
        and remembered."""
        fields = self.fields
        if (
            fields is not None
            and method == self.method
            and target == self.target
            and block == self.block
            and headers == fields
            and tail == self.tail
        ):
            return self.head
        head = serialize_head(method + b" " + target + b" HTTP/1.1", headers, block, tail)
        if method == self.method and target == self.target:
            # the same request line twice in a row: worth remembering the rest (a client
            # whose targets change costs two comparisons, no copy)
            self.fields = list(headers)
            self.block = block
            self.tail = None if tail is None else list(tail)
            self.head = head
        else:
            self.method = method
            self.target = target
            self.fields = None
        return head


def serialize_fields(headers: Iterable[Header]) -> bytes:
    """Each header as CRLF `name: value`: a block of fields made once and spliced into many
    heads by `serialize_head` (one part of its join instead of four per field)."""
    parts: list[bytes] = []
    for name, value in headers:
        parts.append(b"\r\n")
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
    return b"".join(parts)
