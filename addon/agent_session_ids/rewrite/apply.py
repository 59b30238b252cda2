"""Applying the matched rules to one request, for a resolved session: what is set, what is
skipped and why. No mitmproxy here: headers are any mapping with get and item assignment
(mitmproxy's Headers in the addon), the body as body.read_body read it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from ..jsontext import dotted, insert_member
from ..resolution.model import Session
from ..rules import Rule, SetAction
from .body import Body, Elided
from .fields import RewriteError, blank, render, set_field, set_header

SECRET_HEADERS = {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie", "x-goog-api-key"}


@dataclass
class Outcome:
    body: bytes | None = None  # the new body; None: the body stays as it is
    changes: list[dict] = field(default_factory=list)  # {"rule", "target", "before", "after"}
    skipped: list[str] = field(default_factory=list)  # what was not set, and why
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (key, message): to log once
    set_headers: dict[str, str] = field(default_factory=dict)  # lower-case name -> the value shown as set


def client_field_sent(headers, body: dict | None, fields, ours: dict[str, str]) -> str | None:
    """The first of a gateway's honoured client fields the request carries, in words."""
    for client_field in fields:
        target, key = client_field
        if target == "header":
            value = headers.get(key)
            if not blank(value) and ours.get(key) != value and client_field.header_value(value):
                return client_field.describe
        elif not blank(dotted(body, key)):
            return f"body {key}"
    return None


@functools.lru_cache(maxsize=512)
def _rendered(action: SetAction, session: Session, privacy: bool) -> str:
    """What an action sets for a session: the same at each request of the session (both frozen)."""
    return render(action, session.fields(privacy=privacy))


def apply_rules(rules: list[Rule], session: Session, headers, body: Body | None, body_problem: str | None,
                ours: dict[str, str], privacy: bool, fallback_ids: bool) -> Outcome:
    """Set each rule's fields for `session`. Headers are set in place; the new body is returned.
    `ours`: headers an earlier pass of this addon set (lower-case name -> value), no client's."""
    out = Outcome()
    top = body.members if body is not None else None
    new_body = body.raw if body is not None else None
    for rule in rules:
        if session.fallback and not (rule.fallback and fallback_ids):
            out.skipped.append(f"rule {rule.name} uses no fallback IDs" if not rule.fallback
                               else "fallback IDs are off (session_fallback)")
            continue
        if session.fallback:
            sent = client_field_sent(headers, top, rule.client_fields, ours)
            if sent:
                # never weaker than the client: its own session id stays as it is
                out.skipped.append(f"rule {rule.name}: the client sent its own session in {sent}; kept")
                continue
        for action in rule.actions:
            value = _rendered(action, session, privacy)
            if not value:  # an empty value says nothing (a session with no name): not set
                continue
            if action.target == "header":
                # a header this addon set in the first pass is no client's: set it again
                mode = "replace" if ours.get(action.key.lower()) == headers.get(action.key) else action.if_present
                try:
                    old, changed = set_header(headers, action.key, value, mode, action.json_key, action.max_entries)
                except RewriteError as e:  # a JSON header of the client's that cannot take the member
                    out.skipped.append(f"{action.describe}: {e}")
                    continue
                if action.json_key:
                    value = headers.get(action.key)  # what is sent: the client's object, the member merged in
            elif new_body is None:
                out.warnings.append((f"body-{rule.name}-{body_problem}",
                                     f"rule {rule.name}: {action.describe} not set: {body_problem}"))
                out.skipped.append(f"{action.describe}: {body_problem}")
                continue
            elif new_body is body.raw and action.body_path[0] not in top:
                # the common case: a member the body does not have, added to its bytes
                new_body, old, changed = insert_member(new_body, action.body_path, value, not top), None, True
            else:
                try:
                    text = body.decoded() if new_body is body.raw else new_body.decode("utf-8")
                    parsed = top if new_body is body.raw and not isinstance(top.get(action.body_path[0]), Elided) \
                        else None
                    new_text, old, changed = set_field(text, action.body_path, value, action.if_present, parsed)
                    if changed:
                        new_body = new_text.encode("utf-8", "surrogatepass")
                except RewriteError as e:
                    out.warnings.append((f"body-{rule.name}-{e}", f"rule {rule.name}: {action.describe} not set: {e}"))
                    out.skipped.append(f"{action.describe}: {e}")
                    continue
            if changed:
                if action.target == "header" and action.key.lower() in SECRET_HEADERS:
                    old, value = "<redacted>" if old is not None else None, "<redacted>"
                out.changes.append({"rule": rule.name, "target": action.describe, "before": old, "after": value})
                if action.target == "header":
                    out.set_headers[action.key.lower()] = value
    if body is not None and new_body is not body.raw:
        out.body = new_body
    return out
