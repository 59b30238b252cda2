"""Reverse mode: a real mitmdump with ``--mode reverse:https://openrouter.ai``, the client sending
plain HTTP to 127.0.0.1 (no proxy settings, no CA to trust): a raw HTTP client, and real pi,
Claude Code and Codex with their base URL at the proxy.

mitmproxy puts the upstream (openrouter.ai) in ``flow.request.host``. The Host header is rewritten
to it, unless ``keep_host_header`` is set: then it still names the proxy, ``127.0.0.1:<port>``. The
OpenRouter rule must match in both cases. The gateway stand-in (loaded last) answers every request
itself, and ``connection_strategy=lazy`` (set by the harness) keeps mitmproxy from dialing
openrouter.ai first, so nothing leaves the machine: ``blocked_connects()`` stays empty.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from pathlib import Path

import pytest

import agent_clients as ac
import harness
from harness import Mitmdump, agent_env, header, pi_agent_dir, pi_session_files, read_jsonl, run_pi

pytestmark = pytest.mark.e2e

ADDON = str(Path(__file__).resolve().parents[2] / "addon" / "session_ids.py")
REVERSE = ["--mode", "reverse:https://openrouter.ai"]
#: an agent in reverse mode needs neither proxy variables nor the mitmproxy CA
NO_PROXY_NO_CA = {
    k: None for k in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE")
}


@pytest.fixture(params=[False, True], ids=["host-rewritten", "keep_host_header"])
def keep_host_header(request) -> bool:
    return request.param


@pytest.fixture
def reverse_proxy(keep_host_header):
    sets = ["keep_host_header=true"] if keep_host_header else []
    with Mitmdump(scripts=[ADDON, harness.STANDIN_SCRIPT], sets=sets, extra_args=REVERSE) as p:
        yield p


def post(port: int, path: str, body: bytes, headers: dict | None = None) -> tuple[int, bytes]:
    """One plain-HTTP request straight to the proxy's port, as an agent with a base URL of
    http://127.0.0.1:<port> sends it (http.client uses no proxy settings)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_a_plain_http_client_gets_the_openrouter_session_id(reverse_proxy, keep_host_header):
    sent = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    raw = json.dumps(sent).encode()
    status, answer = post(reverse_proxy.port, "/api/v1/chat/completions", raw)
    assert status == 200, (answer, reverse_proxy.output()[-3000:])
    assert json.loads(answer)["object"] == "chat.completion"  # the stand-in's answer came back

    (req,) = reverse_proxy.requests()
    assert not reverse_proxy.blocked_connects()
    # where mitmproxy sends it: the upstream of the reverse spec
    assert (req["method"], req["scheme"], req["port"], req["path"]) == (
        "POST",
        "https",
        443,
        "/api/v1/chat/completions",
    )
    expected_host = f"127.0.0.1:{reverse_proxy.port}" if keep_host_header else "openrouter.ai"
    assert [v for k, v in req["headers"] if k.lower() == "host"] == [expected_host]

    # the client is this test process: not an agent, so it gets its per-process fallback ID
    info = req["session_ids"]
    assert info and "session" in info, (req["comment"], info)
    label = info["session"]["label"]
    assert label.startswith(f"process-{os.getpid()}-")
    assert info["session"]["fallback"] is True
    assert [r["name"] for r in info["rules"]] == ["openrouter-session-id"]
    assert info["changes"] == [
        {"rule": "openrouter-session-id", "target": "body.session_id", "before": None, "after": label}
    ]
    # exactly what arrived: the client's body with session_id added, nothing else changed
    arrived = json.loads(req["body"])
    assert arrived == {**sent, "session_id": label}
    assert header(req, "content-length") == str(len(req["body"].encode()))
    assert header(req, "x-session-id") is None  # the OpenRouter rule writes the body only
    assert f"session {label} (python, fallback:" in req["comment"]


def test_a_client_sent_session_id_is_kept(reverse_proxy):
    sent = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "session_id": "mine-42"}
    status, _ = post(reverse_proxy.port, "/api/v1/chat/completions", json.dumps(sent).encode())
    assert status == 200
    (req,) = reverse_proxy.requests()
    assert json.loads(req["body"]) == sent
    assert req["session_ids"]["rules"][0]["name"] == "openrouter-session-id"  # matched, then kept
    assert req["session_ids"]["changes"] == []


def test_a_path_no_rule_names_passes_unchanged(reverse_proxy):
    raw = b'{"model": "m"}'
    status, _ = post(reverse_proxy.port, "/api/v1/embeddings", raw)
    assert status == 404  # the stand-in answers no embeddings
    (req,) = reverse_proxy.requests()
    assert req["path"] == "/api/v1/embeddings"
    assert req["body"] == raw.decode()
    assert req["session_ids"] is None and req["comment"] == ""


# --------------------------------------------------------------------------- a real pi


def test_pi_with_its_openrouter_base_url_at_the_proxy(pi_version, reverse_proxy, keep_host_header, tmp_path):
    """pi's built-in openrouter provider, its baseUrl moved to the proxy in models.json; no proxy
    variables and no CA in pi's environment."""
    home, cwd = tmp_path / "home", tmp_path / "work"
    cwd.mkdir()
    agent_dir = pi_agent_dir(home)
    agent_dir.mkdir(parents=True)
    base_url = f"http://127.0.0.1:{reverse_proxy.port}/api/v1"
    (agent_dir / "models.json").write_text(json.dumps({"providers": {"openrouter": {"baseUrl": base_url}}}))
    env = agent_env(reverse_proxy, home, extra=NO_PROXY_NO_CA, pi_version=pi_version)
    result = run_pi(pi_version, ["--provider", "openrouter", "--model", "openai/gpt-4o-mini", "-p", "hi"], env, cwd)
    harness.assert_ran(result, reverse_proxy)
    assert result.stdout.strip() == "ok"

    (req,) = reverse_proxy.requests()
    assert (req["method"], req["scheme"], req["port"], req["path"]) == (
        "POST",
        "https",
        443,
        "/api/v1/chat/completions",
    )
    expected_host = f"127.0.0.1:{reverse_proxy.port}" if keep_host_header else "openrouter.ai"
    assert header(req, "host") == expected_host
    assert header(req, "authorization") == "Bearer " + harness.FAKE_KEYS["OPENROUTER_API_KEY"]
    assert req["session_ids"] and "session" in req["session_ids"], (req["comment"], req["session_ids"])
    session = req["session_ids"]["session"]
    assert (session["agent"], session["fallback"]) == ("pi", False)
    body = json.loads(req["body"])
    assert body["session_id"] == session["label"]
    (session_file,) = pi_session_files(home, cwd)
    if harness.pi_sends_session_id(pi_version):  # pi names its session in x-session-id: that is the session
        assert header(req, "x-session-id") == body["session_id"] == read_jsonl(session_file)[0]["id"]


# --------------------------------------------------------------------------- Claude Code and Codex
@pytest.fixture
def kept_host_proxy():
    """The harder case only, to keep the real-client runs few: the Host header names the proxy."""
    with Mitmdump(scripts=[ADDON, harness.STANDIN_SCRIPT], sets=["keep_host_header=true"], extra_args=REVERSE) as p:
        yield p


def test_claude_code_with_anthropic_base_url_at_the_proxy(claude, kept_host_proxy, dirs):
    home, work = dirs
    proxy = kept_host_proxy
    # the README's line: ANTHROPIC_BASE_URL=http://127.0.0.1:8080/api (Claude appends /v1/messages)
    env = ac.claude_env(proxy, home, NO_PROXY_NO_CA, base_url=f"http://127.0.0.1:{proxy.port}/api")
    harness.assert_ran(ac.run_claude(["-p", "hi"], env, work), proxy)
    records = [r for r in proxy.requests() if r["api"] == "anthropic-messages"]
    assert records and all(r["path"].split("?")[0] == "/api/v1/messages" for r in records)
    (session_file,) = ac.claude_session_files(home, work)
    uuid = ac.claude_session_id(session_file)
    for r in records:
        assert header(r, "host") == f"127.0.0.1:{proxy.port}"
        assert (r["scheme"], r["port"]) == ("https", 443)
        assert r["session_ids"]["session"]["agent"] == "claude", (r["comment"], r["session_ids"])
        assert json.loads(r["body"])["session_id"] == uuid


def test_codex_with_base_url_at_the_proxy(codex, kept_host_proxy, dirs):
    home, work = dirs
    proxy = kept_host_proxy
    # the README's config.toml: base_url = "http://127.0.0.1:8080/api/v1" (Codex appends /responses)
    env = ac.codex_env(proxy, home, NO_PROXY_NO_CA, base_url=f"http://127.0.0.1:{proxy.port}/api/v1")
    harness.assert_ran(ac.run_codex_exec("hi", env, work), proxy)
    records = [r for r in proxy.requests() if r["api"] == "openai-responses"]
    assert records and all(r["path"] == "/api/v1/responses" for r in records)
    (rollout,) = ac.codex_session_files(home)
    uuid = ac.codex_session_id(rollout)
    for r in records:
        assert header(r, "host") == f"127.0.0.1:{proxy.port}"
        assert r["session_ids"]["session"]["agent"] == "codex", (r["comment"], r["session_ids"])
        assert json.loads(r["body"])["session_id"] == uuid


# --------------------------------------------------------------------------- several gateways


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_reverse_port_per_gateway_beside_the_regular_proxy():
    """The README's line: --mode regular --mode reverse:https://openrouter.ai@A --mode reverse:https://opencode.ai@B."""
    a, b = _free_port(), _free_port()
    modes = [
        "--mode",
        "regular",
        "--mode",
        f"reverse:https://openrouter.ai@{a}",
        "--mode",
        f"reverse:https://opencode.ai@{b}",
    ]
    with Mitmdump(scripts=[ADDON, harness.STANDIN_SCRIPT], extra_args=modes) as proxy:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
        assert post(a, "/api/v1/chat/completions", body)[0] == 200
        assert post(b, "/zen/v1/messages", body)[0] == 200
        openrouter, opencode = proxy.requests()
        assert not proxy.blocked_connects()
    label = openrouter["session_ids"]["session"]["label"]
    assert (openrouter["host"], json.loads(openrouter["body"])["session_id"]) == ("openrouter.ai", label)
    assert (opencode["host"], opencode["path"]) == ("opencode.ai", "/zen/v1/messages")
    assert header(opencode, "x-opencode-session") == opencode["session_ids"]["session"]["label"]
