"""What a user sees of a rewrite in mitmweb and the console: a comment, a marker, and the details
in flow.metadata["session_ids"] (saved with the flow; filter with ~meta, ~comment, ~marker)."""

from __future__ import annotations

import os

MARK_REWRITTEN = ":label:"
MARK_SKIPPED = ":warning:"
METADATA_KEY = "session_ids"


def comment(session, changes: list[dict], skipped: list[str]) -> str:
    where = os.path.basename(session.file) if session.file else session.source
    text = f"session {session.label} ({session.agent}, {where})"
    if changes:
        text += " → " + ", ".join(c["target"] for c in changes)
    if skipped:
        text += "; not rewritten: " + "; ".join(skipped)
    return text


def annotate(flow, session, process, rules, changes: list[dict], skipped: list[str]) -> None:
    flow.comment = comment(session, changes, skipped)
    if changes:
        flow.marked = MARK_REWRITTEN
    elif skipped:
        flow.marked = MARK_SKIPPED
    flow.metadata[METADATA_KEY] = {
        "session": {
            "id": session.id,
            "label": session.label,
            "trace_uuid": session.trace_uuid,
            "name": session.name,
            "agent": session.agent,
            "file": session.file,
            "source": session.source,
            "fallback": session.fallback,
        },
        "process": None if process is None else {
            "pid": process.pid,
            "comm": process.comm,
            "cwd": process.cwd,
            "started_at": process.started_at,
        },
        "rules": [_rule(r) for r in rules],
        "changes": changes,
        "skipped": skipped,
    }


def annotate_failure(flow, rules, reason: str) -> None:
    flow.comment = f"session not set: {reason}"
    flow.marked = MARK_SKIPPED
    flow.metadata[METADATA_KEY] = {
        "rules": [_rule(r) for r in rules],
        "error": reason,
    }


def _rule(rule) -> dict:
    return {"name": rule.name, "file": f"{rule.file}:{rule.line}", "match": rule.match.to_filter_expression()}
