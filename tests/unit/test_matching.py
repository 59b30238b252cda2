"""Which host a rule is matched against: the gateway the request really goes to, in every proxy mode."""

from __future__ import annotations

import os

import pytest
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow, tutils

from agent_session_ids.rules import load_rules_dir
from agent_session_ids.rules.matching import RuleSet, gateway_host

RULES_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "rules")
PATH = "/api/v1/chat/completions"


@pytest.fixture(scope="module")
def rules():
    return RuleSet(load_rules_dir(RULES_DIR))


def flow(mode: str, host: str, host_header: str | None):
    """A POST as mitmproxy hands it to the addon: request.host is where it goes, the Host header
    is what the client sent (or what mitmproxy rewrote it to)."""
    headers = [(b"content-type", b"application/json")]
    if host_header is not None:
        headers.append((b"host", host_header.encode()))
    f = tflow.tflow(
        req=tutils.treq(host=host, port=443, path=PATH.encode(), method=b"POST", content=b"{}", headers=headers)
    )
    f.client_conn.proxy_mode = ProxyMode.parse(mode)
    return f


def names(rules, f):
    return [r.name for r in rules.matching(f)]


def test_reverse_mode_with_keep_host_header_matches_the_upstream(rules):
    # --mode reverse:https://openrouter.ai --set keep_host_header=true: the agent's Host header
    # names the proxy, the request goes to openrouter.ai
    f = flow("reverse:https://openrouter.ai", "openrouter.ai", "127.0.0.1:8080")
    assert f.request.pretty_host == "127.0.0.1"
    assert gateway_host(f) == "openrouter.ai"
    assert names(rules, f) == ["openrouter-session-id"]


def test_reverse_mode_without_keep_host_header_matches_the_upstream(rules):
    # mitmproxy rewrites the Host header to the upstream
    f = flow("reverse:https://openrouter.ai", "openrouter.ai", "openrouter.ai")
    assert names(rules, f) == ["openrouter-session-id"]


def test_reverse_mode_to_another_upstream_is_not_matched_by_a_host_header(rules):
    # the client claims openrouter.ai, but the proxy sends the request elsewhere: no rule
    f = flow("reverse:https://llm.internal.example", "llm.internal.example", "openrouter.ai")
    assert gateway_host(f) == "llm.internal.example"
    assert names(rules, f) == []


@pytest.mark.parametrize("mode", ["regular", "transparent", "local", "wireguard"])
def test_other_modes_prefer_the_host_header(rules, mode):
    # transparent-like modes put the destination IP in request.host; the Host header names the gateway
    f = flow(mode, "104.18.2.115", "openrouter.ai")
    assert gateway_host(f) == "openrouter.ai"
    assert names(rules, f) == ["openrouter-session-id"]


def test_regular_mode_without_a_host_header_uses_the_request_host(rules):
    f = flow("regular", "openrouter.ai", None)
    assert "host" not in f.request.headers
    assert names(rules, f) == ["openrouter-session-id"]
