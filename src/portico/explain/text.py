"""An `Explanation` as text for people: one numbered step per phase. *pure*

Owns the layout only; every fact comes from the `Explanation` (the same one `--json` prints).
"""

from __future__ import annotations

from portico.explain.model import Explanation, PoolStep

__all__ = ["render_text"]


def render_text(explanation: Explanation) -> str:
    """The explanation as lines of text, ending with a newline."""
    e = explanation
    lines = [f"{e.request.method} {e.request.url}  (client {e.request.client_ip})"]
    extra = [h for h in e.request.headers if not h.lower().startswith("host:")]
    lines.extend(f"  {h}" for h in extra)
    lines.append("")
    lines.append(f"1. listener {e.listener.name}: {e.listener.reason}")
    lines.append("2. filters:" if e.filters else "2. filters: none on this listener")
    for f in e.filters:
        lines.append(f"   {f.name}: {f.verdict} - {f.detail}")
    if e.routes:
        lines.append("3. routes, in order (first match wins):")
        for r in e.routes:
            mark = "MATCH" if r.matched else "no   "
            where = f"[{r.index}]" if r.index >= 0 else "[default]"
            lines.append(f"   {mark} {where} {r.name} -> {r.outcome}")
            if r.matched and r.index >= 0:
                for c in r.conditions:
                    lines.append(f"         {c.condition}: yes, {c.actual}")
            elif not r.matched:
                lines.append(f"         {r.reason}")
    if e.answer is not None:
        lines.append(f"=> Portico answers itself: {e.answer}")
        return _end(lines, e)
    if e.upstream_target is not None and e.upstream_target != e.request.target:
        lines.append(f"   the server gets the target {e.upstream_target}")
    for edit in e.request_headers:
        lines.append(f"   request header: {edit}")
    for edit in e.response_headers:
        lines.append(f"   response header: {edit}")
    for n, pool in enumerate(e.pools, start=4):
        lines.extend(_pool(n, pool))
    if e.server is not None:
        lines.append(f'=> pool "{e.pool}", server "{e.server}"')
    else:
        lines.append(f"=> {e.pools[-1].outcome}")
    return _end(lines, e)


def _pool(n: int, pool: PoolStep) -> list[str]:
    lines = [f'{n}. pool "{pool.name}", policy {pool.policy}: {pool.how}']
    if pool.key is not None:
        lines.append(f"   hash key: {pool.key}")
    if pool.sticky is not None:
        lines.append(f"   persistence: {pool.sticky}")
    has_score = any(s.score is not None for s in pool.servers)
    has_chance = any(s.chance is not None for s in pool.servers)
    header = "   server         weight  in_flight"
    if has_score:
        header += f"  {pool.score:>12}" if len(pool.score) <= 12 else "         score"
    if has_chance:
        header += "  chance"
    lines.append(header)
    for s in pool.servers:
        row = f"   {'*' if s.chosen else ' '} {s.name:<12} {s.weight:>6}  {s.in_flight:>9}"
        if has_score:
            row += f"  {s.score:>12.4g}" if s.score is not None else "  " + " " * 12
        if has_chance:
            row += f"  {s.chance:>6.1%}" if s.chance is not None else "        "
        status = "candidate" if s.candidate else "not a candidate"
        if s.reasons:
            status += ": " + "; ".join(s.reasons)
        lines.append(f"{row}  {status}")
    if has_score and len(pool.score) > 12:
        lines.append(f"   score: {pool.score}")
    lines.append(f"   -> {pool.outcome}")
    return lines


def _end(lines: list[str], e: Explanation) -> str:
    lines.append(f"debug header: {e.short}")
    lines.extend(f"note: {note}" for note in e.notes)
    return "\n".join(lines) + "\n"
