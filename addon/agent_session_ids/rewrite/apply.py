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


def _not_for(rule: Rule, headers, top: dict | None, ours: dict[str, str], fallback_ids: bool) -> str | None:
    """Why `rule` sets nothing for a fallback session, in words; None: it applies."""
    if not (rule.fallback and fallback_ids):
        return "fallback IDs are off (session_fallback)" if rule.fallback else f"rule {rule.name} uses no fallback IDs"
    sent = client_field_sent(headers, top, rule.client_fields, ours)
    if sent:
        # never weaker than the client: its own session id stays as it is
        return f"rule {rule.name}: the client sent its own session in {sent}; kept"
    return None


# what an action changed: (the value before, the value as sent); None: nothing (set already, or not set)
Changed = tuple[object, str] | None


def _set_header(out: Outcome, action: SetAction, value: str, headers, ours: dict[str, str]) -> Changed:
    # a header this addon set in the first pass is no client's: set it again
    mode = "replace" if ours.get(action.key.lower()) == headers.get(action.key) else action.if_present
    try:
        old, changed = set_header(headers, action.key, value, mode, action.json_key, action.max_entries)
    except RewriteError as e:  # a JSON header of the client's that cannot take the member
        out.skipped.append(f"{action.describe}: {e}")
        return None
    if not changed:
        return None
    # with a json_key, what is sent is the client's object with the member merged in
    return old, headers[action.key] if action.json_key else value


class _BodyEdit:
    """The body as the actions change it: the bytes as read until an action changes them."""

    __slots__ = ("body", "problem", "new")

    def __init__(self, body: Body | None, problem: str | None) -> None:
        self.body, self.problem = body, problem
        self.new = body.raw if body is not None else b""

    def set(self, out: Outcome, rule: Rule, action: SetAction, value: str) -> Changed:
        body = self.body
        if body is None:
            out.warnings.append(
                (f"body-{rule.name}-{self.problem}", f"rule {rule.name}: {action.describe} not set: {self.problem}")
            )
            out.skipped.append(f"{action.describe}: {self.problem}")
            return None
        top, as_read = body.members, self.new is body.raw
        if as_read and action.body_path[0] not in top:
            # the common case: a member the body does not have, added to its bytes
            self.new = insert_member(self.new, action.body_path, value, not top)
            return None, value
        try:
            text = body.decoded() if as_read else self.new.decode("utf-8")
            parsed = top if as_read and not isinstance(top.get(action.body_path[0]), Elided) else None
            new_text, old, changed = set_field(text, action.body_path, value, action.if_present, parsed)
        except RewriteError as e:
            out.warnings.append((f"body-{rule.name}-{e}", f"rule {rule.name}: {action.describe} not set: {e}"))
            out.skipped.append(f"{action.describe}: {e}")
            return None
        if not changed:
            return None
        self.new = new_text.encode("utf-8", "surrogatepass")
        return old, value


def _note_change(out: Outcome, rule: Rule, action: SetAction, old: object, value: str) -> None:
    if action.target == "header":
        if action.key.lower() in SECRET_HEADERS:
            old, value = "<redacted>" if old is not None else None, "<redacted>"
        out.set_headers[action.key.lower()] = value
    out.changes.append({"rule": rule.name, "target": action.describe, "before": old, "after": value})


def apply_rules(
    rules: list[Rule],
    session: Session,
    headers,
    body: Body | None,
    body_problem: str | None,
    ours: dict[str, str],
    privacy: bool,
    fallback_ids: bool,
) -> Outcome:
    """Set each rule's fields for `session`. Headers are set in place; the new body is returned.
    `ours`: headers an earlier pass of this addon set (lower-case name -> value), no client's."""
    out = Outcome()
    top = body.members if body is not None else None
    edit = _BodyEdit(body, body_problem)
    for rule in rules:
        if session.fallback and (why_not := _not_for(rule, headers, top, ours, fallback_ids)):
            out.skipped.append(why_not)
            continue
        for action in rule.actions:
            value = _rendered(action, session, privacy)
            if not value:  # an empty value says nothing (a session with no name): not set
                continue
            if action.target == "header":
                changed = _set_header(out, action, value, headers, ours)
            else:
                changed = edit.set(out, rule, action, value)
            if changed is not None:
                _note_change(out, rule, action, *changed)
    if body is not None and edit.new is not body.raw:
        out.body = edit.new
    return out
