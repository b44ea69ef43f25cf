"""Which content coding a client gets: `Accept-Encoding` against what Portico offers. *pure*

Owns the reading of `Accept-Encoding` (RFC 9110 §12.5.3: codings with q-values, `*`,
`identity`) and the choice among the codings on offer. Never looks at a response (see
`portico.compression.policy`) and never compresses anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

__all__ = ["CODINGS", "accepted_codings", "choose_coding"]

CODINGS: Final = ("zstd", "br", "gzip")
"""The codings Portico can produce, in its default order of preference."""

_ALIASES: Final = {"x-gzip": "gzip"}  # RFC 9110 §8.4.1.3: a recipient treats x-gzip as gzip


def _qvalue(text: str) -> float | None:
    """A q-value (RFC 9110 §12.4.2: 0 to 1, three decimals at most); None when malformed."""
    text = text.strip()
    if not text or len(text) > 5 or not all(c.isdigit() or c == "." for c in text):
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None


def accepted_codings(fields: Iterable[bytes]) -> dict[str, float] | None:
    """The codings the `Accept-Encoding` field lines `fields` name, with their weights
    (lower-cased; `x-gzip` read as `gzip`; the highest weight when one is listed twice).

    Returns None when there is no field at all (the client said nothing), and an empty dict
    for an empty field (identity only). A member with a malformed weight is left out: it is
    safer to ignore it than to guess.
    """
    seen = False
    weights: dict[str, float] = {}
    for line in fields:
        seen = True
        for member in line.decode("latin-1").split(","):
            coding, _, params = member.partition(";")
            coding = coding.strip().lower()
            if not coding:
                continue
            weight: float | None = 1.0
            for param in params.split(";"):
                name, _, value = param.partition("=")
                if name.strip().lower() == "q":
                    weight = _qvalue(value)
            if weight is None:
                continue
            coding = _ALIASES.get(coding, coding)
            weights[coding] = max(weight, weights.get(coding, 0.0))
    return weights if seen else None


def choose_coding(accepted: dict[str, float] | None, offered: Sequence[str]) -> str | None:
    """The coding of `offered` to use for a client that accepts `accepted` (from
    `accepted_codings`), or None for identity (no coding).

    A coding the client did not name gets the weight of `*`, if it sent one; weight 0 means
    "not acceptable". The highest weight wins; ties go to the earlier coding in `offered` (the
    configured order). `identity` competes too: named with a higher weight than every coding,
    identity wins; not named (nor `*`), it loses every tie. No header at all: identity (as
    NGINX and Apache do, though RFC 9110 allows any coding: old clients send none).
    """
    if not accepted:
        return None
    star = accepted.get("*")
    best: str | None = None
    best_weight = 0.0
    for coding in offered:
        weight = accepted.get(coding, star)
        if weight is not None and weight > best_weight:
            best, best_weight = coding, weight
    if best is None:
        return None
    identity = accepted.get("identity", star)
    if identity is not None and identity > best_weight:
        return None
    return best
