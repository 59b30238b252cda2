"""The report as text: the table of groups (wide, or compact under 100 columns), the TOTAL row
and notes, and one session's turns. Every string from the ledger passes shown() (shown.py):
in the names here, and over the whole text in cli/report.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import tzinfo

from ..shown import shown
from ..view.units import duration, money, percent, tokens
from .grouping import Group, branch_name, branches_of, by_cost, grand_total, group_name, session_totals, turn_rows
from .live_view import cost_text, cut, short_model
from .totals import Totals

FLIPS_LISTED = 5  # per group in a text table, the latest
TITLES = {
    "session": "SESSION",
    "day": "DAY",
    "week": "WEEK OF",
    "month": "MONTH",
    "model": "MODEL",
    "project": "PROJECT",
    "agent": "AGENT",
}


def providers_text(providers: dict[str, int]) -> str:
    if not providers:
        return "-"
    return ", ".join(
        f"{name} ({n})" if len(providers) > 1 else name for name, n in sorted(providers.items(), key=lambda kv: -kv[1])
    )


def table(
    groups: list[Group], title: str = "SESSION", width: int = 30, name_of: Callable[[Group], str] | None = None
) -> list[str]:
    """The report's text table; `name_of` names a group's row (default: a session's label, else the key)."""
    lines = [
        f"{title:<{width}} {'AGENT':<8} {'REQS':>5} {'INPUT':>8} {'CACHED':>8} {'HIT':>4} "
        f"{'WRITE':>7} {'OUTPUT':>7} {'COST':>9}  PROVIDERS"
    ]
    for g in groups:
        name = name_of(g) if name_of is not None else (g.label or g.key if title == "SESSION" else g.key)
        name = shown(name, width)
        cost = money(g.cost)
        if g.cost is not None and g.cost_requests < g.requests:
            cost += "*"
        lines.append(
            f"{name:<{width}} {shown(g.agent or '-')[:8]:<8} {g.requests:>5} "
            f"{tokens(g.sums['input_tokens']):>8} {tokens(g.sums['cache_read_tokens']):>8} "
            f"{percent(g.cache_hit_ratio):>4} {tokens(g.sums['cache_write_tokens']):>7} "
            f"{tokens(g.sums['output_tokens']):>7} {cost:>9}  {providers_text(g.providers)}"
        )
        for flip in g.flips[-FLIPS_LISTED:]:
            lines.append(
                f"{'':<{width}} ⚠ provider flip {flip.get('when', '')}: {flip['from']} → {flip['to']} "
                f"after {duration(flip['idle_s'])} idle"
            )
        if len(g.flips) > FLIPS_LISTED:
            lines.append(f"{'':<{width}} ⚠ {len(g.flips) - FLIPS_LISTED} earlier provider flips (--json lists all)")
        lines += [f"{'':<{width}} {text}" for text in sent_change_lines(g)]
    return lines


def sent_change_lines(g: Totals) -> list[str]:
    """The turns where what was sent changed (a session renamed with session_rename follow)."""
    return [
        f"↻ sent {c.get('target')} changed {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(c['epoch']))}: "
        f"{c.get('from')} → {c.get('to')}"
        for c in g.sent_changes[-FLIPS_LISTED:]
    ]


def _cut_left(text: str, width: int) -> str:
    """A path keeps its end: `…/src/app` (controls shown as escapes first, shown.py)."""
    text = shown(text)
    return text if len(text) <= width else "…" + text[len(text) - width + 1 :]


def compact_table(groups: list[Group], by: str, width: int = 24) -> list[str]:
    """The table for a terminal under 100 columns: name, requests, input, cache hit, output, cost."""
    lines = [f"{TITLES[by]:<{width}} {'REQS':>5} {'INPUT':>8} {'HIT':>4} {'OUTPUT':>7} {'COST':>10}"]
    for g in groups:
        lines.append(_compact_row(group_name(g, by), g, width))
        for part in branches_of(g):
            lines.append(_compact_row(branch_name(part), part, width))
        for m in by_cost(g.breakdown):
            lines.append(_compact_row("  └ " + short_model(m.key), m, width))
        for flip in g.flips[-FLIPS_LISTED:]:
            lines.append(f"  ⚠ flip {flip.get('when', '')}: {flip['from']} → {flip['to']}")
        if len(g.flips) > FLIPS_LISTED:
            lines.append(f"  ⚠ {len(g.flips) - FLIPS_LISTED} earlier flips (--json lists all)")
        lines += ["  " + text for text in sent_change_lines(g)]
    return lines


def _compact_row(name: str, g: Group, width: int) -> str:
    name = (
        _cut_left(name, width)
        if "/" in name and not name.startswith("  └")
        else (name if len(name) <= width else name[: width - 1] + "…")
    )
    return (
        f"{name:<{width}} {g.requests:>5} {tokens(g.sums['input_tokens']):>8} {percent(g.cache_hit_ratio):>4} "
        f"{tokens(g.sums['output_tokens']):>7} {cost_text(g):>10}"
    )


def text(groups: list[Group], by: str, skipped: str = "", compact: bool = False) -> str:
    """`skipped`: what the reading passed over, as ledger.Tally.said() says it."""
    if not groups:
        return "no usage recorded" + (f" ({skipped})" if skipped else "")
    total = grand_total(groups)
    if compact:
        lines = compact_table(groups, by) + compact_table([total], by)[1:]
    else:
        # the name column fits the branches' names (up to 48), so a tree reads whole
        width = min(48, max([30] + [len(branch_name(part)) for g in groups for part in g.tree.values()]))
        lines = table([], TITLES[by], width)
        for g in groups:
            lines += table([g], TITLES[by], width, name_of=lambda g: _cut_left(group_name(g, by), width))[1:]
            if g.tree:
                lines += table(branches_of(g), TITLES[by], width, name_of=branch_name)[1:]
            if g.breakdown:
                lines += table(by_cost(g.breakdown), TITLES[by], width, name_of=lambda m: "  └ " + m.key)[1:]
        lines += table([total], TITLES[by], width, name_of=lambda g: "TOTAL")[1:]
    notes = []
    if any(g.cost is not None and g.cost_requests < g.requests for g in groups):
        notes.append("* cost known for only some of the requests (the gateway did not report it for the others)")
    if skipped:
        notes.append(f"{skipped} (a partial last line is normal after a kill)")
    return "\n".join(lines + notes)


def session_text(turns: list[dict], zone: tzinfo | None = None, compact: bool = False) -> str:
    sums = session_totals(turns)
    head = [
        f"session {sums.label or sums.key} ({sums.agent or '-'}) · {sums.key}",
        f"project {sums.cwd or '-'} · {len(turns)} turns · cache hit {percent(sums.cache_hit_ratio)} · "
        f"cost {cost_text(sums)}",
    ]
    model_w = 18 if compact else 28
    rows = turn_rows(turns, zone)
    # the sub-agent column only where a sub-agent made turns (the line stays under 100 columns)
    sub_w = 10 if any(row["subagent"] for row in rows) else 0
    sub_title = f"{'SUB-AGENT':<{sub_w}} " if sub_w else ""
    lines = [
        f"{'TIME':<8} {sub_title}{'MODEL':<{model_w}} {'PROVIDER':<12} {'INPUT':>7} {'CACHED':>7} {'HIT':>4} "
        f"{'OUTPUT':>6} {'COST':>9}"
    ]
    days = sorted({row["when"][:10] for row in rows})
    day = None
    for row in rows:
        if len(days) > 1 and row["when"][:10] != day:  # the rows give the time only: each day gets a line
            day = row["when"][:10]
            lines.append(f"on {day}")
        model = short_model(row["model"] or row["served_model"])
        provider = ("⚠" if row["provider_flip"] else "") + (row["provider"] or "-")
        sub = f"{cut(row['subagent'] or '-', sub_w):<{sub_w}} " if sub_w else ""
        lines.append(
            f"{row['when'][11:]:<8} {sub}{model[:model_w]:<{model_w}} {provider[:12]:<12} "
            f"{tokens(row['input_tokens']):>7} {tokens(row['cache_read_tokens']):>7} "
            f"{percent(row['cache_hit_ratio']):>4} {tokens(row['output_tokens']):>6} "
            f"{money(row['cost']):>9}"
        )
        lines += [
            f"{'':<8} ↻ sent {c.get('target')} changed: {c.get('from')} → {c.get('to')}" for c in row["sent_changed"]
        ]
    note = [f"times on {days[0]}" if len(days) == 1 else f"times from {days[0]} to {days[-1]}"]
    return "\n".join(head + [""] + lines + note)
