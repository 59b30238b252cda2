"""The resolution pipeline with plain data and real store files: the request's own id first, the
store by id, the conversation without a process, and the fallback last (issue 10)."""

from __future__ import annotations

import json

import pytest

from agent_session_ids.resolution import ids
from agent_session_ids.resolution.conversation import Conversation, fingerprint
from agent_session_ids.resolution.model import Process
from agent_session_ids.resolution.pipeline import Evidence, Pipeline, Seen, requested_id
from agent_session_ids.resolution import agents

UNREADABLE = Seen(None, "another user's process (uid 65534)")
OPENROUTER_FIELDS = (("body", "session_id"), ("header", "x-session-id"), ("body", "prompt_cache_key"))


def write_pi_session(home, cwd, sid, first="hello", name=None, answers=1, stamp="2026-11-29T10-00-00-000Z"):
    folder = home / ".pi" / "agent" / "sessions" / agents.encode_pi(cwd, {})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stamp}_{sid}.jsonl"
    lines = [{"type": "session", "version": 3, "id": sid, "timestamp": "2026-11-29T10:00:00.000Z", "cwd": cwd},
             {"type": "message", "message": {"role": "user", "content": [{"type": "text", "text": first}]}}]
    lines += [{"type": "message", "message": {"role": "assistant", "content": "ok"}}] * answers
    if name:
        lines.append({"type": "session_info", "name": name})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def pipeline(home, extra=()):
    return Pipeline({"HOME": str(home)}, extra, recheck=lambda proc: proc)  # plain data: no /proc


def ev(headers=None, body=None, first="hello", answers=0, conn="c1", fields=OPENROUTER_FIELDS):
    conv = Conversation(fingerprint(first), answers + 1, answers) if first else None
    return Evidence({k.lower(): v for k, v in (headers or {}).items()}, body, conv, conn, fields)


def test_the_id_the_request_names_is_the_session_without_a_process(home):
    p = pipeline(home)
    s1, _ = p.resolve(ev({"x-session-id": "0199aaaa-0000-7000-8000-000000000001"}), UNREADABLE, 1000.0)
    assert s1.id == "0199aaaa-0000-7000-8000-000000000001" and not s1.fallback
    assert "another user's process" in s1.source
    # `pi -c` on another connection: the same id, the same trace UUID
    s2, _ = p.resolve(ev({"x-session-id": s1.id}, conn="c2", answers=1), UNREADABLE, 1010.0)
    assert (s2.id, s2.trace_uuid) == (s1.id, s1.trace_uuid)


def test_a_chosen_id_that_is_no_uuid_is_kept_exactly(home):
    p = pipeline(home)
    s, _ = p.resolve(ev({"x-session-id": "feature-x"}), UNREADABLE, 1000.0)
    assert s.id == s.label == "feature-x"


def test_the_store_by_id_gives_the_name_and_the_file_trace_without_a_process(home):
    path = write_pi_session(home, "/work/proj", "feature-x", name="Fix the parser")
    p = pipeline(home)
    s, _ = p.resolve(ev({"x-session-id": "feature-x"}), UNREADABLE, 1000.0)
    assert s.file == str(path) and s.agent == "pi" and s.name == "Fix the parser"
    assert s.label == "fix-the-parser-featurex"
    assert s.trace_uuid == ids.trace_uuid(str(path))


def test_extra_homes_are_searched(tmp_path):
    container_home = tmp_path / "container-home"
    path = write_pi_session(container_home, "/src", "0199aaaa-0000-7000-8000-0000000000c0")
    s, _ = Pipeline({"HOME": str(tmp_path / "nobody")}, [str(container_home)]).resolve(
        ev({"x-session-id": "0199aaaa-0000-7000-8000-0000000000c0"}), UNREADABLE, 1000.0)
    assert s.file == str(path)


def test_an_honoured_client_field_is_the_session_for_an_unknown_client(home):
    p = pipeline(home)
    s, _ = p.resolve(ev(body={"session_id": "my-own"}), UNREADABLE, 1000.0)
    assert s.id == "my-own" and not s.fallback
    # hostile values are no ids: the conversation decides instead
    s2, _ = p.resolve(ev(body={"session_id": "../../etc/passwd"}), UNREADABLE, 1000.0)
    assert s2.id != "../../etc/passwd"


def test_the_conversation_finds_a_continued_session_across_cwd_folders_without_a_process(home):
    write_pi_session(home, "/a", "0199aaaa-0000-7000-8000-00000000000a", first="other question")
    path = write_pi_session(home, "/b", "0199aaaa-0000-7000-8000-00000000000b", first="fix the tests", answers=2)
    s, _ = pipeline(home).resolve(ev(first="fix the tests", answers=2), UNREADABLE, 1000.0)
    assert s.file == str(path) and s.id == "0199aaaa-0000-7000-8000-00000000000b" and s.agent == "pi"


def test_a_new_session_without_a_process_keeps_its_minted_id_once_its_file_appears(home):
    p = pipeline(home)
    first, _ = p.resolve(ev(first="write a poem"), UNREADABLE, 1000.0)
    assert first.id.startswith("ephemeral-")
    again, _ = p.resolve(ev(first="write a poem", conn="c2"), UNREADABLE, 1001.0)
    assert again.id == first.id  # a retry of the first request
    path = write_pi_session(home, "/poems", "0199aaaa-0000-7000-8000-0000000000ee", first="write a poem")
    later, _ = p.resolve(ev(first="write a poem", answers=1, conn="c3"), UNREADABLE, 1002.0)
    assert (later.id, later.trace_uuid, later.file) == (first.id, first.trace_uuid, str(path))
    # `pi -c` much later, on a fresh proxy that loaded the saved state
    restarted = pipeline(home)
    restarted.resolver.load_state(p.resolver.export_state())
    cont, _ = restarted.resolve(ev(first="write a poem", answers=3, conn="c4"), UNREADABLE, 90_000.0)
    assert (cont.id, cont.trace_uuid) == (first.id, first.trace_uuid)


def test_the_connection_fallback_is_the_last_resort(home):
    s, _ = pipeline(home).resolve(ev(first=None), UNREADABLE, 1000.0)
    assert s.fallback and s.id.startswith("connection-") and "names no session" in s.source


def test_a_readable_program_that_is_no_agent_gets_its_process_fallback_unless_it_names_a_session(home):
    curl = Process(pid=4242, start_ticks=7, started_at=900.0, boot_id="b", uid=0, cwd="/", comm="curl", exe="/usr/bin/curl")
    p = pipeline(home)
    s, _ = p.resolve(ev(), Seen(curl), 1000.0)
    assert s.fallback and s.id.startswith("process-4242-")
    named, _ = p.resolve(ev({"x-session-id": "abc-1"}), Seen(curl), 1000.0)
    assert named.id == "abc-1" and not named.fallback


def test_the_agent_is_recognised_from_the_request_signs():
    assert agents.recognise_request({"x-claude-code-session-id": "x"}).name == "claude"
    assert agents.recognise_request({"user-agent": "claude-cli/2.1.332 (external, cli)"}).name == "claude"
    assert agents.recognise_request({"x-codex-turn-metadata": "{}"}).name == "codex"
    assert agents.recognise_request({"x-opencode-client": "pi"}).name == "pi"
    assert agents.recognise_request({"user-agent": "curl/8"}) is None


def test_requested_id_prefers_the_agents_own_field():
    e = ev({"x-claude-code-session-id": "0199aaaa-0000-7000-8000-000000000123", "x-session-id": "other"})
    assert requested_id(agents.CLAUDE, e) == ("0199aaaa-0000-7000-8000-000000000123", "header x-claude-code-session-id")
