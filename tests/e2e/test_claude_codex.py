"""Agents other than pi, for real: Claude Code and Codex CLI through a real mitmdump running the
addon, with the gateway stand-in recording what arrived at OpenRouter."""

from __future__ import annotations

import json

import pytest

import agent_clients as ac
import harness
from harness import header

pytestmark = pytest.mark.e2e


@pytest.fixture
def proxy(addon_proxy):
    return addon_proxy


_ok = harness.assert_ran


def sent(proxy, api) -> list[str]:
    return [json.loads(r["body"])["session_id"] for r in proxy.requests() if r["api"] == api]


def test_claude_code_sessions(claude, proxy, dirs):
    home, work = dirs
    env = ac.claude_env(proxy, home)
    _ok(ac.run_claude(["-p", "first session [[bash: echo 1]]"], env, work), proxy)
    _ok(ac.run_claude(["-p", "second session [[bash: echo 2]]"], env, work), proxy)
    _ok(ac.run_claude(["-c", "-p", "continued [[bash: echo 3]]"], env, work), proxy)
    ids = sent(proxy, "anthropic-messages")
    assert len(ids) == 6
    # the first request (before the file exists) already carries the session's own id
    assert ids[0] == ids[1] != ids[2] == ids[3] == ids[4] == ids[5]
    files = {ac.claude_session_id(f): f for f in ac.claude_session_files(home, work)}
    assert set(files) == {ids[0], ids[2]}
    first = proxy.requests()[0]
    assert first["session_ids"]["session"]["agent"] == "claude"
    assert "x-claude-code-session-id" in first["session_ids"]["session"]["source"]
    # by the time `-c` runs, the continued session's file exists, and each request names it
    continued = [r for r in proxy.requests() if r["api"] == "anthropic-messages"][4:]
    assert all(r["session_ids"]["session"]["file"] == str(files[ids[2]]) for r in continued)


def test_claude_code_named_session_uses_its_title(claude, proxy, dirs):
    home, work = dirs
    env = ac.claude_env(proxy, home)
    _ok(ac.run_claude(["-n", "Release Notes", "-p", "named [[bash: echo n]]"], env, work), proxy)
    (session_file,) = ac.claude_session_files(home, work)
    uuid = ac.claude_session_id(session_file)
    assert sent(proxy, "anthropic-messages") == [f"release-notes-{uuid[-8:]}"] * 2


def test_codex_sessions(codex, proxy, dirs):
    home, work = dirs
    env = ac.codex_env(proxy, home)
    _ok(ac.run_codex_exec("first session [[bash: echo 1]]", env, work), proxy)
    _ok(ac.run_codex_exec("second session [[bash: echo 2]]", env, work), proxy)
    _ok(ac.run_codex_exec("resumed [[bash: echo 3]]", env, work, resume="--last"), proxy)
    ids = sent(proxy, "openai-responses")
    assert len(ids) == 6
    assert ids[0] == ids[1] != ids[2] == ids[3] == ids[4] == ids[5]
    files = {ac.codex_session_id(f): f for f in ac.codex_session_files(home)}
    assert set(files) == {ids[0], ids[2]}
    records = [r for r in proxy.requests() if r["api"] == "openai-responses"]
    assert all(r["http_version"] == "HTTP/2.0" for r in records)
    assert records[0]["session_ids"]["session"]["agent"] == "codex"
    assert records[0]["session_ids"]["session"]["file"] == str(files[ids[0]])


def test_codex_thread_name_becomes_the_label(codex, proxy, dirs):
    home, work = dirs
    env = ac.codex_env(proxy, home)
    _ok(ac.run_codex_exec("to be named", env, work), proxy)
    (rollout,) = ac.codex_session_files(home)
    uuid = ac.codex_session_id(rollout)
    ac.codex_set_thread_name(home, uuid, "Fix Flaky Test")
    _ok(ac.run_codex_exec("after naming", env, work, resume="--last"), proxy)
    assert sent(proxy, "openai-responses")[-1] == f"fix-flaky-test-{uuid.replace('-', '')[-8:]}"
    assert header(proxy.requests()[-1], "session-id") == uuid  # the client's own header is untouched
