"""The addon's mitmproxy side, with mitmproxy's own test helpers and the addon instance itself
(tctx.script would hide configure errors, see ../shared/reference/mitmproxy.md)."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow, tutils

from agent_session_ids.addon import DEFAULT_RULES, SessionIds
from agent_session_ids.rules import active_rules, load_rules_dir


def run(coro):
    return asyncio.run(coro)


def flow(host="openrouter.ai", path="/api/v1/chat/completions", body=None, headers=()):
    body = (
        body
        if body is not None
        else json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    )
    f = tflow.tflow(
        req=tutils.treq(
            host=host,
            port=443,
            path=path.encode(),
            method=b"POST",
            content=body,
            headers=[(b"content-type", b"application/json"), *headers],
        )
    )
    f.request.headers["content-length"] = str(len(body))
    return f


async def with_addon(tmp_path, fn, **options):
    addon = SessionIds()
    with taddons.context(addon) as tctx:
        options.setdefault("session_rules", DEFAULT_RULES)
        tctx.configure(addon, confdir=str(tmp_path), **options)
        return await fn(addon, tctx)


def test_openrouter_body_gets_a_session_id_and_the_flow_says_why(tmp_path):
    async def go(addon, tctx):
        f = flow()
        await addon.request(f)
        return f

    f = run(with_addon(tmp_path, go))
    body = json.loads(f.request.content)
    # the test flow has no local process and names no session: an ID minted for its conversation
    assert body["session_id"].startswith("ephemeral-")
    assert f.request.headers["content-length"] == str(len(f.request.raw_content))
    assert f.comment.startswith(f"session {body['session_id']} ") and "body.session_id" in f.comment
    assert f.marked == ":label:"
    meta = f.metadata["session_ids"]
    assert meta["changes"] == [
        {"rule": "openrouter-session-id", "target": "body.session_id", "before": None, "after": body["session_id"]}
    ]
    assert meta["session"]["fallback"] is True


def test_unmatched_hosts_pass_untouched(tmp_path):
    async def go(addon, tctx):
        f = flow(host="api.example.com")
        before = f.request.get_state()
        await addon.request(f)
        return f, before

    f, before = run(with_addon(tmp_path, go))
    assert f.request.get_state() == before and not f.comment and "session_ids" not in f.metadata


def test_gzip_body_stays_gzip_with_a_correct_length(tmp_path):
    async def go(addon, tctx):
        raw = json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode()
        f = flow(body=gzip.compress(raw), headers=[(b"content-encoding", b"gzip")])
        await addon.request(f)
        return f

    f = run(with_addon(tmp_path, go))
    assert f.request.headers["content-encoding"] == "gzip"
    assert int(f.request.headers["content-length"]) == len(f.request.raw_content)
    assert "session_id" in json.loads(gzip.decompress(f.request.raw_content))


def test_an_unparsable_body_passes_unchanged_and_is_logged_once(tmp_path, caplog):
    async def go(addon, tctx):
        flows = [flow(body=b"{not json") for _ in range(3)]
        for f in flows:
            await addon.request(f)
        return flows

    with caplog.at_level(logging.WARNING):
        flows = run(with_addon(tmp_path, go))
    assert all(f.request.raw_content == b"{not json" for f in flows)
    assert all(f.marked == ":warning:" and "not rewritten" in f.comment for f in flows)
    assert sum("not set" in r.getMessage() for r in caplog.records) == 1


def test_headers_are_set_even_when_the_body_is_streamed(tmp_path):
    async def go(addon, tctx):
        f = flow(host="opencode.ai", path="/zen/v1/messages")
        f.request.stream = True
        await addon.requestheaders(f)
        f.request.data.content = None  # what a streamed request looks like in `request`
        await addon.request(f)
        return f

    f = run(with_addon(tmp_path, go))
    assert f.request.headers["x-opencode-session"] == f.metadata["session_ids"]["session"]["id"]
    assert f.metadata["session_ids"]["skipped"] == []  # the rule sets headers only
    assert f.request.headers["x-opencode-client"] == "unknown"


def test_client_headers_are_kept_when_the_rule_says_keep(tmp_path):
    async def go(addon, tctx):
        f = flow(host="opencode.ai", path="/zen/v1/chat/completions", headers=[(b"x-opencode-session", b"ses_mine")])
        await addon.request(f)
        return f

    f = run(with_addon(tmp_path, go))
    assert f.request.headers["x-opencode-session"] == "ses_mine"
    assert [c["target"] for c in f.metadata["session_ids"]["changes"]] == ["header x-opencode-client"]


def test_a_rule_can_opt_out_of_fallback_ids(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.yaml").write_text(
        "rules:\n  - name: strict\n    match: {host: openrouter.ai}\n    fallback: false\n"
        "    set: [{header: x-s, value: '{session.id}'}]\n"
    )

    async def go(addon, tctx):
        f = flow()
        await addon.request(f)
        return f

    f = run(with_addon(tmp_path, go, session_rules=str(rules)))
    assert "x-s" not in f.request.headers
    assert "uses no fallback IDs" in f.comment


def test_bad_rules_at_runtime_raise_and_keep_the_good_ones(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "b.yaml").write_text("rules:\n  - name: r\n    match: {hots: x}\n    set: []\n")

    async def go(addon, tctx):
        addon.running()
        with pytest.raises(exceptions.OptionsError, match=r"b\.yaml:3: unknown key 'hots'"):
            tctx.configure(addon, session_rules=str(bad))
        assert tctx.options.session_rules == DEFAULT_RULES
        return len(addon.rules.rules)

    assert run(with_addon(tmp_path, go)) == len(
        active_rules(load_rules_dir(DEFAULT_RULES))
    )  # the shipped ones that are on


def test_bad_rules_at_startup_log_one_error_line(tmp_path, caplog):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "b.yaml").write_text("rules: [\n")

    async def go(addon, tctx):
        return None

    with caplog.at_level(logging.ERROR):
        run(with_addon(tmp_path, go, session_rules=str(bad)))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "b.yaml:2: YAML syntax error" in errors[0]


def test_a_body_that_could_stream_but_did_not_still_gets_body_rules(tmp_path):
    from typing import Optional

    async def main():
        addon = SessionIds()
        with taddons.context(addon) as tctx:
            # mitmproxy's proxy server addon owns this option; it is not loaded here
            tctx.options.add_option("stream_large_bodies", Optional[str], None, "")  # noqa: UP045 - the type mitmproxy declares this option with (a value, no annotation)
            tctx.configure(addon, confdir=str(tmp_path), session_rules=DEFAULT_RULES, stream_large_bodies="1m")
            f = flow()
            del f.request.headers["content-length"]  # chunked: the length is not known in requestheaders
            await addon.requestheaders(f)
            assert "session_ids" in f.metadata and b"session_id" not in f.request.content
            await addon.request(f)  # mitmproxy buffered it after all: the body rule applies now
            decided = addon.cmd_sessions().split("How each session was decided:\n", 1)[1]
            assert decided.splitlines()[1].split()[1] == "1"  # one request, counted once
            return f

    f = run(main())
    assert "session_id" in json.loads(f.request.content)


def test_never_weaker_than_the_client_header_names_the_session(tmp_path):
    """OpenRouter prefers the body's session_id to the x-session-id header: the addon writes the
    client's own id there, never a fallback (issue 10)."""

    async def go(addon, tctx):
        f = flow(headers=[(b"x-session-id", b"0199aaaa-0000-7000-8000-000000000001")])
        await addon.request(f)
        return f

    f = run(with_addon(tmp_path, go))
    assert json.loads(f.request.content)["session_id"] == "0199aaaa-0000-7000-8000-000000000001"
    assert "request header x-session-id" in f.metadata["session_ids"]["session"]["source"]
    assert "process not read" in f.comment


def test_never_weaker_than_the_client_a_fallback_leaves_its_field_alone(tmp_path):
    # a client session value that is no usable id (a space in it) still is the client's: no fallback over it
    body = json.dumps({"model": "m", "prompt_cache_key": "my key with spaces"}).encode()

    async def go(addon, tctx):
        f = flow(body=body)
        await addon.request(f)
        return f

    f = run(with_addon(tmp_path, go))
    assert f.request.content == body
    assert "the client sent its own session in body prompt_cache_key; kept" in f.comment


def test_two_passes_agree_the_header_set_first_is_set_again_from_the_body(tmp_path):
    """A body that may stream gets its headers in requestheaders, from what the headers say; when
    it did not stream, request sees the body. The header the first pass set is the addon's own,
    not the client's: the second pass sets it again, so headers and body name one session."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "two passes"}]}).encode()

    async def go(addon, tctx):
        f = flow(host="opencode.ai", path="/zen/v1/chat/completions", body=body)
        f.request.headers["content-length"] = str(len(body))
        await addon.requestheaders(f)
        first = f.request.headers.get("x-opencode-session")
        await addon.request(f)
        return f, first

    async def main():
        from typing import Optional

        addon = SessionIds()
        with taddons.context(addon) as tctx:
            # the proxy server's
            tctx.options.add_option("stream_large_bodies", Optional[str], None, "")  # noqa: UP045 - the type mitmproxy declares this option with (a value, no annotation)
            tctx.configure(addon, confdir=str(tmp_path), session_rules=DEFAULT_RULES, stream_large_bodies="10")
            return await go(addon, tctx)

    f, first = run(main())
    meta = f.metadata["session_ids"]
    assert first and first.startswith("connection-")  # the first pass had no conversation
    sid = meta["session"]["id"]
    assert sid.startswith("ephemeral-")  # the second decided from the conversation
    assert f.request.headers["x-opencode-session"] == sid[-30:]
    assert {c["target"]: c["after"] for c in meta["changes"]}["header x-opencode-session"] == sid[-30:]


def test_a_replayed_flow_is_sent_as_recorded_and_touches_no_live_state(tmp_path):
    """A replay's old address pair may now belong to another process: no lookup is started for it,
    nothing is counted or bound, and its request goes out as it was recorded (issue 9, defect 5)."""

    async def go(addon, tctx):
        f = flow()
        f.is_replay = "request"
        before = f.request.get_state()
        await addon.requestheaders(f)
        await addon.request(f)
        return (
            f,
            before,
            dict(addon.connections.lookups),
            dict(addon.live.sessions),
            dict(addon.runner.finder.resolver.on),
        )

    f, before, lookups, live, on = run(with_addon(tmp_path, go))
    assert f.request.get_state() == before
    assert "session_ids" not in f.metadata
    assert lookups == {} and live == {} and on == {}
