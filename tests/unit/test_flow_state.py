"""The flow's record (flow_state.py): written by the request's way, read by the second pass, the
view and the ledger; never the view's metadata read back, and never saved with the flow."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from mitmproxy import io as mio
from mitmproxy.test import taddons, tflow, tutils

from agent_session_ids.addon import DEFAULT_RULES, SessionIds
from agent_session_ids.flow_state import FlowState, model_asked
from agent_session_ids.usage import ledger
from agent_session_ids.usage.addon import UsageLedger

ADDON = Path(__file__).resolve().parents[2] / "addon"
ANSWER = json.dumps(
    {
        "id": "gen-1",
        "provider": "Anthropic",
        "model": "m",
        "choices": [],
        "usage": {"prompt_tokens": 100, "completion_tokens": 5, "cost": 0.001},
    }
).encode()


def _flow(host="openrouter.ai", path="/api/v1/chat/completions", model="anthropic/claude-sonnet-4"):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "the flow's record"}]}).encode()
    f = tflow.tflow(
        req=tutils.treq(
            host=host,
            port=443,
            path=path.encode(),
            method=b"POST",
            content=body,
            headers=[(b"content-type", b"application/json")],
        )
    )
    f.request.headers["content-length"] = str(len(body))
    return f


async def _with_addons(tmp_path, go, **options):
    session_ids, usage_ledger = SessionIds(), UsageLedger()
    with taddons.context(session_ids, usage_ledger) as tctx:
        # the proxy server's
        tctx.options.add_option("stream_large_bodies", Optional[str], None, "")  # noqa: UP045 - the type mitmproxy declares this option with (a value, no annotation)
        tctx.configure(session_ids, confdir=str(tmp_path), session_rules=DEFAULT_RULES, **options)
        try:
            return await go(session_ids, usage_ledger)
        finally:
            usage_ledger.done()


def test_the_second_pass_knows_the_first_from_the_flows_record_not_from_the_views_metadata(tmp_path):
    async def go(session_ids, usage_ledger):
        f = _flow(host="opencode.ai", path="/zen/v1/chat/completions")
        await session_ids.requestheaders(f)  # the body may stream: headers set from the headers
        first = f.request.headers["x-opencode-session"]
        f.metadata.clear()  # what the user sees may be edited or dropped; the addon's own record is not
        await session_ids.request(f)  # it did not stream: the second pass
        counted = session_ids.cmd_sessions().split("How each session was decided:\n", 1)[1]
        return f, first, counted, session_ids.states.get(f)

    f, first, counted, state = asyncio.run(_with_addons(tmp_path, go, stream_large_bodies="10"))
    assert first.startswith("connection-") and state.second
    sid = f.metadata["session_ids"]["session"]["id"]
    assert f.request.headers["x-opencode-session"] == sid[-30:]  # the first pass's header is ours: set again
    assert counted.splitlines()[1].split()[1] == "1"  # one request, counted once


def test_the_ledger_line_is_built_from_the_flows_record_not_from_the_views_metadata(tmp_path):
    async def go(session_ids, usage_ledger):
        f = _flow()
        await session_ids.request(f)
        view = f.metadata["session_ids"]
        sid = view["session"]["id"]
        view["session"]["id"], view["model"] = "edited-in-mitmweb", "edited"
        f.response = tutils.tresp(content=ANSWER, headers=[(b"content-type", b"application/json")])
        usage_ledger.response(f)
        return sid

    sid = asyncio.run(_with_addons(tmp_path, go))
    (line,) = ledger.read(str(tmp_path / "agent-session-ids" / "usage.jsonl"))[0]
    assert (line["session"], line["model"], line["cost"]) == (sid, "anthropic/claude-sonnet-4", 0.001)


def test_a_rewritten_flow_saves_and_loads_with_its_metadata_and_no_record_of_ours(tmp_path):
    async def go(session_ids, usage_ledger):
        f = _flow()
        await session_ids.request(f)
        return f, session_ids.states.get(f)

    f, state = asyncio.run(_with_addons(tmp_path, go))
    assert isinstance(state, FlowState) and state.rewritten
    out = io.BytesIO()
    mio.FlowWriter(out).add(f)  # mitmproxy's -w and save_stream_file
    (loaded,) = mio.FlowReader(io.BytesIO(out.getvalue())).stream()
    assert loaded.metadata == f.metadata and list(loaded.metadata) == ["session_ids"]
    assert loaded.metadata["session_ids"]["model"] == "anthropic/claude-sonnet-4"


def test_a_flows_record_lives_as_long_as_the_flow(tmp_path):
    async def go(session_ids, usage_ledger):
        f = _flow()
        await session_ids.request(f)
        assert len(session_ids.states) == 1
        del f
        gc.collect()
        return len(session_ids.states)

    assert asyncio.run(_with_addons(tmp_path, go)) == 0  # nothing to forget, nothing that grows


def test_a_failed_pass_leaves_a_record_that_says_why_and_no_ledger_line(tmp_path):
    async def go(session_ids, usage_ledger):
        async def broken(*args):
            raise RuntimeError("no process table")

        session_ids.connections.process_of = broken
        f = _flow()
        await session_ids.request(f)
        f.response = tutils.tresp(content=ANSWER, headers=[(b"content-type", b"application/json")])
        usage_ledger.response(f)
        return f, session_ids.states.get(f)

    f, state = asyncio.run(_with_addons(tmp_path, go))
    assert state.error == "RuntimeError: no process table" and not state.rewritten
    assert f.metadata["session_ids"]["error"] == state.error and f.comment == f"session not set: {state.error}"
    assert not (tmp_path / "agent-session-ids" / "usage.jsonl").exists()


def test_the_model_asked_for_is_kept_as_utf8_can_hold_it():
    assert model_asked({"model": "anthropic/claude-sonnet-4"}) == "anthropic/claude-sonnet-4"
    assert model_asked({"model": "\ud800x"}) == "\ufffdx"  # a lone surrogate: U+FFFD, as the ledger has it
    assert model_asked({"model": "m" * 201}) is None and model_asked({"model": 3}) is None
    assert model_asked({"model": ""}) is None and model_asked(None) is None


def test_the_requests_way_imports_no_part_of_the_usage_ledger():
    code = (
        "import sys, agent_session_ids.addon; "
        "print(sorted(m for m in sys.modules if m.startswith('agent_session_ids.usage')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ADDON)},
    ).stdout
    assert out.strip() == "[]"
