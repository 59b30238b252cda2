"""The report as JSON: one object per group (its figures, branches, per-model breakdown, provider
flips and renames), and one session's figures with its turns."""

from __future__ import annotations

from datetime import tzinfo

from . import ledger
from .grouping import Group, by_cost, session_totals, turn_rows
from .totals import Totals


def figures(g: Totals) -> dict:
    return {
        **g.as_dict(),
        "first": ledger.timestamp(g.first) if g.first is not None else None,
        "last": ledger.timestamp(g.last) if g.last is not None else None,
    }


def as_json(groups: list[Group], by: str) -> list[dict]:
    out = []
    for g in groups:
        item: dict = {by: g.key}
        if by == "session":
            item.update(label=g.label, agent=g.agent, cwd=g.cwd)
        item.update(figures(g))
        if by == "session":
            item["models"] = dict(g.models)
        if by == "session":
            item["branch_count"] = len(g.branches)  # sub-agents and child sessions counted in
        if g.tree:
            item["branches"] = [
                {
                    "session": part.key,
                    "subagent": subagent,
                    "parent": part.parent,
                    "label": part.label,
                    "depth": part.depth,
                    **figures(part),
                }
                for (_, subagent), part in sorted(g.tree.items(), key=lambda kv: kv[1].first or 0)
            ]
        if g.breakdown:
            item["breakdown"] = [{"model": m.key, **figures(m)} for m in by_cost(g.breakdown)]
        item["flips"] = [{k: f[k] for k in ("ts", "session", "from", "to", "idle_s")} for f in g.flips]
        item["sent_changes"] = [
            {"ts": ledger.timestamp(c["epoch"]), "target": c.get("target"), "from": c.get("from"), "to": c.get("to")}
            for c in g.sent_changes
        ]
        out.append(item)
    return out


def session_json(turns: list[dict], zone: tzinfo | None = None) -> dict:
    sums = session_totals(turns)
    return {
        "session": sums.key,
        "label": sums.label,
        "agent": sums.agent,
        "cwd": sums.cwd,
        **figures(sums),
        "turns": turn_rows(turns, zone),
    }
