"""Smoke tests of Claude Code and Codex CLI through a real mitmdump that loads ONLY the gateway
stand-in (no addon under test): each client runs, makes two model requests in one run through a
scripted shell tool call, names its session in every request, and writes its session file."""

from __future__ import annotations

import json

import pytest

import agent_clients as ac
import harness
from harness import Mitmdump, header, read_jsonl

pytestmark = pytest.mark.e2e


@pytest.fixture
def proxy():
    with Mitmdump(scripts=[harness.STANDIN_SCRIPT]) as p:
        yield p


def _ok(result, proxy):
    assert result.returncode == 0, (result.stdout, result.stderr, proxy.output()[-3000:])
    assert not proxy.blocked_connects()
    return result


def _model_requests(proxy, api):
    return [r for r in proxy.requests() if r["api"] == api]


def _claude_ids(record) -> tuple[str, str]:
    body = json.loads(record["body"])
    return (header(record, "x-claude-code-session-id"), json.loads(body["metadata"]["user_id"])["session_id"])


# --------------------------------------------------------------------------- Claude Code


def test_claude_one_run_two_requests_via_bash_and_session_file(claude, proxy, dirs):
    home, work = dirs
    env = ac.claude_env(proxy, home)
    result = _ok(ac.run_claude(["-p", "make a file [[bash: echo hi > made.txt]]"], env, work), proxy)
    assert result.stdout.strip() == "ok"
    assert (work / "made.txt").read_text().strip() == "hi"  # the Bash tool really ran

    records = proxy.requests()
    assert [(r["host"], r["method"], r["path"]) for r in records] == [
        ("openrouter.ai", "POST", "/api/v1/messages?beta=true")
    ] * 2  # quiet: nothing else
    first, second = records
    assert first["http_version"] == "HTTP/1.1"
    assert (first["answer"], first["tool_name"]) == ("tool_call", "Bash")
    assert second["answer"] == "text"
    assert header(first, "x-api-key") == harness.FAKE_KEYS["ANTHROPIC_API_KEY"]

    (session_file,) = ac.claude_session_files(home, work)
    uuid = ac.claude_session_id(session_file)
    assert _claude_ids(first) == _claude_ids(second) == (uuid, uuid)
    lines = read_jsonl(session_file)
    first_with_cwd = next(line for line in lines if "cwd" in line)
    assert (first_with_cwd["sessionId"], first_with_cwd["cwd"]) == (uuid, str(work))
    assert not ac.claude_pid_files(home)  # <pid>.json is removed when claude exits


def test_claude_second_run_is_a_new_session_and_continue_keeps_it(claude, proxy, dirs):
    home, work = dirs
    env = ac.claude_env(proxy, home)
    _ok(ac.run_claude(["-p", "one [[bash: echo 1]]"], env, work), proxy)
    _ok(ac.run_claude(["-p", "two [[bash: echo 2]]"], env, work), proxy)
    _ok(ac.run_claude(["-c", "-p", "three [[bash: echo 3]]"], env, work), proxy)
    ids = [_claude_ids(r)[0] for r in _model_requests(proxy, "anthropic-messages")]
    assert len(ids) == 6
    assert ids[0] == ids[1] != ids[2] == ids[3] == ids[4] == ids[5]
    files = ac.claude_session_files(home, work)
    assert sorted(ac.claude_session_id(f) for f in files) == sorted({ids[0], ids[2]})


def test_claude_title_request_without_tools_gets_text(claude, proxy, dirs):
    # Not quiet: Claude also asks the gateway for a session title, with "tools": [] and the
    # prompt (directives included) inside. The stand-in must answer it with text.
    home, work = dirs
    env = ac.claude_env(proxy, home, quiet=False)
    _ok(ac.run_claude(["-p", "titled [[bash: echo t]]"], env, work), proxy)
    messages = _model_requests(proxy, "anthropic-messages")
    assert len(messages) == 3
    title = [r for r in messages if json.loads(r["body"]).get("tools") == []]
    assert len(title) == 1 and title[0]["answer"] == "text"
    assert len({_claude_ids(r)[0] for r in messages}) == 1


# --------------------------------------------------------------------------- Codex CLI


def _codex_ids(record) -> set[str]:
    body = json.loads(record["body"])
    meta = json.loads(header(record, "x-codex-turn-metadata"))
    return {
        header(record, "session-id"),
        header(record, "thread-id"),
        meta["session_id"],
        meta["thread_id"],
        body["prompt_cache_key"],
        body["client_metadata"]["session_id"],
    }


def test_codex_one_exec_two_requests_via_exec_command_and_rollout_file(codex, proxy, dirs):
    home, work = dirs
    env = ac.codex_env(proxy, home)
    result = _ok(ac.run_codex_exec("make a file [[bash: echo hi > made.txt]]", env, work), proxy)
    assert result.stdout.strip() == "ok"
    assert (work / "made.txt").read_text().strip() == "hi"  # exec_command really ran

    records = proxy.requests()
    assert [(r["host"], r["method"], r["path"]) for r in records] == [
        ("openrouter.ai", "POST", "/api/v1/responses")
    ] * 2  # quiet config: nothing else
    first, second = records
    assert first["http_version"] == "HTTP/2.0"
    assert (first["answer"], first["tool_name"]) == ("tool_call", "exec_command")
    assert second["answer"] == "text"
    assert header(first, "authorization") == "Bearer " + harness.FAKE_KEYS["OPENROUTER_API_KEY"]

    (rollout,) = ac.codex_session_files(home)
    uuid = ac.codex_session_id(rollout)
    assert _codex_ids(first) == _codex_ids(second) == {uuid}
    meta = ac.codex_session_meta(rollout)
    assert (meta["id"], meta["cwd"]) == (uuid, str(work))


def test_codex_second_exec_is_new_and_resume_last_keeps_it(codex, proxy, dirs):
    home, work = dirs
    env = ac.codex_env(proxy, home)
    _ok(ac.run_codex_exec("one [[bash: echo 1]]", env, work), proxy)
    _ok(ac.run_codex_exec("two [[bash: echo 2]]", env, work), proxy)
    _ok(ac.run_codex_exec("three [[bash: echo 3]]", env, work, resume="--last"), proxy)
    ids = [_codex_ids(r) for r in _model_requests(proxy, "openai-responses")]
    assert len(ids) == 6 and all(len(s) == 1 for s in ids)
    ids = [s.pop() for s in ids]
    assert ids[0] == ids[1] != ids[2] == ids[3] == ids[4] == ids[5]
    files = ac.codex_session_files(home)
    assert sorted(ac.codex_session_id(f) for f in files) == sorted({ids[0], ids[2]})


# --------------------------------------------------------------------------- names


def test_claude_name_flag_writes_custom_title(claude, proxy, dirs):
    home, work = dirs
    env = ac.claude_env(proxy, home)
    _ok(ac.run_claude(["-n", "My Named Session", "-p", "named [[bash: echo n]]"], env, work), proxy)
    (session_file,) = ac.claude_session_files(home, work)
    uuid = ac.claude_session_id(session_file)
    lines = read_jsonl(session_file)
    assert lines[0] == {"type": "custom-title", "customTitle": "My Named Session", "sessionId": uuid}
    assert lines[1] == {"type": "agent-name", "agentName": "My Named Session", "sessionId": uuid}


def test_codex_thread_name_via_app_server_and_resume_by_name(codex, proxy, dirs):
    home, work = dirs
    env = ac.codex_env(proxy, home)
    _ok(ac.run_codex_exec("to be named", env, work), proxy)
    (rollout,) = ac.codex_session_files(home)
    uuid = ac.codex_session_id(rollout)
    assert ac.codex_session_index(home) == []
    assert ac.codex_set_thread_name(home, uuid, "My Codex Name") == {"threadId": uuid, "threadName": "My Codex Name"}
    (entry,) = ac.codex_session_index(home)
    assert (entry["id"], entry["thread_name"]) == (uuid, "My Codex Name")
    _ok(ac.run_codex_exec("resumed by name", env, work, resume="My Codex Name"), proxy)
    last = _model_requests(proxy, "openai-responses")[-1]
    assert _codex_ids(last) == {uuid}
