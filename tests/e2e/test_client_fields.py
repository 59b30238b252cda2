"""A client's own session field is its session toward every gateway (issue 22): for every field of
agents.CLIENT_SESSION_FIELDS, a fixture request that names its session there, sent through a real
mitmdump with the addon to every gateway the shipped rules rewrite by default; the gateway's own
field gets that session, and a value that fails the safe-id rule is not taken.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import harness
import odd_requests
from agent_session_ids.resolution.agents import CLIENT_SESSION_FIELDS
from agent_session_ids.rules import load_rules_dir
from harness import Mitmdump

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "addon" / "session_ids.py"

RULES = {r.name: r for r in load_rules_dir(ROOT / "rules")}
# (host, path) of each gateway whose rule is on by default
GATEWAYS = [
    ("openrouter.ai", "/api/v1/chat/completions"),
    ("opencode.ai", "/zen/v1/chat/completions"),
    ("api.opper.ai", "/v3/compat/chat/completions"),
    ("oai.helicone.ai", "/v1/chat/completions"),
    ("api.portkey.ai", "/v1/chat/completions"),
    ("gateway.ai.cloudflare.com", "/v1/acct/gw/openai/chat/completions"),
    ("api.openai.com", "/v1/chat/completions"),
    ("api.fireworks.ai", "/inference/v1/chat/completions"),
    ("api.llmgateway.io", "/v1/chat/completions"),
]


def _request(proxy, host, path, field, value):
    body: dict = {"model": "m", "stream": False, "messages": [{"role": "user", "content": f"hi {field.name}"}]}
    headers = [("Content-Type", "application/json"), ("User-Agent", "some-agent/1.0")]
    if field.where == "header":
        headers.append((field.name, value))
    else:
        at = body
        *parents, last = field.name.split(".")
        for part in parents:
            at = at.setdefault(part, {})
        at[last] = value
    raw = odd_requests.build_h1("POST", path, host, headers, json.dumps(body).encode())
    status, _ = odd_requests.send_h1(proxy.port, str(proxy.ca_cert), host, raw)
    assert status == 200
    return proxy.requests()[-1]


@pytest.fixture(scope="module")
def proxy():
    with Mitmdump(scripts=[ADDON, harness.STANDIN_SCRIPT]) as p:
        yield p


@pytest.mark.parametrize("field", CLIENT_SESSION_FIELDS, ids=lambda f: f"{f.where}-{f.name}")
def test_a_clients_own_session_field_is_its_session_at_every_gateway(proxy, field):
    for n, (host, path) in enumerate(GATEWAYS):
        value = f"client-{field.name.replace('.', '-').replace('_', '-')}-{n}"
        record = _request(proxy, host, path, field, value)
        session = record["session_ids"]["session"]
        assert (host, session["id"]) == (host, value)
        assert session["source"].startswith(f"request {field.where} {field.name}"), session["source"]
        assert session["fallback"] is False
        # the gateway's own field was set from it (Opper: the session's trace UUID), or it is the
        # gateway's own field and the client's value was kept there
        afters = [str(c["after"]) for c in record["session_ids"]["changes"]]
        rule = RULES[record["session_ids"]["rules"][0]["name"]]
        targets = {(a.target, a.key.lower() if a.target == "header" else a.key) for a in rule.actions}
        kept = (field.where, field.name) in targets  # the gateway reads this very field: the client's value stays
        assert kept or any(value[-30:] in a or a == session["trace_uuid"] for a in afters), (host, afters)


def test_a_value_that_is_no_safe_id_is_not_taken(proxy):
    field = next(f for f in CLIENT_SESSION_FIELDS if f.name == "agent-session-id")
    record = _request(proxy, "oai.helicone.ai", "/v1/chat/completions", field, "-not a safe id")
    session = record["session_ids"]["session"]
    assert session["id"] != "-not a safe id" and "agent-session-id" not in session["source"]
