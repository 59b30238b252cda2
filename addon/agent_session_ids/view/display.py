"""What a user sees of a rewrite in mitmweb and the console: a comment, a marker, and the details
in flow.metadata["session_ids"] (saved with the flow; filter with ~meta, ~comment, ~marker)."""

from __future__ import annotations

import os

from ..flow_state import FlowState
from ..shown import shown
from .units import duration, money, percent, tokens

MARK_REWRITTEN = ":label:"
MARK_SKIPPED = ":warning:"
METADATA_KEY = "session_ids"


def comment(session, changes: list[dict], skipped: list[str]) -> str:
    where = os.path.basename(session.file) if session.file else session.source
    text = f"session {shown(session.label, 200)} ({shown(session.agent, 40)}, {shown(where, 200)})"
    if session.subagent and session.subagent != session.id:
        text += f", sub-agent {shown(session.subagent, 80)}"
    elif session.parent:
        text += f", child of {shown(session.parent, 80)}"
    if changes:
        text += " → " + ", ".join(c["target"] for c in changes)
    if skipped:
        text += "; not rewritten: " + "; ".join(skipped)
    return shown(text)  # the targets and the reasons may quote the request


def annotate(flow, state: FlowState) -> None:
    """The comment, the marker and metadata["session_ids"] of a flow, from what the rewrite decided."""
    if state.rewritten:
        _annotate_rewrite(flow, state)
    else:
        _annotate_failure(flow, state)


def _annotate_rewrite(flow, state: FlowState) -> None:
    session, process, changes, skipped, unreadable = (
        state.session,
        state.process,
        state.changes,
        state.skipped,
        state.unreadable,
    )
    assert session is not None  # state.rewritten
    flow.comment = comment(session, changes, skipped)
    if unreadable:
        flow.comment += f"; process not read: {shown(unreadable, 200)}"
    if changes:
        flow.marked = MARK_REWRITTEN
    elif skipped:
        flow.marked = MARK_SKIPPED
    meta: dict[str, object] = {
        "session": {
            "id": session.id,
            "label": session.label,
            "trace_uuid": session.trace_uuid,
            "name": session.name,
            "agent": session.agent,
            "file": session.file,
            "source": session.source,
            "fallback": session.fallback,
            "cwd": state.cwd,
            # its place in a tree (resolution/tree.py): only where it has one
            **(
                {
                    "subagent": session.subagent,
                    "subagent_kind": session.subagent_kind,
                    "subagent_file": session.subagent_file,
                    "parent": session.parent,
                    "root": session.root or session.id,
                    "path": "/" + "/".join(session.lineage),
                }
                if session.subagent or session.parent
                else {}
            ),
            **({"sent_label": session.kept_label or session.id} if session.kept else {}),
        },
        "process": {"unreadable": unreadable}
        if process is None
        else {
            "pid": process.pid,
            "comm": process.comm,
            "cwd": process.cwd,
            "started_at": process.started_at,
        },
        "rules": [_rule(r) for r in state.rules],
        "changes": changes,
        "skipped": skipped,
    }
    if state.model is not None:
        meta["model"] = state.model  # the model the request asked for
    flow.metadata[METADATA_KEY] = meta


def _annotate_failure(flow, state: FlowState) -> None:
    reason = state.error or "no session"
    flow.comment = f"session not set: {reason}"
    flow.marked = MARK_SKIPPED
    flow.metadata[METADATA_KEY] = {
        "rules": [_rule(r) for r in state.rules],
        "error": reason,
    }


def usage_text(figures: dict) -> str:
    """One turn's figures for the comment: ``12.3k in · 250 out · cache 92% · $0.0041 · Anthropic``."""
    parts = []
    if figures.get("input_tokens") is not None:
        parts.append(f"{tokens(figures['input_tokens'])} in")
    if figures.get("output_tokens") is not None:
        parts.append(f"{tokens(figures['output_tokens'])} out")
    if figures.get("cache_hit_ratio") is not None:
        parts.append(f"cache {percent(figures['cache_hit_ratio'])}")
    if figures.get("cost") is not None:
        parts.append(money(figures["cost"]))
    if figures.get("provider"):
        parts.append(shown(figures["provider"], 60))
    flip = figures.get("provider_flip")
    if flip:
        parts.append(
            f"provider flip {shown(flip['from'], 60)} → {shown(flip['to'], 60)} "
            f"after {duration(flip.get('idle_s'))} idle"
        )
    if not parts:
        parts.append(f"no usage in the answer (HTTP {figures.get('status', '?')})")
    return " · ".join(parts)


def annotate_usage(flow, figures: dict) -> None:
    """Add one answered turn's figures to the comment and to metadata["session_ids"]["usage"]."""
    meta = flow.metadata.get(METADATA_KEY)
    if not isinstance(meta, dict) or "usage" in meta:
        return
    meta["usage"] = figures
    text = usage_text(figures)
    flow.comment = f"{flow.comment} · {text}" if flow.comment else text


def _rule(rule) -> dict:
    return {"name": rule.name, "file": f"{rule.file}:{rule.line}", "match": rule.match.to_filter_expression()}


def explain(flow) -> str:
    """A flow's resolution and changes in words (the sessionids.explain command)."""
    meta = flow.metadata.get(METADATA_KEY) if flow is not None else None
    if not meta:
        return "no session rule matched this flow"
    lines = []
    if "error" in meta:
        lines.append(f"not rewritten: {meta['error']}")
    session = meta.get("session")
    if session:
        lines.append(f"session   {session['label']} (ID {session['id']})")
        lines.append(f"agent     {session['agent']}" + (f", name {session['name']!r}" if session.get("name") else ""))
        lines.append(f"decided by {session['source']}")
        if session.get("file"):
            lines.append(f"file      {session['file']}")
        lines.append(f"trace     {session['trace_uuid']}")
    process = meta.get("process")
    if process and "pid" in process:
        lines.append(f"process   pid {process['pid']} ({process['comm']}) in {process['cwd']}")
    elif process:
        lines.append(f"process   not read: {process.get('unreadable') or 'unknown reason'}")
    for rule in meta.get("rules", []):
        lines.append(f"rule      {rule['name']} ({rule['file']}): {rule['match']}")
    for change in meta.get("changes", []):
        lines.append(f"set       {change['target']}: {change['before']!r} -> {change['after']!r}")
    for reason in meta.get("skipped", []):
        lines.append(f"skipped   {reason}")
    if isinstance(meta.get("usage"), dict):
        lines.append(f"usage     {usage_text(meta['usage'])}")
    return "\n".join(lines)
