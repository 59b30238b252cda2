"""The per-session view of `top`, of sessionids.sessions and of the proxy's summary on exit: one
row per session, newest activity first, and a totals line. Pure: it takes Totals and a width.

The columns fit 80 terminal columns: the fixed ones first, then the label, project, model and
provider share what is left (each cut with "…").
"""

from __future__ import annotations

import os

from ..shown import shown
from ..view.units import duration, money, percent, tokens
from .totals import Totals

FLIP = "⚠"
# (title, width, align): the columns of fixed width
FIXED = (
    ("AGENT", 7, "<"),
    ("REQS", 4, ">"),
    ("AGO", 4, ">"),
    ("INPUT", 6, ">"),
    ("HIT", 4, ">"),
    ("SESS", 4, ">"),
    ("COST", 8, ">"),
)
# (title, share of the room left, fewest columns): the columns that take what is left
FLEXIBLE = (("SESSION", 3, 8), ("PROJECT", 2, 7), ("MODEL", 3, 9), ("PROVIDER", 2, 9))
ORDER = ("AGENT", "SESSION", "PROJECT", "REQS", "AGO", "INPUT", "HIT", "SESS", "COST", "MODEL", "PROVIDER")


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def project(cwd: str | None) -> str:
    """The session's folder by its last name."""
    if not cwd:
        return "-"
    return os.path.basename(cwd.rstrip("/\\")) or cwd


def ago(seconds: float | None) -> str:
    """`42s`, `12m`, `3h`, `5d`: the time since the latest turn, in four columns."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def short_model(model: str | None) -> str:
    """`anthropic/claude-sonnet-4` as `claude-sonnet-4`: the vendor is the provider column's."""
    return model.rsplit("/", 1)[-1] if model else "-"


def widths(width: int) -> dict[str, tuple[int, str]]:
    """Each column's width and alignment: the fewest columns each, then the room left by shares."""
    fixed = {name: (w, align) for name, w, align in FIXED}
    room = width - sum(w for _, w, _ in FIXED) - (len(ORDER) - 1) - sum(least for _, _, least in FLEXIBLE)
    shares = sum(share for _, share, _ in FLEXIBLE)
    flexible = {name: (least + max(0, room) * share // shares, "<") for name, share, least in FLEXIBLE}
    return {**fixed, **flexible}


def cut(text: str, width: int) -> str:
    """`text` in `width` columns, its end cut with "…", controls shown as escapes (shown.py)."""
    return shown(text, width)


def _line(cells: dict[str, str], cols: dict[str, tuple[int, str]]) -> str:
    parts = []
    for name in ORDER:
        w, align = cols[name]
        parts.append(f"{cut(cells.get(name, ''), w):{align}{w}}")
    return " ".join(parts).rstrip()


def cost_text(g: Totals) -> str:
    """The billed cost; a `*` when the gateway billed only some of the turns."""
    text = money(g.cost)
    return text + "*" if g.cost is not None and g.cost_requests < g.requests else text


def provider_text(g: Totals) -> str:
    """The latest turn's provider; ⚠ marks a session that changed provider (and lost its cache)."""
    name = g.last_provider or "-"
    return f"{FLIP}{name}" if g.flips or g.last_flipped else name


def session_text(g: Totals, width: int) -> str:
    """The label, and `+N` for the sub-agents and child sessions counted in (kept when it is cut)."""
    extra = f" +{len(g.branches)}" if g.branches else ""
    return cut(g.label or g.key, max(1, width - len(extra))) + extra


def row(g: Totals, now: float, session_width: int = 40) -> dict[str, str]:
    return {
        "AGENT": g.agent or "-",
        "SESSION": session_text(g, session_width),
        "PROJECT": project(g.cwd),
        "REQS": str(g.requests),
        "AGO": ago(now - g.last) if g.last is not None else "-",
        "INPUT": tokens(g.last_input),
        "HIT": percent(g.last_hit),
        "SESS": percent(g.cache_hit_ratio),
        "COST": cost_text(g),
        "MODEL": short_model(g.last_model),
        "PROVIDER": provider_text(g),
    }


def lines(sessions: list[Totals], now: float, width: int = 80, limit: int | None = None) -> list[str]:
    """The header, one row per session (newest activity first, at most `limit`), and the totals."""
    cols = widths(width)
    ordered = sorted(sessions, key=lambda g: -(g.last or 0))
    listed = ordered if limit is None else ordered[:limit]
    out = [_line({name: name for name in ORDER}, cols)]
    out += [_line(row(g, now, cols["SESSION"][0]), cols) for g in listed]
    if limit is not None and len(ordered) > limit:
        out.append(f"… and {len(ordered) - limit} more sessions")
    total = Totals("TOTAL")
    for g in ordered:
        total.merge(g)
    flips = sum(1 for g in ordered if g.flips or g.last_flipped)
    sessions_text = count(len(ordered), "session")
    if len(sessions_text) > cols["SESSION"][0]:
        sessions_text = f"{len(ordered)} sess."
    out.append(
        _line(
            {
                "AGENT": "TOTAL",
                "SESSION": sessions_text,
                "REQS": str(total.requests),
                "AGO": ago(now - total.last) if total.last is not None else "-",
                "INPUT": tokens(total.sums["input_tokens"]),
                "SESS": percent(total.cache_hit_ratio),
                "COST": cost_text(total),
                "PROVIDER": f"{FLIP}{flips} flip{'s' if flips > 1 else ''}" if flips else "",
            },
            cols,
        )
    )
    return out


def flip_lines(sessions: list[Totals]) -> list[str]:
    """Each session's latest provider flips, one line each (the view's ⚠ marks, spelt out)."""
    out = []
    for g in sorted(sessions, key=lambda g: -(g.last or 0)):
        for flip in g.flips:
            out.append(
                f"{FLIP} {g.label or g.key}: provider flip {flip.get('when', '')}: {flip['from']} → "
                f"{flip['to']} after {duration(flip['idle_s'])} idle"
            )
    return out
