"""The report as one HTML page: the table of groups, and by session each session's cache-hit
ratio per turn as inline SVG, with its provider flips; or one session's turns. No scripts; every
string from the ledger is escaped."""

from __future__ import annotations

import html
import time
from datetime import tzinfo

from ..view.units import duration, money, percent, tokens
from .grouping import Group, branch_name, branches_of, by_cost, grand_total, group_name
from .live_view import cost_text
from .render_json import session_json
from .render_text import providers_text, sent_change_lines
from .timespec import when
from .totals import Totals


def _chart(g: Group, width: int = 560, height: int = 90) -> str:
    """Inline SVG: the cache-hit ratio of each turn; a red line marks a provider flip."""
    pad_l, pad_b, pad_t = 34, 14, 6
    turns = g.turns
    n = len(turns)
    inner_w, inner_h = width - pad_l - 8, height - pad_b - pad_t

    def x(i: int) -> float:
        return pad_l + (inner_w * i / (n - 1) if n > 1 else inner_w / 2)

    def y(ratio: float) -> float:
        return pad_t + inner_h * (1 - ratio)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="cache-hit ratio per turn">'
    ]
    for level in (0, 0.5, 1):
        parts.append(
            f'<line x1="{pad_l}" y1="{y(level):.1f}" x2="{width - 8}" y2="{y(level):.1f}" class="grid"/>'
            f'<text x="{pad_l - 4}" y="{y(level) + 3:.1f}" class="axis" text-anchor="end">{level:.0%}</text>'
        )
    previous = None
    points = []
    for i, (epoch, ratio, provider) in enumerate(turns):
        if provider and previous and provider != previous:
            parts.append(
                f'<line x1="{x(i):.1f}" y1="{pad_t}" x2="{x(i):.1f}" y2="{pad_t + inner_h}" class="flip">'
                f"<title>{html.escape(previous)} → {html.escape(provider)}</title></line>"
            )
        previous = provider or previous
        if ratio is not None:
            points.append((x(i), y(ratio), ratio, epoch, provider))
    if len(points) > 1:
        parts.append('<polyline class="hit" points="' + " ".join(f"{px:.1f},{py:.1f}" for px, py, *_ in points) + '"/>')
    for px, py, ratio, epoch, provider in points:
        parts.append(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" class="dot"><title>'
            f"{html.escape(when(epoch))}: {ratio:.0%}{' · ' + html.escape(provider) if provider else ''}"
            f"</title></circle>"
        )
    parts.append(
        f'<text x="{pad_l}" y="{height - 2}" class="axis">turn 1</text>'
        f'<text x="{width - 8}" y="{height - 2}" class="axis" text-anchor="end">turn {n}</text></svg>'
    )
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
    return (
        f"<tr{' class=part' if part else ''}><td>{esc(name)}</td><td class=l>{esc(g.agent or '-')}</td>"
        f"<td>{g.requests}</td><td>{tokens(g.sums['input_tokens'])}</td>"
        f"<td>{tokens(g.sums['cache_read_tokens'])}</td><td>{percent(g.cache_hit_ratio)}</td>"
        f"<td>{tokens(g.sums['cache_write_tokens'])}</td><td>{tokens(g.sums['output_tokens'])}</td>"
        f"<td>{esc(cost_text(g))}</td><td class=l>{esc(providers_text(g.providers))}</td>"
        f"<td>{len(g.flips) or ''}</td></tr>"
    )


def _page(title: str, body: list[str]) -> str:
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )


def _span_text(since: float | None, until: float | None, zone: tzinfo | None) -> str:
    parts = [f"since {when(since, zone)}" if since is not None else "all recorded"]
    if until is not None:
        parts.append(f"until {when(until, zone)}")
    return " ".join(parts)


def as_html(
    groups: list[Group], by: str, since: float | None = None, until: float | None = None, zone: tzinfo | None = None
) -> str:
    esc = html.escape
    rows = []
    for g in groups:
        rows.append(_html_row(group_name(g, by), g, by))
        rows += [_html_row(branch_name(part), part, by, part=True) for part in branches_of(g)]
        rows += [_html_row("└ " + m.key, m, by, part=True) for m in by_cost(g.breakdown)]
    if groups:
        rows.append(_html_row("TOTAL", grand_total(groups), by))
    body = [
        f"<h1>Agent session usage</h1><p class=meta>{esc(_span_text(since, until, zone))}, by {esc(by)}; "
        f"{sum(g.requests for g in groups)} requests. Made {esc(when(time.time(), zone))}.</p>",
        "<table><tr><th>" + esc(by) + "</th><th class=l>agent</th><th>requests</th><th>input</th><th>cached</th>"
        "<th>hit</th><th>cache write</th><th>output</th><th>cost</th><th class=l>providers</th><th>flips</th></tr>",
        *rows,
        "</table>",
    ]
    if by == "session":
        for g in groups:
            body.append(
                f"<h2>{esc(g.label or g.key)}</h2><p class=meta>{esc(g.key)} · {esc(g.cwd or '-')} · "
                f"{g.requests} turns · {esc(when(g.first or 0, zone))} – {esc(when(g.last or 0, zone))} · "
                f"cache hit {percent(g.cache_hit_ratio)}</p>"
            )
            body.append(_chart(g))
            for f in g.flips:
                body.append(
                    f"<p class=warn>⚠ provider flip at {esc(f['when'])}: {esc(f['from'])} → "
                    f"{esc(f['to'])} after {esc(duration(f['idle_s']))} idle</p>"
                )
            body += [f"<p class=meta>{esc(text)}</p>" for text in sent_change_lines(g)]
    return _page("Agent session usage", body)


def session_html(turns: list[dict], zone: tzinfo | None = None) -> str:
    esc = html.escape
    data = session_json(turns, zone)
    rows = []
    for row in data["turns"]:
        changed = "".join(
            f"<br><span class=meta>↻ sent {esc(str(c.get('target')))}: {esc(str(c.get('from')))} → "
            f"{esc(str(c.get('to')))}</span>"
            for c in row["sent_changed"]
        )
        rows.append(
            f"<tr><td>{esc(row['when'])}{changed}</td><td class=l>{esc(row['subagent'] or '-')}</td>"
            f"<td class=l>{esc(str(row['model'] or row['served_model'] or '-'))}"
            f"</td><td class=l>{'⚠ ' if row['provider_flip'] else ''}{esc(row['provider'] or '-')}</td>"
            f"<td>{tokens(row['input_tokens'])}</td><td>{tokens(row['cache_read_tokens'])}</td>"
            f"<td>{percent(row['cache_hit_ratio'])}</td><td>{tokens(row['output_tokens'])}</td>"
            f"<td>{esc(money(row['cost']))}</td></tr>"
        )
    title = data["label"] or data["session"]
    body = [
        f"<h1>Session {esc(title)}</h1><p class=meta>{esc(data['session'])} · {esc(data['agent'] or '-')} · "
        f"{esc(data['cwd'] or '-')} · {len(turns)} turns · cache hit {percent(data['cache_hit_ratio'])} · "
        f"cost {esc(money(data['cost']))}</p>",
        "<table><tr><th>time</th><th class=l>sub-agent</th>"
        "<th class=l>model</th><th class=l>provider</th><th>input</th><th>cached</th>"
        "<th>hit</th><th>output</th><th>cost</th></tr>",
        *rows,
        "</table>",
    ]
    return _page(f"Session {title}", body)
