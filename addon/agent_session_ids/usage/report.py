"""The usage report: reads the ledger the proxy writes and sums it per session, day, week, month,
model, project or agent, the views people know from ccusage, with what the gateway billed.

    agent-session-ids report [--by session|day|week|month|model|project|agent] [--breakdown]
                             [--since 2h|7d|2026-11-21] [--until ...] [--timezone Europe/Berlin]
                             [--session ID] [--compact] [--json] [--html FILE] [--file LEDGER]

(also ``agent-session-ids-report`` and ``python -m agent_session_ids.report``). The ledger defaults to
``~/.mitmproxy/agent-session-ids/usage.jsonl`` and its rotated files.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta, tzinfo

from ..shown import shown, shown_lines
from . import ledger
from .live_view import cost_text, cut, short_model
from .totals import (
    FLIPS_LISTED,
    FlipWatch,
    Totals,
    duration,
    hit_ratio,
    money,
    percent,
    providers_text,
    sent_change_lines,
    table,
    tokens,
)

DEFAULT_LEDGER = ledger.DEFAULT_PATH
COMPACT_BELOW = 100  # a terminal narrower than this gets the compact table
_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def span_seconds(text: str) -> float | None:
    """``2h``, ``30m``, ``7d``, ``1w`` in seconds; None if it is not a span."""
    m = _SPAN.match(text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def zone_of(name: str | None) -> tzinfo | None:
    """An IANA time zone; None for the local one."""
    if not name:
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"--timezone {name!r} is no IANA time zone: give one such as Europe/Berlin or UTC "
                         "(on Windows: pip install tzdata)") from None


def parse_moment(text: str, now: float | None = None, zone: tzinfo | None = None, option: str = "--since",
                 end_of_day: bool = False) -> float:
    """A span back from now (``2h``, ``7d``), or a date or date-time (``2026-11-21``,
    ``2026-11-21T10:00``) in `zone` (local by default), or an ISO time with its own zone. With
    `end_of_day`, a bare date means the end of that day (``--until 2026-11-21`` includes it)."""
    now = time.time() if now is None else now
    seconds = span_seconds(text)
    if seconds is not None:
        return now - seconds
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{option} {text!r}: give a span such as 2h, 30m, 7d, or a date such as 2026-11-21") \
            from None
    if end_of_day and len(text.strip()) == 10:
        moment += timedelta(days=1, microseconds=-1)
    if moment.tzinfo is None and zone is not None:
        moment = moment.replace(tzinfo=zone)
    return moment.timestamp()  # naive: local time


def _local(epoch: float, zone: tzinfo | None) -> datetime:
    return datetime.fromtimestamp(epoch, zone) if zone is not None else datetime.fromtimestamp(epoch)


def day_of(epoch: float, zone: tzinfo | None = None) -> str:
    return _local(epoch, zone).strftime("%Y-%m-%d")


def week_of(epoch: float, zone: tzinfo | None = None) -> str:
    """The Monday the (ISO) week starts on."""
    day: date = _local(epoch, zone).date()
    return (day - timedelta(days=day.weekday())).isoformat()


def month_of(epoch: float, zone: tzinfo | None = None) -> str:
    return _local(epoch, zone).strftime("%Y-%m")


def when(epoch: float, zone: tzinfo | None = None) -> str:
    return _local(epoch, zone).strftime("%Y-%m-%d %H:%M:%S")


def _model(record: dict) -> str:
    return str(record.get("model") or record.get("served_model") or "(unknown)")


# what each --by groups on: (record, epoch, zone) -> the group's key
BUCKETS: dict[str, Callable[[dict, float, tzinfo | None], str]] = {
    "session": lambda r, epoch, zone: str(r.get("root") or r.get("session") or "?"),  # a tree, by its root
    "day": lambda r, epoch, zone: day_of(epoch, zone),
    "week": lambda r, epoch, zone: week_of(epoch, zone),
    "month": lambda r, epoch, zone: month_of(epoch, zone),
    "model": lambda r, epoch, zone: _model(r),
    "project": lambda r, epoch, zone: str(r.get("cwd") or "(unknown)"),
    "agent": lambda r, epoch, zone: str(r.get("agent") or "(unknown)"),
}
TITLES = {"session": "SESSION", "day": "DAY", "week": "WEEK OF", "month": "MONTH", "model": "MODEL",
          "project": "PROJECT", "agent": "AGENT"}


def group(records: list[dict], by: str = "session", keep_turns: bool = False, zone: tzinfo | None = None,
          breakdown: bool = False, tree: bool = False) -> list[Totals]:
    """Totals per group, newest activity first. Provider flips are found per session, in time order,
    and listed in the group of the turn that flipped. With `breakdown`, each group's
    ``breakdown`` holds its Totals per model. By session, a group is a tree (a root session, its
    sub-agents and child sessions); with `tree`, its ``tree`` holds each branch's own Totals."""
    key_of = BUCKETS.get(by)
    if key_of is None:
        raise ValueError(f"cannot group by {by!r}")
    groups: dict[str, Totals] = {}
    watch = FlipWatch(limit=10**9)
    for record in sorted(records, key=lambda r: r["_epoch"]):
        epoch = record["_epoch"]
        session = str(record.get("session") or "?")
        key = key_of(record, epoch, zone)
        totals = groups.get(key)
        if totals is None:
            totals = groups[key] = Totals(key)
        totals.add(record, epoch, keep_turns)
        if tree and by == "session":
            branch = (session, record.get("subagent") or None)
            if branch != (key, None):
                part = totals.tree.get(branch)
                if part is None:
                    part = totals.tree[branch] = Totals(session)
                part.add(record, epoch)
        if breakdown:
            model = _model(record)
            part = totals.breakdown.get(model)
            if part is None:
                part = totals.breakdown[model] = Totals(model)
            part.add(record, epoch)
        flip = watch.see(session, record.get("provider"), epoch)
        if flip is not None:
            flip.update(session=session, label=record.get("label") or session, ts=record.get("ts"),
                        when=when(epoch, zone))
            totals.flips.append(flip)
    if tree and by == "session":
        # a child session's parent (a sub-agent's own "parent" is the session it runs in)
        parents = {str(r.get("session")): r.get("parent") for r in records if r.get("parent") and not r.get("subagent")}
        for g in groups.values():
            for (session, subagent), part in g.tree.items():
                part.depth = _depth(session, g.key, parents) + (1 if subagent and subagent != session else 0)
                part.parent = session if subagent and subagent != session else parents.get(session)
                if subagent and subagent != session:
                    part.label = f"sub-agent {subagent}"
    return sorted(groups.values(), key=lambda g: -(g.last or 0))


def _depth(session: str, root: str, parents: dict) -> int:
    depth, at = 0, session
    while at != root and at in parents and depth < 16:
        at, depth = parents[at], depth + 1
    return depth if at == root else max(1, depth)


def branches_of(g: Totals) -> list[Totals]:
    """A tree's branches, in the order they began."""
    return sorted(g.tree.values(), key=lambda part: (part.first or 0, part.key))


def session_turns(records: list[dict], wanted: str) -> list[dict]:
    """One session's records in time order: the session named by its id, or else by its label."""
    by_id = [r for r in records if r.get("session") == wanted]
    return sorted(by_id or [r for r in records if r.get("label") == wanted], key=lambda r: r["_epoch"])


def _figures(g: Totals) -> dict:
    return {**g.as_dict(), "first": ledger.timestamp(g.first) if g.first is not None else None,
            "last": ledger.timestamp(g.last) if g.last is not None else None}


def as_json(groups: list[Totals], by: str) -> list[dict]:
    out = []
    for g in groups:
        item: dict = {by: g.key}
        if by == "session":
            item.update(label=g.label, agent=g.agent, cwd=g.cwd)
        item.update(_figures(g))
        if by == "session":
            item["models"] = dict(g.models)
        if by == "session":
            item["branch_count"] = len(g.branches)  # sub-agents and child sessions counted in
        if g.tree:
            item["branches"] = [{"session": part.key, "subagent": subagent, "parent": part.parent,
                                 "label": part.label, "depth": part.depth, **_figures(part)}
                                for (_, subagent), part in sorted(g.tree.items(), key=lambda kv: kv[1].first or 0)]
        if g.breakdown:
            item["breakdown"] = [{"model": m.key, **_figures(m)} for m in _by_cost(g.breakdown)]
        item["flips"] = [{k: f[k] for k in ("ts", "session", "from", "to", "idle_s")} for f in g.flips]
        item["sent_changes"] = [{"ts": ledger.timestamp(c["epoch"]), "target": c.get("target"), "from": c.get("from"),
                                 "to": c.get("to")} for c in g.sent_changes]
        out.append(item)
    return out


def _by_cost(parts: dict[str, Totals]) -> list[Totals]:
    return sorted(parts.values(), key=lambda m: (-(m.cost or 0), -m.requests, m.key))


def _total(groups: list[Totals]) -> Totals:
    total = Totals("TOTAL")
    for g in groups:
        total.merge(g)
    total.label, total.agent = "TOTAL", ""
    return total


def _name(g: Totals, by: str) -> str:
    if by == "session":
        return (g.label or g.key) + (f" +{len(g.branches)}" if g.branches else "")
    if by == "project" and g.key.startswith(os.path.expanduser("~") + os.sep):
        return "~" + g.key[len(os.path.expanduser("~")):]
    return g.key


def _cut_left(text: str, width: int) -> str:
    """A path keeps its end: `…/src/app` (controls shown as escapes first, shown.py)."""
    text = shown(text)
    return text if len(text) <= width else "…" + text[len(text) - width + 1:]


def compact_table(groups: list[Totals], by: str, width: int = 24) -> list[str]:
    """The table for a terminal under 100 columns: name, requests, input, cache hit, output, cost."""
    lines = [f"{TITLES[by]:<{width}} {'REQS':>5} {'INPUT':>8} {'HIT':>4} {'OUTPUT':>7} {'COST':>10}"]
    for g in groups:
        lines.append(_compact_row(_name(g, by), g, width))
        for part in branches_of(g):
            lines.append(_compact_row(_branch_name(part), part, width))
        for m in _by_cost(g.breakdown):
            lines.append(_compact_row("  └ " + short_model(m.key), m, width))
        for flip in g.flips[-FLIPS_LISTED:]:
            lines.append(f"  ⚠ flip {flip.get('when', '')}: {flip['from']} → {flip['to']}")
        if len(g.flips) > FLIPS_LISTED:
            lines.append(f"  ⚠ {len(g.flips) - FLIPS_LISTED} earlier flips (--json lists all)")
        lines += ["  " + text for text in sent_change_lines(g)]
    return lines


def _branch_name(part: Totals) -> str:
    return "  " * part.depth + "└ " + (part.label or part.key)


def _compact_row(name: str, g: Totals, width: int) -> str:
    name = _cut_left(name, width) if "/" in name and not name.startswith("  └") else (
        name if len(name) <= width else name[: width - 1] + "…")
    return (f"{name:<{width}} {g.requests:>5} {tokens(g.sums['input_tokens']):>8} {percent(g.cache_hit_ratio):>4} "
            f"{tokens(g.sums['output_tokens']):>7} {cost_text(g):>10}")


def text(groups: list[Totals], by: str, skipped: str = "", compact: bool = False) -> str:
    """`skipped`: what the reading passed over, as ledger.Tally.said() says it."""
    if not groups:
        return "no usage recorded" + (f" ({skipped})" if skipped else "")
    total = _total(groups)
    if compact:
        lines = compact_table(groups, by) + compact_table([total], by)[1:]
    else:
        # the name column fits the branches' names (up to 48), so a tree reads whole
        width = min(48, max([30] + [len(_branch_name(part)) for g in groups for part in g.tree.values()]))
        lines = table([], TITLES[by], width)
        for g in groups:
            lines += table([g], TITLES[by], width, name_of=lambda g: _cut_left(_name(g, by), width))[1:]
            if g.tree:
                lines += table(branches_of(g), TITLES[by], width, name_of=_branch_name)[1:]
            if g.breakdown:
                lines += table(_by_cost(g.breakdown), TITLES[by], width, name_of=lambda m: "  └ " + m.key)[1:]
        lines += table([total], TITLES[by], width, name_of=lambda g: "TOTAL")[1:]
    notes = []
    if any(g.cost is not None and g.cost_requests < g.requests for g in groups):
        notes.append("* cost known for only some of the requests (the gateway did not report it for the others)")
    if skipped:
        notes.append(f"{skipped} (a partial last line is normal after a kill)")
    return "\n".join(lines + notes)


def turn_rows(turns: list[dict], zone: tzinfo | None = None) -> list[dict]:
    """One session's turns, each with its time, model, provider, tokens, cache hit and cost, the
    sub-agent that made it (if any), whether its provider differs from the previous turn's, and
    what it sent differently from its branch's previous turn (a rename)."""
    rows, previous = [], None
    for r in turns:
        provider = r.get("provider") if isinstance(r.get("provider"), str) else None
        ratio = hit_ratio(r)
        rows.append({"ts": r.get("ts"), "when": when(r["_epoch"], zone), "model": r.get("model"),
                     "served_model": r.get("served_model"), "provider": provider,
                     **{k: r.get(k) for k in ("input_tokens", "cache_read_tokens", "cache_write_tokens",
                                              "output_tokens", "cost", "status")},
                     "cache_hit_ratio": round(ratio, 4) if ratio is not None else None,
                     "subagent": r.get("subagent") or None,
                     "provider_flip": bool(provider and previous and provider != previous),
                     "sent_changed": [c for c in r.get("sent_changed") or () if isinstance(c, dict)]})
        previous = provider or previous
    return rows


def session_text(turns: list[dict], zone: tzinfo | None = None, compact: bool = False) -> str:
    first = turns[0]
    sums = Totals(str(first.get("session")))
    for r in turns:
        sums.add(r, r["_epoch"])
    head = [f"session {sums.label or sums.key} ({sums.agent or '-'}) · {sums.key}",
            f"project {sums.cwd or '-'} · {len(turns)} turns · cache hit {percent(sums.cache_hit_ratio)} · "
            f"cost {cost_text(sums)}"]
    model_w = 18 if compact else 28
    rows = turn_rows(turns, zone)
    # the sub-agent column only where a sub-agent made turns (the line stays under 100 columns)
    sub_w = 10 if any(row["subagent"] for row in rows) else 0
    sub_title = f"{'SUB-AGENT':<{sub_w}} " if sub_w else ""
    lines = [f"{'TIME':<8} {sub_title}{'MODEL':<{model_w}} {'PROVIDER':<12} {'INPUT':>7} {'CACHED':>7} {'HIT':>4} "
             f"{'OUTPUT':>6} {'COST':>9}"]
    days = sorted({row["when"][:10] for row in rows})
    day = None
    for row in rows:
        if len(days) > 1 and row["when"][:10] != day:  # the rows give the time only: each day gets a line
            day = row["when"][:10]
            lines.append(f"on {day}")
        model = short_model(row["model"] or row["served_model"])
        provider = ("⚠" if row["provider_flip"] else "") + (row["provider"] or "-")
        sub = f"{cut(row['subagent'] or '-', sub_w):<{sub_w}} " if sub_w else ""
        lines.append(f"{row['when'][11:]:<8} {sub}{model[:model_w]:<{model_w}} {provider[:12]:<12} "
                     f"{tokens(row['input_tokens']):>7} {tokens(row['cache_read_tokens']):>7} "
                     f"{percent(row['cache_hit_ratio']):>4} {tokens(row['output_tokens']):>6} "
                     f"{money(row['cost']):>9}")
        lines += [f"{'':<8} ↻ sent {c.get('target')} changed: {c.get('from')} → {c.get('to')}"
                  for c in row["sent_changed"]]
    note = [f"times on {days[0]}" if len(days) == 1 else f"times from {days[0]} to {days[-1]}"]
    return "\n".join(head + [""] + lines + note)


def session_json(turns: list[dict], zone: tzinfo | None = None) -> dict:
    sums = Totals(str(turns[0].get("session")))
    for r in turns:
        sums.add(r, r["_epoch"])
    return {"session": sums.key, "label": sums.label, "agent": sums.agent, "cwd": sums.cwd, **_figures(sums),
            "turns": turn_rows(turns, zone)}


# -- HTML ------------------------------------------------------------------------------------------


def _chart(g: Totals, width: int = 560, height: int = 90) -> str:
    """Inline SVG: the cache-hit ratio of each turn; a red line marks a provider flip."""
    pad_l, pad_b, pad_t = 34, 14, 6
    turns = g.turns
    n = len(turns)
    inner_w, inner_h = width - pad_l - 8, height - pad_b - pad_t

    def x(i: int) -> float:
        return pad_l + (inner_w * i / (n - 1) if n > 1 else inner_w / 2)

    def y(ratio: float) -> float:
        return pad_t + inner_h * (1 - ratio)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="cache-hit ratio per turn">']
    for level in (0, 0.5, 1):
        parts.append(f'<line x1="{pad_l}" y1="{y(level):.1f}" x2="{width - 8}" y2="{y(level):.1f}" class="grid"/>'
                     f'<text x="{pad_l - 4}" y="{y(level) + 3:.1f}" class="axis" text-anchor="end">{level:.0%}</text>')
    previous = None
    points = []
    for i, (epoch, ratio, provider) in enumerate(turns):
        if provider and previous and provider != previous:
            parts.append(f'<line x1="{x(i):.1f}" y1="{pad_t}" x2="{x(i):.1f}" y2="{pad_t + inner_h}" class="flip">'
                         f'<title>{html.escape(previous)} → {html.escape(provider)}</title></line>')
        previous = provider or previous
        if ratio is not None:
            points.append((x(i), y(ratio), ratio, epoch, provider))
    if len(points) > 1:
        parts.append('<polyline class="hit" points="' + " ".join(f"{px:.1f},{py:.1f}" for px, py, *_ in points) + '"/>')
    for px, py, ratio, epoch, provider in points:
        parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" class="dot"><title>'
                     f'{html.escape(when(epoch))}: {ratio:.0%}{" · " + html.escape(provider) if provider else ""}'
                     f'</title></circle>')
    parts.append(f'<text x="{pad_l}" y="{height - 2}" class="axis">turn 1</text>'
                 f'<text x="{width - 8}" y="{height - 2}" class="axis" text-anchor="end">turn {n}</text></svg>')
    return "".join(parts)


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:20px}h2{font-size:15px;margin:22px 0 4px}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 9px;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child,td.l,th.l{text-align:left}th{background:#f4f4f4}
.grid{stroke:#e3e3e3}.axis{font-size:10px;fill:#777}.hit{fill:none;stroke:#2a7ae2;stroke-width:1.5}
.dot{fill:#2a7ae2}.flip{stroke:#d33;stroke-width:1.5;stroke-dasharray:3 2}.warn{color:#b00}.meta{color:#666}
tr.part td{color:#555;font-size:13px}
"""


def _html_row(name: str, g: Totals, by: str, part: bool = False) -> str:
    esc = html.escape
    return (f"<tr{' class=part' if part else ''}><td>{esc(name)}</td><td class=l>{esc(g.agent or '-')}</td>"
            f"<td>{g.requests}</td><td>{tokens(g.sums['input_tokens'])}</td>"
            f"<td>{tokens(g.sums['cache_read_tokens'])}</td><td>{percent(g.cache_hit_ratio)}</td>"
            f"<td>{tokens(g.sums['cache_write_tokens'])}</td><td>{tokens(g.sums['output_tokens'])}</td>"
            f"<td>{esc(cost_text(g))}</td><td class=l>{esc(providers_text(g.providers))}</td>"
            f"<td>{len(g.flips) or ''}</td></tr>")


def _page(title: str, body: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>" + "\n".join(body) + "</body></html>\n")


def _span_text(since: float | None, until: float | None, zone: tzinfo | None) -> str:
    parts = [f"since {when(since, zone)}" if since is not None else "all recorded"]
    if until is not None:
        parts.append(f"until {when(until, zone)}")
    return " ".join(parts)


def as_html(groups: list[Totals], by: str, since: float | None = None, until: float | None = None,
            zone: tzinfo | None = None) -> str:
    esc = html.escape
    rows = []
    for g in groups:
        rows.append(_html_row(_name(g, by), g, by))
        rows += [_html_row(_branch_name(part), part, by, part=True) for part in branches_of(g)]
        rows += [_html_row("└ " + m.key, m, by, part=True) for m in _by_cost(g.breakdown)]
    if groups:
        rows.append(_html_row("TOTAL", _total(groups), by))
    body = [f"<h1>Agent session usage</h1><p class=meta>{esc(_span_text(since, until, zone))}, by {esc(by)}; "
            f"{sum(g.requests for g in groups)} requests. Made {esc(when(time.time(), zone))}.</p>",
            "<table><tr><th>" + esc(by) + "</th><th class=l>agent</th><th>requests</th><th>input</th><th>cached</th>"
            "<th>hit</th><th>cache write</th><th>output</th><th>cost</th><th class=l>providers</th><th>flips</th></tr>",
            *rows, "</table>"]
    if by == "session":
        for g in groups:
            body.append(f"<h2>{esc(g.label or g.key)}</h2><p class=meta>{esc(g.key)} · {esc(g.cwd or '-')} · "
                        f"{g.requests} turns · {esc(when(g.first or 0, zone))} – {esc(when(g.last or 0, zone))} · "
                        f"cache hit {percent(g.cache_hit_ratio)}</p>")
            body.append(_chart(g))
            for f in g.flips:
                body.append(f"<p class=warn>⚠ provider flip at {esc(f['when'])}: {esc(f['from'])} → "
                            f"{esc(f['to'])} after {esc(duration(f['idle_s']))} idle</p>")
            body += [f"<p class=meta>{esc(text)}</p>" for text in sent_change_lines(g)]
    return _page("Agent session usage", body)


def session_html(turns: list[dict], zone: tzinfo | None = None) -> str:
    esc = html.escape
    data = session_json(turns, zone)
    rows = []
    for row in data["turns"]:
        changed = "".join(f"<br><span class=meta>↻ sent {esc(str(c.get('target')))}: {esc(str(c.get('from')))} → "
                          f"{esc(str(c.get('to')))}</span>" for c in row["sent_changed"])
        rows.append(f"<tr><td>{esc(row['when'])}{changed}</td><td class=l>{esc(row['subagent'] or '-')}</td>"
                    f"<td class=l>{esc(str(row['model'] or row['served_model'] or '-'))}"
                    f"</td><td class=l>{'⚠ ' if row['provider_flip'] else ''}{esc(row['provider'] or '-')}</td>"
                    f"<td>{tokens(row['input_tokens'])}</td><td>{tokens(row['cache_read_tokens'])}</td>"
                    f"<td>{percent(row['cache_hit_ratio'])}</td><td>{tokens(row['output_tokens'])}</td>"
                    f"<td>{esc(money(row['cost']))}</td></tr>")
    title = data["label"] or data["session"]
    body = [f"<h1>Session {esc(title)}</h1><p class=meta>{esc(data['session'])} · {esc(data['agent'] or '-')} · "
            f"{esc(data['cwd'] or '-')} · {len(turns)} turns · cache hit {percent(data['cache_hit_ratio'])} · "
            f"cost {esc(money(data['cost']))}</p>",
            "<table><tr><th>time</th><th class=l>sub-agent</th>"
            "<th class=l>model</th><th class=l>provider</th><th>input</th><th>cached</th>"
            "<th>hit</th><th>output</th><th>cost</th></tr>", *rows, "</table>"]
    return _page(f"Session {title}", body)


# -- the command -----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        print(f"{self.prog}: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def _compact_wanted(args) -> bool:
    if args.compact:
        return True
    return sys.stdout.isatty() and shutil.get_terminal_size((120, 24)).columns < COMPACT_BELOW


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="agent-session-ids report",
        description="Usage, cache hits and what the gateway billed, per agent session, day, week, month, model, "
                    "project or agent, from the ledger agent-session-ids writes.")
    parser.add_argument("--by", choices=tuple(BUCKETS), default="session",
                        help="group by session (default), day, week (from Monday), month, model, project (the "
                             "session's folder) or agent")
    parser.add_argument("--breakdown", action="store_true", help="each group's figures per model, under it")
    parser.add_argument("--tree", action="store_true", help="by session: each sub-agent's and child session's own "
                                                            "figures, under its root")
    parser.add_argument("--session", metavar="ID", help="one session's turns (its id, or its label)")
    parser.add_argument("--since", help="only turns since then: 2h, 30m, 7d, 1w, or a date such as 2026-11-21")
    parser.add_argument("--until", help="only turns until then (a bare date includes that day)")
    parser.add_argument("--timezone", metavar="ZONE", help="the IANA time zone of days, weeks, months and bare "
                                                           "dates (default: the local one)")
    parser.add_argument("--compact", action="store_true", help="the narrow table (the default under 100 columns)")
    parser.add_argument("--json", action="store_true", help="one JSON object per group")
    parser.add_argument("--html", metavar="FILE", help="write a one-page HTML report (inline SVG, no scripts)")
    parser.add_argument("--file", metavar="LEDGER", action="append",
                        help=f"the ledger (default {DEFAULT_LEDGER}, or $AGENT_SESSION_IDS_USAGE); give it "
                             "again to read several in one report (another machine's, say)")
    args = parser.parse_args(argv)
    paths = [ledger.path_of(given) for given in args.file or [None]]
    try:
        zone = zone_of(args.timezone)
        since = parse_moment(args.since, zone=zone) if args.since else None
        until = parse_moment(args.until, zone=zone, option="--until", end_of_day=True) if args.until else None
    except ValueError as e:
        parser.error(str(e))
    missing = [path for path in paths if not ledger.files(path)]
    if missing:
        print(f"no usage ledger at {missing[0]}: nothing was recorded yet (the proxy writes it when a rule rewrites a "
              "request; see session_usage_file)", file=sys.stderr)
        return 1
    reading = ledger.Reading()  # one count over all the files
    records = [record for path in paths for record in reading.records(path, since, until)]
    skipped = reading.said()
    if skipped and (args.json or args.html or args.session):  # text views say it themselves
        print(f"agent-session-ids report: {skipped}", file=sys.stderr)
    if args.session:
        return _one_session(args, records, zone)
    groups = group(records, args.by, keep_turns=bool(args.html), zone=zone, breakdown=args.breakdown, tree=args.tree)
    if args.html and not _write(args.html, as_html(groups, args.by, since, until, zone)):
        return 1
    if args.json:
        print(json.dumps(as_json(groups, args.by), indent=2, ensure_ascii=False))
    elif not args.html:
        print(shown_lines(text(groups, args.by, skipped, compact=_compact_wanted(args)).split("\n")))
    else:
        print(f"wrote {args.html}: {len(groups)} {args.by} groups, {len(records)} requests")
    return 0


def _write(path: str, page: str) -> bool:
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as e:
        print(f"agent-session-ids report: cannot write --html {path}: {e.strerror or e}", file=sys.stderr)
        return False
    return True


def _one_session(args, records: list[dict], zone: tzinfo | None) -> int:
    turns = session_turns(records, args.session)
    if not turns:
        print(f"agent-session-ids report: no turns recorded for session {args.session!r} (see the sessions with "
              "agent-session-ids report)", file=sys.stderr)
        return 1
    if args.html and not _write(args.html, session_html(turns, zone)):
        return 1
    if args.json:
        print(json.dumps(session_json(turns, zone), indent=2, ensure_ascii=False))
    elif not args.html:
        print(shown_lines(session_text(turns, zone, compact=_compact_wanted(args)).split("\n")))
    else:
        print(f"wrote {args.html}: {len(turns)} turns")
    return 0


def run(argv: list[str] | None = None) -> int:
    """main(), quiet when its reader goes away (``... | head``)."""
    try:
        return main(argv)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(run())
