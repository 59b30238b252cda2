"""Applying rules with plain data: a dict for headers, text for the body."""

from __future__ import annotations

import json

from agent_session_ids.resolution.model import Session
from agent_session_ids.rewrite.apply import apply_rules
from agent_session_ids.rewrite.body import read_body
from agent_session_ids.rules import parse_rules

RULES = parse_rules(
    """
rules:
  - name: r
    match: {host: gw.example}
    client_fields: [{header: x-session-id}]
    set:
      - {header: x-session-id, value: "{session.id}"}
      - {body: session_id, value: "{session.label}"}
""",
    "r.yaml",
)


def session(fallback=False, name=None):
    return Session(
        "0199aaaa-0000-7000-8000-0000000000aa",
        "fix-it-000000aa" if name else "0199aaaa-0000-7000-8000-0000000000aa",
        "t",
        "pi",
        "test",
        name=name,
        fallback=fallback,
    )


def test_sets_header_and_body_and_says_what_changed():
    headers = {}
    out = apply_rules(RULES, session(name="Fix it"), headers, read_body(b'{"model": "m"}'), None, {}, False, True)
    assert headers == {"x-session-id": "0199aaaa-0000-7000-8000-0000000000aa"}
    assert json.loads(out.body) == {"model": "m", "session_id": "fix-it-000000aa"}
    assert [c["target"] for c in out.changes] == ["header x-session-id", "body.session_id"]


def test_a_fallback_never_goes_over_the_clients_own_field():
    headers = {"x-session-id": "the client's"}
    out = apply_rules(RULES, session(fallback=True), headers, read_body(b"{}"), None, {}, False, True)
    assert headers == {"x-session-id": "the client's"} and out.body is None and out.changes == []
    assert out.skipped == ["rule r: the client sent its own session in header x-session-id; kept"]


def test_a_body_that_cannot_be_edited_is_a_warning_and_a_skip():
    out = apply_rules(RULES, session(), {}, None, "the body is streamed", {}, False, True)
    assert out.body is None and out.skipped == ["body.session_id: the body is streamed"]
    assert out.warnings == [("body-r-the body is streamed", "rule r: body.session_id not set: the body is streamed")]
