"""A contentview for the requests this addon touched: what it changed, which rule matched, and how
the session was resolved, read from flow.metadata["session_ids"] (see display.py).

mitmproxy 12 and later take a `contentviews.Contentview`; 11 takes the legacy `contentviews.View`.
The right one is picked here at import time, by feature detection. mitmweb asks for the view of a
request's body, so the view ranks above every built-in view for such requests, and never for
other messages; the body itself follows the summary.

register() and unregister() are idempotent: mitmproxy's hot reload imports this module afresh
and calls them again, so they work by the view's name, not by the instance.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time

from mitmproxy import contentviews

from ..shown import shown
from .display import METADATA_KEY

logger = logging.getLogger("agent_session_ids")

NAME = "Session IDs"
PRIORITY = 3.0  # built-in views rank at most 2 (GraphQL in 11.x), most at 1
MAX_BODY_CHARS = 1_000_000  # of the body shown after the summary

# One line is a list of (style, text) segments; the styles are mitmproxy console palette names.
Line = list[tuple[str, str]]


def _value(v) -> str:
    if v is None:
        return "(not set)"
    if v == "":
        return '""'
    return str(v)


def _when(epoch) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(epoch)))
    except (TypeError, ValueError, OverflowError, OSError):
        return str(epoch)


def _pairs(pairs: list[tuple[str, object]], indent: str = "  ") -> list[Line]:
    width = max((len(k) for k, _ in pairs), default=0) + 1
    return [
        [("text", indent), ("header", (k + ":").ljust(width + 1)), ("text", "(none)" if v is None else str(v))]
        for k, v in pairs
    ]


def summary(meta: dict) -> list[Line]:
    """The lines that explain one flow's metadata["session_ids"]."""
    lines: list[Line] = []

    def title(text: str) -> None:
        if lines:
            lines.append([("text", " ")])  # mitmweb collapses empty lines
        lines.append([("highlight", text)])

    changes = meta.get("changes") or []
    skipped = list(meta.get("skipped") or [])
    error = meta.get("error")

    title(f"Changes ({len(changes)})" if changes else "Changes: none")
    for c in changes:
        lines.append(
            [
                ("text", "  "),
                ("header", f"{c.get('target', '?')}: "),
                ("content_none" if c.get("before") is None else "text", _value(c.get("before"))),
                ("text", "  →  "),
                ("Token_Literal_String", _value(c.get("after"))),
                ("text", f"   (rule {c.get('rule', '?')})"),
            ]
        )

    if error or skipped:
        title("Not rewritten")
        if error:
            lines.append([("text", "  "), ("error", str(error))])
        for reason in skipped:
            lines.append([("text", "  - "), ("error", str(reason))])

    usage = meta.get("usage")
    if isinstance(usage, dict):
        from .display import usage_text

        title("Usage of this turn")
        lines.append([("text", "  "), ("Token_Literal_String", usage_text(usage))])
        flip = usage.get("provider_flip")
        lines += _pairs(
            [
                (k, v)
                for k, v in (
                    ("status", usage.get("status")),
                    ("streamed", "yes" if usage.get("stream") else "no"),
                    ("model asked", usage.get("model")),
                    ("served model", usage.get("served_model")),
                    ("provider", usage.get("provider")),
                    ("input tokens", usage.get("input_tokens")),
                    ("cache reads", usage.get("cache_read_tokens")),
                    ("cache writes", usage.get("cache_write_tokens")),
                    ("output tokens", usage.get("output_tokens")),
                    ("cost (USD)", usage.get("cost")),
                    (
                        "provider flip",
                        f"{flip.get('from')} → {flip.get('to')} after {flip.get('idle_s')} s idle"
                        if isinstance(flip, dict)
                        else None,
                    ),
                )
                if v is not None
            ]
        )

    rules = meta.get("rules") or []
    title(f"Matched rules ({len(rules)})")
    for r in rules:
        lines.append([("text", "  "), ("header", str(r.get("name", "?"))), ("text", f"  {r.get('file', '?')}")])
        lines.append([("text", "    filter: "), ("Token_Literal_String", str(r.get("match", "")))])

    session = meta.get("session")
    if session:
        title("Session")
        lines += _pairs(
            [
                ("agent", session.get("agent")),
                ("id", session.get("id")),
                ("label", session.get("label")),
                ("name", session.get("name") or "(none)"),
                ("trace uuid", session.get("trace_uuid")),
                ("file", session.get("file")),
                ("folder", session.get("cwd")),
                ("decided by", session.get("source")),
                ("fallback ID", "yes" if session.get("fallback") else "no"),
            ]
        )
        kind = session.get("subagent_kind")
        lines += _pairs(
            [
                (k, v)
                for k, v in (  # its tree, where it has one; the label kept over a rename
                    (
                        "sub-agent",
                        f"{session.get('subagent')}" + (f" ({kind})" if kind else "")
                        if session.get("subagent")
                        else None,
                    ),
                    ("sub-agent file", session.get("subagent_file")),
                    ("parent", session.get("parent")),
                    ("root", session.get("root")),
                    ("tree path", session.get("path")),
                    ("label sent", session.get("sent_label")),
                )
                if v
            ]
        )
    if "process" in meta:
        proc = meta.get("process")
        title("Process")
        if proc and "pid" in proc:
            lines += _pairs(
                [
                    ("pid", f"{proc.get('pid')} ({proc.get('comm') or '?'})"),
                    ("cwd", proc.get("cwd")),
                    ("started", _when(proc.get("started_at"))),
                ]
            )
        else:
            why = (proc or {}).get("unreadable") or "no local process found for this connection"
            lines.append([("text", "  "), ("content_none", f"not read: {why}")])
    return lines


def _body_lines(data: bytes) -> list[Line]:
    if not data:
        return [[("highlight", "Body (as sent)")], [("content_none", "  (empty)")]]
    text = data[:MAX_BODY_CHARS].decode("utf-8", "replace")
    with contextlib.suppress(ValueError, RecursionError):  # not JSON: shown as sent
        text = json.dumps(json.loads(data), indent=2, ensure_ascii=False)
    if len(text) > MAX_BODY_CHARS:
        text = text[:MAX_BODY_CHARS] + "\n… (cut)"
    return [[("highlight", "Body (as sent)")]] + [[("text", line)] for line in text.splitlines()]


def _meta_of(flow, http_message) -> dict | None:
    """The metadata when the message is the request of a flow this addon annotated."""
    if flow is None:
        return None
    meta = getattr(flow, "metadata", None)
    if not isinstance(meta, dict):
        return None
    meta = meta.get(METADATA_KEY)
    if not isinstance(meta, dict):
        return None
    if http_message is None or http_message is not getattr(flow, "request", None):
        return None
    return meta


def render(data: bytes, flow, http_message) -> tuple[str, list[Line]]:
    """(description, lines); never raises."""
    try:
        meta = _meta_of(flow, http_message)
        if meta is None:
            return "no session IDs", [
                [("text", "agent-session-ids did not touch this request (no session_ids metadata).")]
            ]
        lines = summary(meta)
        lines.append([("text", " ")])
        lines += _body_lines(data or b"")
        changes = len(meta.get("changes") or [])
        label = (meta.get("session") or {}).get("label")
        desc = f"session {label}, {changes} change{'s' if changes != 1 else ''}" if label else "session not set"
        desc = f"{NAME}: {desc}"  # mitmweb 11 shows the description as the view's title
        # the console draws these in a terminal: every fragment passes the one rule (shown.py)
        return shown(desc), [[(style, shown(text)) for style, text in line] for line in lines]
    except Exception as e:  # a view must never raise
        logger.debug("agent-session-ids: contentview failed", exc_info=True)
        return "error", [[("error", f"agent-session-ids could not show this flow: {type(e).__name__}: {e}")]]


def priority(flow, http_message) -> float:
    try:
        return PRIORITY if _meta_of(flow, http_message) is not None else -1
    except Exception:
        return -1


def to_text(lines: list[Line]) -> str:
    return "\n".join("".join(text for _, text in line) for line in lines)


# mypy reads the branch of the other release too: its names are ignored there (name-defined, attr-defined),
# and checked under the release that has them
if hasattr(contentviews, "Contentview"):  # mitmproxy 12 and later
    MITMPROXY_API = 12

    class SessionIdsView(contentviews.Contentview):  # type: ignore[name-defined,unused-ignore]
        name = NAME
        syntax_highlight = "none"

        def prettify(self, data: bytes, metadata) -> str:
            try:
                _, lines = render(data, getattr(metadata, "flow", None), getattr(metadata, "http_message", None))
                return to_text(lines)
            except Exception as e:
                return f"agent-session-ids could not show this flow: {type(e).__name__}: {e}"

        def render_priority(self, data: bytes, metadata) -> float:
            return priority(getattr(metadata, "flow", None), getattr(metadata, "http_message", None))

    def _find():
        return contentviews.registry.get(NAME.lower())

    def _add(view) -> None:
        contentviews.add(view)  # replaces a view of the same name

    def _remove() -> None:
        # 12.x has no public removal (contentviews.remove is a no-op): drop it by name.
        by_name = getattr(contentviews.registry, "_by_name", None)  # type: ignore[attr-defined,unused-ignore]
        if isinstance(by_name, dict):
            by_name.pop(NAME.lower(), None)

else:  # mitmproxy 11: the legacy View API
    MITMPROXY_API = 11

    class SessionIdsView(contentviews.View):  # type: ignore[no-redef]
        name = NAME

        def __call__(self, data: bytes, *, flow=None, http_message=None, **unknown):
            return render(data, flow, http_message)

        def render_priority(self, data: bytes, *, flow=None, http_message=None, **unknown) -> float:
            return priority(flow, http_message)

    def _find():
        return next((v for v in contentviews.views if v.name == NAME), None)

    def _add(view) -> None:
        contentviews.add(view)

    def _remove() -> None:
        while (old := _find()) is not None:  # an instance from before a reload counts too
            contentviews.remove(old)


def register() -> None:
    """Add the view (replacing one of the same name, e.g. from before a hot reload)."""
    try:
        _remove()
        _add(SessionIdsView())
    except Exception as e:  # the view is a nicety: never stop the addon
        logger.warning(f"agent-session-ids: could not add the '{NAME}' contentview: {e!r}")


def unregister() -> None:
    try:
        _remove()
    except Exception as e:
        logger.warning(f"agent-session-ids: could not remove the '{NAME}' contentview: {e!r}")
