"""The report's groups: ledger records summed per session (a tree, by its root), day, week, month,
model, project or agent, with what the report's views add to a group's sums (the per-model
breakdown, the tree's branches, each turn for the chart), and the names the views give them.
Pure: records in, Groups out; the renderers (render_text, render_json, render_html) show them."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import tzinfo

from .timespec import day_of, month_of, week_of, when
from .totals import FlipWatch, Totals, hit_ratio


class Group(Totals):
    """A group's sums, and what the report's views add to them."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.breakdown: dict[str, Group] = {}  # --breakdown: this group's parts per model
        self.tree: dict[tuple[str, str | None], Group] = {}  # --tree: each branch's own figures
        self.depth = 0  # a branch's level below its root
        self.parent: str | None = None  # a branch's parent session
        self.turns: list[tuple[float, float | None, str | None]] = []  # (epoch, hit ratio, provider): the chart

    def add(self, record: dict, epoch: float, keep_turns: bool = False) -> None:
        super().add(record, epoch)
        if keep_turns:
            provider = record.get("provider")
            self.turns.append((epoch, hit_ratio(record), provider if isinstance(provider, str) else None))


def model_of(record: dict) -> str:
    return str(record.get("model") or record.get("served_model") or "(unknown)")


# what each --by groups on: (record, epoch, zone) -> the group's key
BUCKETS: dict[str, Callable[[dict, float, tzinfo | None], str]] = {
    "session": lambda r, epoch, zone: str(r.get("root") or r.get("session") or "?"),  # a tree, by its root
    "day": lambda r, epoch, zone: day_of(epoch, zone),
    "week": lambda r, epoch, zone: week_of(epoch, zone),
    "month": lambda r, epoch, zone: month_of(epoch, zone),
    "model": lambda r, epoch, zone: model_of(r),
    "project": lambda r, epoch, zone: str(r.get("cwd") or "(unknown)"),
    "agent": lambda r, epoch, zone: str(r.get("agent") or "(unknown)"),
}


def group(
    records: list[dict],
    by: str = "session",
    keep_turns: bool = False,
    zone: tzinfo | None = None,
    breakdown: bool = False,
    tree: bool = False,
) -> list[Group]:
    """Groups, newest activity first. Provider flips are found per session, in time order,
    and listed in the group of the turn that flipped. With `breakdown`, each group's
    ``breakdown`` holds its parts per model. By session, a group is a tree (a root session, its
    sub-agents and child sessions); with `tree`, its ``tree`` holds each branch's own figures."""
    key_of = BUCKETS.get(by)
    if key_of is None:
        raise ValueError(f"cannot group by {by!r}")
    groups: dict[str, Group] = {}
    watch = FlipWatch(limit=10**9)
    for record in sorted(records, key=lambda r: r["_epoch"]):
        epoch = record["_epoch"]
        session = str(record.get("session") or "?")
        key = key_of(record, epoch, zone)
        totals = groups.get(key)
        if totals is None:
            totals = groups[key] = Group(key)
        totals.add(record, epoch, keep_turns)
        if tree and by == "session":
            branch = (session, record.get("subagent") or None)
            if branch != (key, None):
                _part(totals.tree, branch, session).add(record, epoch)
        if breakdown:
            model = model_of(record)
            _part(totals.breakdown, model, model).add(record, epoch)
        flip = watch.see(session, record.get("provider"), epoch)
        if flip is not None:
            flip.update(
                session=session, label=record.get("label") or session, ts=record.get("ts"), when=when(epoch, zone)
            )
            totals.flips.append(flip)
    if tree and by == "session":
        _place_branches(list(groups.values()), records)
    return sorted(groups.values(), key=lambda g: -(g.last or 0))


def _part(parts: dict, key, name: str) -> Group:
    """A group's part (a branch of its tree, a model of its breakdown), made when first seen."""
    part = parts.get(key)
    if part is None:
        part = parts[key] = Group(name)
    return part


def _place_branches(groups: list[Group], records: list[dict]) -> None:
    """Each branch's depth below its root, its parent, and a sub-agent's label."""
    # a child session's parent (a sub-agent's own "parent" is the session it runs in)
    parents = {str(r.get("session")): r.get("parent") for r in records if r.get("parent") and not r.get("subagent")}
    for g in groups:
        for (session, subagent), part in g.tree.items():
            part.depth = _depth(session, g.key, parents) + (1 if subagent and subagent != session else 0)
            part.parent = session if subagent and subagent != session else parents.get(session)
            if subagent and subagent != session:
                part.label = f"sub-agent {subagent}"


def _depth(session: str, root: str, parents: dict) -> int:
    depth, at = 0, session
    while at != root and at in parents and depth < 16:
        at, depth = parents[at], depth + 1
    return depth if at == root else max(1, depth)


def branches_of(g: Group) -> list[Group]:
    """A tree's branches, in the order they began."""
    return sorted(g.tree.values(), key=lambda part: (part.first or 0, part.key))


def by_cost(parts: dict[str, Group]) -> list[Group]:
    return sorted(parts.values(), key=lambda m: (-(m.cost or 0), -m.requests, m.key))


def grand_total(groups: list[Group]) -> Group:
    """All groups summed, as the views' TOTAL row."""
    out = Group("TOTAL")
    for g in groups:
        out.merge(g)
    out.label, out.agent = "TOTAL", ""
    return out


def group_name(g: Totals, by: str) -> str:
    """A group's name in a view: a session's label (and its branch count), a project's folder from ~."""
    if by == "session":
        return (g.label or g.key) + (f" +{len(g.branches)}" if g.branches else "")
    if by == "project" and g.key.startswith(os.path.expanduser("~") + os.sep):
        return "~" + g.key[len(os.path.expanduser("~")) :]
    return g.key


def branch_name(part: Group) -> str:
    return "  " * part.depth + "└ " + (part.label or part.key)


# -- one session's turns ---------------------------------------------------------------------------


def session_turns(records: list[dict], wanted: str) -> list[dict]:
    """One session's records in time order: the session named by its id, or else by its label."""
    by_id = [r for r in records if r.get("session") == wanted]
    return sorted(by_id or [r for r in records if r.get("label") == wanted], key=lambda r: r["_epoch"])


def session_totals(turns: list[dict]) -> Totals:
    """One session's sums over its turns (session_turns' records)."""
    sums = Totals(str(turns[0].get("session")))
    for r in turns:
        sums.add(r, r["_epoch"])
    return sums


def turn_rows(turns: list[dict], zone: tzinfo | None = None) -> list[dict]:
    """One session's turns, each with its time, model, provider, tokens, cache hit and cost, the
    sub-agent that made it (if any), whether its provider differs from the previous turn's, and
    what it sent differently from its branch's previous turn (a rename)."""
    rows, previous = [], None
    for r in turns:
        provider = r.get("provider") if isinstance(r.get("provider"), str) else None
        ratio = hit_ratio(r)
        rows.append(
            {
                "ts": r.get("ts"),
                "when": when(r["_epoch"], zone),
                "model": r.get("model"),
                "served_model": r.get("served_model"),
                "provider": provider,
                **{
                    k: r.get(k)
                    for k in (
                        "input_tokens",
                        "cache_read_tokens",
                        "cache_write_tokens",
                        "output_tokens",
                        "cost",
                        "status",
                    )
                },
                "cache_hit_ratio": round(ratio, 4) if ratio is not None else None,
                "subagent": r.get("subagent") or None,
                "provider_flip": bool(provider and previous and provider != previous),
                "sent_changed": [c for c in r.get("sent_changed") or () if isinstance(c, dict)],
            }
        )
        previous = provider or previous
    return rows
