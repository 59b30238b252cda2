"""The usage report: reads the ledger the proxy writes and sums it per session, day or model.

    python -m agent_session_ids.report [--by session|day|model] [--since 2h|7d|2026-11-21]
                                       [--json] [--html FILE] [--file LEDGER]

(``agent-session-ids-report`` once installed.) The ledger defaults to
``~/.mitmproxy/agent-session-ids/usage.jsonl`` and its rotated files.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import sys
import time
from datetime import datetime

from . import ledger
from .totals import FlipWatch, Totals, duration, money, percent, providers_text, table, tokens

DEFAULT_LEDGER = os.path.join("~", ".mitmproxy", "agent-session-ids", "usage.jsonl")
_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """``2h``, ``30m``, ``7d``, ``1w`` back from now, or a local date / date-time
    (``2026-11-21``, ``2026-11-21T10:00``), or an ISO time with its zone."""
    now = time.time() if now is None else now
    m = _SPAN.match(text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r}: give a span such as 2h, 30m, 7d, or a date such as 2026-11-21") from None
    return moment.timestamp()  # naive: local time


def day_of(epoch: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(epoch))


def when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def group(records: list[dict], by: str = "session", keep_turns: bool = False) -> list[Totals]:
    """Totals per group, newest activity first. Provider flips are found per session, in time order,
    and listed in the group of the turn that flipped."""
    groups: dict[str, Totals] = {}
    watch = FlipWatch(limit=10**9)
    for record in sorted(records, key=lambda r: r["_epoch"]):
        epoch = record["_epoch"]
        session = str(record.get("session") or "?")
        if by == "session":
            key = session
        elif by == "day":
            key = day_of(epoch)
        elif by == "model":
            key = str(record.get("model") or record.get("served_model") or "(unknown)")
        else:
            raise ValueError(f"cannot group by {by!r}")
        totals = groups.get(key)
        if totals is None:
            totals = groups[key] = Totals(key)
        totals.add(record, epoch, keep_turns)
        flip = watch.see(session, record.get("provider"), epoch)
        if flip is not None:
            flip.update(session=session, label=record.get("label") or session, ts=record.get("ts"), when=when(epoch))
            totals.flips.append(flip)
    return sorted(groups.values(), key=lambda g: -(g.last or 0))


def as_json(groups: list[Totals], by: str) -> list[dict]:
    out = []
    for g in groups:
        item: dict = {by: g.key}
        if by == "session":
            item.update(label=g.label, agent=g.agent)
        item.update(g.as_dict())
        item["first"] = ledger.timestamp(g.first) if g.first is not None else None
        item["last"] = ledger.timestamp(g.last) if g.last is not None else None
        if by == "session":
            item["models"] = dict(g.models)
        item["flips"] = [{k: f[k] for k in ("ts", "session", "from", "to", "idle_s")} for f in g.flips]
        out.append(item)
    return out


def text(groups: list[Totals], by: str, skipped: int = 0) -> str:
    if not groups:
        return "no usage recorded" + (f" ({skipped} unreadable lines skipped)" if skipped else "")
    title = {"session": "SESSION", "day": "DAY", "model": "MODEL"}[by]
    lines = table(groups, title)
    total = Totals("TOTAL")
    for g in groups:
        total.requests += g.requests
        for k, v in g.sums.items():
            if v is not None:
                total.sums[k] = (total.sums[k] or 0) + v
        if g.cost is not None:
            total.cost = (total.cost or 0) + g.cost
        total.cost_requests += g.cost_requests
        total._hit_read += g._hit_read
        total._hit_input += g._hit_input
        for name, n in g.providers.items():
            total.providers[name] = total.providers.get(name, 0) + n
    total.label, total.agent = "TOTAL", ""
    lines += table([total], title)[1:]
    notes = []
    if any(g.cost is not None and g.cost_requests < g.requests for g in groups):
        notes.append("* cost known for only some of the requests (the gateway did not report it for the others)")
    if skipped:
        notes.append(f"{skipped} unreadable ledger lines skipped (a partial last line is normal after a kill)")
    return "\n".join(lines + notes)


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
"""


def as_html(groups: list[Totals], by: str, since: float | None = None) -> str:
    esc = html.escape
    span = f"since {when(since)}" if since is not None else "all recorded"
    rows = []
    for g in groups:
        name = (g.label or g.key) if by == "session" else g.key
        rows.append(
            f"<tr><td>{esc(name)}</td><td class=l>{esc(g.agent or '-')}</td><td>{g.requests}</td>"
            f"<td>{tokens(g.sums['input_tokens'])}</td><td>{tokens(g.sums['cache_read_tokens'])}</td>"
            f"<td>{percent(g.cache_hit_ratio)}</td><td>{tokens(g.sums['cache_write_tokens'])}</td>"
            f"<td>{tokens(g.sums['output_tokens'])}</td><td>{esc(money(g.cost))}</td>"
            f"<td class=l>{esc(providers_text(g.providers))}</td><td>{len(g.flips) or ''}</td></tr>")
    body = [f"<h1>Agent session usage</h1><p class=meta>{esc(span)}, by {esc(by)}; "
            f"{sum(g.requests for g in groups)} requests. Made {esc(when(time.time()))}.</p>",
            "<table><tr><th>" + esc(by) + "</th><th class=l>agent</th><th>requests</th><th>input</th><th>cached</th>"
            "<th>hit</th><th>cache write</th><th>output</th><th>cost</th><th class=l>providers</th><th>flips</th></tr>",
            *rows, "</table>"]
    if by == "session":
        for g in groups:
            body.append(f"<h2>{esc(g.label or g.key)}</h2><p class=meta>{esc(g.key)} · {g.requests} turns · "
                        f"{esc(when(g.first or 0))} – {esc(when(g.last or 0))} · cache hit "
                        f"{percent(g.cache_hit_ratio)}</p>")
            body.append(_chart(g))
            for f in g.flips:
                body.append(f"<p class=warn>⚠ provider flip at {esc(f['when'])}: {esc(f['from'])} → "
                            f"{esc(f['to'])} after {esc(duration(f['idle_s']))} idle</p>")
    return ("<!doctype html><html><head><meta charset=utf-8><title>Agent session usage</title>"
            f"<style>{_STYLE}</style></head><body>" + "\n".join(body) + "</body></html>\n")


# -- the command -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="agent-session-ids-report",
        description="Usage, cache hits and cost per agent session, from the ledger agent-session-ids writes.")
    parser.add_argument("--by", choices=("session", "day", "model"), default="session",
                        help="group by session (default), by local day, or by the model requested")
    parser.add_argument("--since", help="only turns since then: 2h, 30m, 7d, 1w, or a date such as 2026-11-21")
    parser.add_argument("--json", action="store_true", help="one JSON object per group")
    parser.add_argument("--html", metavar="FILE", help="write a one-page HTML report (inline SVG, no scripts)")
    parser.add_argument("--file", metavar="LEDGER", default=None,
                        help=f"the ledger (default {DEFAULT_LEDGER}, or $AGENT_SESSION_IDS_USAGE)")
    args = parser.parse_args(argv)
    path = os.path.expanduser(args.file or os.environ.get("AGENT_SESSION_IDS_USAGE") or DEFAULT_LEDGER)
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as e:
        parser.error(str(e))
    if not ledger.files(path):
        print(f"no usage ledger at {path} (the proxy writes it; see session_usage_file)", file=sys.stderr)
        return 1
    records, skipped = ledger.read(path, since)
    groups = group(records, args.by, keep_turns=bool(args.html))
    if args.html:
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(as_html(groups, args.by, since))
    if args.json:
        print(json.dumps(as_json(groups, args.by), indent=2, ensure_ascii=False))
    elif not args.html:
        print(text(groups, args.by, skipped))
    else:
        print(f"wrote {args.html}: {len(groups)} {args.by} groups, {len(records)} requests")
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
