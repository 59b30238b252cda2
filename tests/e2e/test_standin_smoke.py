"""Smoke tests of the e2e harness: real pi (0.73.1, 0.87.1 and 1.6.0) through a real mitmdump
that loads ONLY the gateway stand-in (no addon under test)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import harness
from harness import Mitmdump, agent_env, header, pi_session_files, read_jsonl, run_pi

pytestmark = pytest.mark.e2e

OPENROUTER_OPENAI = ["--provider", "openrouter", "--model", "openai/gpt-4o-mini"]


@pytest.fixture
def proxy():
    with Mitmdump(scripts=[harness.STANDIN_SCRIPT]) as p:
        yield p


def _run(pi_version, proxy, dirs, args, **kw):
    home, work = dirs
    env = agent_env(proxy, home, pi_version=pi_version)
    result = run_pi(pi_version, args, env, work, **kw)
    assert result.returncode == 0, (result.stdout, result.stderr, proxy.output()[-3000:])
    assert not proxy.blocked_connects()
    return result


def _session_uuid(path: Path) -> str:
    return read_jsonl(path)[0]["id"]


def test_openrouter_openai_model(pi_version, proxy, dirs):
    result = _run(pi_version, proxy, dirs, OPENROUTER_OPENAI + ["-p", "hello there"])
    assert result.stdout.strip() == "ok"
    (req,) = proxy.requests()
    assert (req["host"], req["method"], req["path"]) == ("openrouter.ai", "POST", "/api/v1/chat/completions")
    assert header(req, "authorization") == "Bearer " + harness.FAKE_KEYS["OPENROUTER_API_KEY"]
    body = json.loads(req["body"])
    assert body["stream"] is True
    assert body["messages"][-1] == {"role": "user", "content": [{"type": "text", "text": "hello there"}]}
    (session_file,) = pi_session_files(*dirs)
    if harness.pi_sends_session_id(pi_version):
        assert header(req, "x-session-id") == _session_uuid(session_file)
    else:
        assert header(req, "x-session-id") is None
    if harness.pi_release(pi_version) >= (1,):
        assert header(req, "user-agent").startswith(f"pi/{pi_version} (")


def test_openrouter_anthropic_model(pi_version, proxy, dirs):
    args = ["--provider", "openrouter", "--model", "anthropic/claude-sonnet-4.5", "-p", "hi"]
    result = _run(pi_version, proxy, dirs, args)
    assert result.stdout.strip() == "ok"
    (req,) = proxy.requests()
    assert req["host"] == "openrouter.ai"
    if harness.pi_release(pi_version) >= (0, 87):  # Anthropic Messages API via openrouter.ai/api
        assert req["path"] == "/api/v1/messages?beta=true"
        assert req["api"] == "anthropic-messages"
        (session_file,) = pi_session_files(*dirs)
        assert header(req, "x-session-id") == _session_uuid(session_file)
    else:  # 0.73.1 maps this model to the OpenAI-compatible endpoint
        assert req["path"] == "/api/v1/chat/completions"


def test_opencode(pi_version, proxy, dirs):
    args = ["--provider", "opencode", "--model", "claude-sonnet-4-5", "-p", "hi"]
    result = _run(pi_version, proxy, dirs, args)
    assert result.stdout.strip() == "ok"
    (req,) = proxy.requests()
    assert req["host"] == "opencode.ai"
    assert req["path"].split("?")[0] == harness.pi_opencode_messages_path(pi_version)
    assert header(req, "x-api-key") == harness.FAKE_KEYS["OPENCODE_API_KEY"]
    (session_file,) = pi_session_files(*dirs)
    if harness.pi_sends_session_id(pi_version):
        assert header(req, "x-opencode-session") == _session_uuid(session_file)
    else:
        assert header(req, "x-opencode-session") is None
    expected_client = "pi" if harness.pi_sends_opencode_client(pi_version) else None
    assert header(req, "x-opencode-client") == expected_client


def test_opencode_responses_api(pi_version, proxy, dirs):
    args = ["--provider", "opencode", "--model", "gpt-5", "-p", "hi [[bash: echo r]]"]
    result = _run(pi_version, proxy, dirs, args)
    assert result.stdout.strip() == "ok"
    reqs = proxy.requests()
    path = harness.pi_opencode_responses_path(pi_version)
    assert [(r["path"], r["answer"]) for r in reqs] == [(path, "tool_call"), (path, "text")]
    (session_file,) = pi_session_files(*dirs)
    uuid = _session_uuid(session_file)
    assert json.loads(reqs[0]["body"])["prompt_cache_key"] == uuid
    assert header(reqs[0], "x-client-request-id") == uuid


def test_opper_custom_provider(pi_version, proxy, dirs):
    harness.write_opper_models_json(dirs[0], pi_version)
    args = ["--provider", "opper", "--model", harness.OPPER_MODEL, "-p", "hi"]
    result = _run(pi_version, proxy, dirs, args)
    assert result.stdout.strip() == "ok"
    (req,) = proxy.requests()
    assert (req["host"], req["path"]) == ("api.opper.ai", "/v3/compat/chat/completions")
    assert header(req, "authorization") == "Bearer " + harness.FAKE_KEYS["OPPER_API_KEY"]


def test_bash_directive_makes_two_requests_from_one_process(pi_version, proxy, dirs):
    result = _run(pi_version, proxy, dirs, OPENROUTER_OPENAI + ["-p", "go [[bash: echo hi-from-tool]]"])
    assert result.stdout.strip() == "ok"
    first, second = proxy.requests()
    assert (first["answer"], first["tool_command"]) == ("tool_call", "echo hi-from-tool")
    assert second["answer"] == "text"
    assert first["client_port"] == second["client_port"]  # same keep-alive connection
    messages = json.loads(second["body"])["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[-1]["content"] == "hi-from-tool\n"


def test_bash_directive_count_form(pi_version, proxy, dirs):
    _run(pi_version, proxy, dirs, OPENROUTER_OPENAI + ["-p", "[[bash*2: true]] [[reply: done]]"])
    assert [r["answer"] for r in proxy.requests()] == ["tool_call", "tool_call", "text"]


def test_session_file_written(pi_version, proxy, dirs):
    home, work = dirs
    _run(pi_version, proxy, dirs, OPENROUTER_OPENAI + ["-p", "remember me [[bash: true]]"])
    (session_file,) = pi_session_files(home, work)
    assert session_file.parent == harness.pi_session_dir(home, work)
    entries = read_jsonl(session_file)
    head = entries[0]
    assert head["type"] == "session" and head["cwd"] == str(work)
    assert session_file.name.endswith("_" + head["id"] + ".jsonl")
    users = [e["message"] for e in entries if e["type"] == "message" and e["message"]["role"] == "user"]
    assert users[0]["content"] == [{"type": "text", "text": "remember me [[bash: true]]"}]
    roles = [e["message"]["role"] for e in entries if e["type"] == "message"]
    assert roles[-3:] == ["assistant", "toolResult", "assistant"]


def test_nested_pi_subagent(pi_version, proxy, dirs):
    prompt = "parent [[bash: pi --provider openrouter --model openai/gpt-4o-mini -p child-task]]"
    _run(pi_version, proxy, dirs, OPENROUTER_OPENAI + ["-p", prompt])
    reqs = proxy.requests()
    assert [r["answer"] for r in reqs] == ["tool_call", "text", "text"]
    parent1, child, parent2 = reqs
    assert json.loads(child["body"])["messages"][-1]["content"][0]["text"] == "child-task"
    assert parent1["client_port"] == parent2["client_port"] != child["client_port"]
    assert len(pi_session_files(*dirs)) == 2


def test_proxy_restart_keeps_port_and_ca(pi_version, proxy, dirs):
    _run(pi_version, proxy, dirs, OPENROUTER_OPENAI + ["-p", "before"])
    port, ca = proxy.port, proxy.ca_cert.read_bytes()
    proxy.restart()
    assert proxy.port == port and proxy.ca_cert.read_bytes() == ca
    _run(pi_version, proxy, dirs, OPENROUTER_OPENAI + ["-c", "-p", "after"])
    reqs = proxy.requests()
    assert len(reqs) == 2  # the log survives the restart
    texts = [m["content"][0]["text"] for m in json.loads(reqs[1]["body"])["messages"] if m["role"] == "user"]
    assert texts == ["before", "after"]
    assert proxy.output().count("listening at") == 2


FAILING_SCRIPT = """
class Boom:
    def request(self, flow):
        raise RuntimeError("boom")
addons = [Boom()]
"""


def test_guard_blocks_network_when_an_earlier_script_raises(tmp_path):
    failing = tmp_path / "failing.py"
    failing.write_text(FAILING_SCRIPT)
    with Mitmdump(scripts=[failing, harness.STANDIN_SCRIPT]) as p:
        ctx = ssl.create_default_context(cafile=str(p.ca_cert))
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"https": p.proxy_url}),
            urllib.request.HTTPSHandler(context=ctx),
        )
        req = urllib.request.Request(
            "https://openrouter.ai/api/v1/chat/completions",
            data=json.dumps({"model": "x", "messages": []}).encode(),
            headers={"content-type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            opener.open(req, timeout=10)
        assert err.value.code == 502
        assert p.requests() == []  # the stand-in was skipped for this flow...
        assert [b["address"] for b in p.blocked_connects()] == ["openrouter.ai:443"]  # ...but guarded
        assert "boom" in p.output()


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    "path,body",
    [
        ("/api/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "[[bash: ls]]"}]}),
        (
            "/api/v1/messages",
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "[[bash: ls]]"}]},
        ),
        (
            "/api/v1/responses",
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": "[[bash: ls]]"}]}]},
        ),
    ],
)
def test_standin_answers_all_api_shapes(tmp_path, path, body, stream):
    with Mitmdump(scripts=[harness.STANDIN_SCRIPT]) as p:
        ctx = ssl.create_default_context(cafile=str(p.ca_cert))
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"https": p.proxy_url}),
            urllib.request.HTTPSHandler(context=ctx),
        )
        req = urllib.request.Request(
            "https://api.opper.ai" + path,
            data=json.dumps({**body, "stream": stream}).encode(),
            headers={"content-type": "application/json", "X-Mixed-Case": "v"},
        )
        with opener.open(req, timeout=10) as resp:
            text = resp.read().decode()
            ctype = resp.headers["content-type"]
        (rec,) = p.requests()
        assert ["X-Mixed-Case", "v"] in rec["headers"]
        assert rec["answer"] == "tool_call" and rec["tool_command"] == "ls"
        if stream:
            assert ctype.startswith("text/event-stream")
            assert '"bash"' in text
            assert "[DONE]" in text or "message_stop" in text or "response.completed" in text
        else:
            obj = json.loads(text)
            assert "usage" in obj and '"bash"' in text
