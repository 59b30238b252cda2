"""opencode and Oh My Pi, for real, through a real mitmdump running the addon, with the gateway
stand-in recording what arrived. Each client is installed from npm into the harness cache; a
client that cannot install or start is skipped with the exact error.

Gemini CLI and Qwen Code have files of their own: tests/e2e/test_gemini_cli.py and
tests/e2e/test_qwen_code.py.
"""

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


def _model_requests(proxy, host: str) -> list[dict]:
    return [r for r in proxy.requests() if r["host"] == host and r["method"] == "POST" and r["api"] != "other"]


def test_opencode_openrouter_session_affinity(opencode, proxy, dirs):
    home, work = dirs
    env = ac.opencode_env(proxy, home, work)
    _ok(ac.run_opencode(["run", "-m", ac.OPENCODE_OPENROUTER_MODEL, "hello [[bash: echo hi]]"], env, work), proxy)
    (session,) = ac.opencode_sessions(home)
    sid, directory = session
    assert sid.startswith("ses_") and directory == str(work)
    records = _model_requests(proxy, "openrouter.ai")
    assert len(records) >= 2  # the title request and the turn (tool call, then text)
    for r in records:
        assert r["path"] == "/api/v1/chat/completions"
        assert header(r, "x-session-affinity") == sid
        meta = r["session_ids"]
        assert meta["session"]["agent"] == "opencode"
        assert meta["session"]["id"] == sid
        assert "x-session-affinity" in meta["session"]["source"]
        assert meta["process"]["comm"] == "opencode"
        assert json.loads(r["body"])["session_id"] == sid


def test_opencode_zen_keeps_its_own_header(opencode, proxy, dirs):
    home, work = dirs
    env = ac.opencode_env(proxy, home, work)
    _ok(ac.run_opencode(["run", "-m", ac.OPENCODE_ZEN_MODEL, "hello [[bash: echo hi]]"], env, work), proxy)
    (session,) = ac.opencode_sessions(home)
    sid = session[0]
    records = _model_requests(proxy, "opencode.ai")
    assert records
    for r in records:
        assert r["path"].startswith("/zen/")
        assert header(r, "x-opencode-session") == sid
        meta = r["session_ids"]
        assert meta["session"]["agent"] == "opencode"
        assert meta["session"]["id"] == sid
        assert "x-opencode-session" in meta["session"]["source"]
        assert not [c for c in meta["changes"] if c["target"] == "header x-opencode-session"]


def test_omp_openrouter_session(omp, proxy, dirs):
    home, work = dirs
    env = ac.omp_env(proxy, home)
    _ok(ac.run_omp(["-p", "--model", ac.OMP_MODEL, "--no-lsp", "hello [[bash: echo hi]]"], env, work), proxy)
    (session_file,) = ac.omp_session_files(home)
    uuid = ac.omp_session_id(session_file)
    records = _model_requests(proxy, "openrouter.ai")
    assert len(records) == 2  # tool call, then text
    for r in records:
        body = json.loads(r["body"])
        assert body["prompt_cache_key"] == uuid
        assert body["session_id"] == uuid
        meta = r["session_ids"]
        assert meta["session"]["agent"] == "omp"
        assert meta["session"]["id"] == uuid
        assert "prompt_cache_key" in meta["session"]["source"]
        assert meta["process"]["comm"] == "omp"
    # once the file is there it is named
    assert records[-1]["session_ids"]["session"]["file"] == str(session_file)
