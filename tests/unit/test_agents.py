"""Each agent's store, from fixture trees shaped like the real ones (records, names, encodings)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

from agent_session_ids.resolution import agents
from agent_session_ids.resolution.conversation import fingerprint
from agent_session_ids.resolution.model import Process
from agent_session_ids.resolution.resolver import Resolver
from agent_session_ids.resolution.stores import Stores

U1 = "019dbbc7-c8c5-748c-8710-3fdf6fefc083"
U2 = "5f0c9a40-1b2c-4d3e-8f90-a1b2c3d4e5f6"


def proc(home: Path, cwd: str, comm="pi", cmdline=("pi",), env=None, exe="/usr/bin/node") -> Process:
    return Process(
        4242, 777, 1_700_000_000.0, "boot", 0, cwd, comm, exe, tuple(cmdline), {"HOME": str(home), **(env or {})}
    )


def write_jsonl(path: Path, records, tail: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records) + tail)
    return path


def test_recognising_agents_by_process():
    h = Path("/h")
    assert agents.recognise(proc(h, "/w")).name == "pi"
    assert agents.recognise(proc(h, "/w", comm="claude", cmdline=("claude", "-p", "x"))).name == "claude"
    assert (
        agents.recognise(
            proc(h, "/w", comm="node", cmdline=("node", "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js"))
        ).name
        == "claude"
    )
    assert (
        agents.recognise(
            proc(
                h,
                "/w",
                comm="codex-x86_64-u",
                cmdline=("/x/codex-x86_64-unknown-linux-musl", "exec"),
                exe="/x/codex-x86_64-unknown-linux-musl",
            )
        ).name
        == "codex"
    )
    assert agents.recognise(proc(h, "/w", comm="omp", cmdline=("omp",))).name == "omp"
    assert agents.recognise(proc(h, "/w", comm="curl", cmdline=("curl", "https://pi.dev"), exe="/usr/bin/curl")) is None


def test_cwd_encodings():
    env = {"HOME": "/home/u"}
    assert agents.encode_pi("/home/u/my proj", env) == "--home-u-my proj--"
    assert agents.encode_claude("/home/u/my_proj.v2", env) == "-home-u-my-proj-v2"
    assert agents.encode_claude("/home/u/café/😀", env) == "-home-u-caf----"  # é: one unit, 😀: two
    long = "/" + "a" * 250
    enc = agents.encode_claude(long, env)
    assert enc.startswith("-" + "a" * 199 + "-") and len(enc) > 201
    assert agents.encode_omp("/home/u/code/app", env) == "-code-app"
    assert agents.encode_omp("/home/u", env) == "-"
    assert agents.encode_omp("/tmp/x/y", env) == "-tmp-x-y"
    assert agents.encode_omp("/srv/app", env) == "--srv-app--"


def test_pi_store_with_a_corrupt_line_and_a_name(tmp_path):
    cwd = "/work/proj"
    folder = tmp_path / ".pi/agent/sessions/--work-proj--"
    write_jsonl(
        folder / f"2026-05-06T12-00-00-000Z_{U1}.jsonl",
        [
            {"type": "session", "version": 3, "id": U1, "timestamp": "2026-05-06T12:00:00.000Z", "cwd": cwd},
            {"type": "message", "message": {"role": "user", "content": [{"type": "text", "text": "fix it"}]}},
            {"type": "message", "message": {"role": "assistant", "content": [], "stopReason": "stop"}},
            {"type": "session_info", "name": "Fix It"},
        ],
        tail="{corrupt line\n",
    )
    (f,) = Stores().candidates(agents.PI, proc(tmp_path, cwd), None, fingerprint("fix it"), [])
    assert (f.id, f.name, f.n_assistant, f.cwd) == (U1, "Fix It", 1, cwd)


def test_omp_store_title_slot_and_title_change(tmp_path):
    cwd = str(tmp_path / "code" / "app")
    folder = tmp_path / ".omp/agent/sessions/-code-app"
    title = json.dumps({"type": "title", "v": 1, "title": "", "source": "auto", "updatedAt": 0, "pad": ""})
    path = folder / f"2026-05-06T12-00-00-000Z_{U1}.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(
        title.ljust(255)
        + "\n"
        + "".join(
            json.dumps(r) + "\n"
            for r in [
                {"type": "session", "version": 3, "id": U1, "timestamp": "2026-05-06T12:00:00.000Z", "cwd": cwd},
                {"type": "message", "message": {"role": "user", "content": "hello omp"}},
                {"type": "message", "message": {"role": "assistant", "content": []}},
                {"type": "title_change", "title": "Renamed", "previousTitle": "", "source": "user"},
            ]
        )
        .replace(": ", ":")
        .replace(", ", ",")
    )
    p = proc(tmp_path, cwd, comm="omp", cmdline=("omp",))
    (f,) = Stores().candidates(agents.OMP, p, U1, None, [])
    assert (f.id, f.name, f.first_user, f.n_assistant) == (U1, "Renamed", fingerprint("hello omp"), 1)


CLAUDE_RECORDS = [
    {"type": "summary", "summary": "Another session's summary", "leafUuid": "x"},
    {
        "parentUuid": None,
        "isSidechain": False,
        "type": "user",
        "message": {"role": "user", "content": "add tests"},
        "uuid": "a",
        "timestamp": "2026-11-01T10:00:00.000Z",
        "sessionId": U2,
        "cwd": "CWD",
        "version": "2.1.197",
    },
    {
        "type": "assistant",
        "message": {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        "sessionId": U2,
        "cwd": "CWD",
        "timestamp": "2026-11-01T10:00:05.000Z",
    },
    {"type": "custom-title", "customTitle": "First title", "sessionId": U2},
    {"type": "custom-title", "customTitle": "Second title", "sessionId": U2},
]


def claude_tree(home: Path, cwd: str, root=".claude/projects", sub="") -> Path:
    records = json.loads(json.dumps(CLAUDE_RECORDS).replace('"CWD"', json.dumps(cwd)))
    folder = home / root / agents.encode_claude(cwd, {}) / sub
    return write_jsonl(folder / f"{U2}.jsonl", records)


def test_claude_store_non_ascii_path_and_custom_title(tmp_path):
    cwd = "/home/u/projé ct"
    path = claude_tree(tmp_path, cwd)
    subagent = path.parent / U2 / "subagents" / "agent-1.jsonl"  # nested: never a session of its own
    write_jsonl(subagent, CLAUDE_RECORDS[1:2])
    p = proc(tmp_path, cwd, comm="claude", cmdline=("claude",))
    (f,) = Stores().candidates(agents.CLAUDE, p, U2, None, [])
    assert (f.id, f.name, f.first_user, f.cwd, f.n_assistant) == (U2, "Second title", fingerprint("add tests"), cwd, 1)
    assert f.path == str(path)
    assert agents.CLAUDE.hint({"x-claude-code-session-id": U2.upper()}, None) == (U2, "header x-claude-code-session-id")


def test_claude_store_moves_with_claude_config_dir(tmp_path):
    cwd = "/w"
    claude_tree(tmp_path, cwd, root="cfg/projects")
    p = proc(tmp_path, cwd, comm="claude", env={"CLAUDE_CONFIG_DIR": str(tmp_path / "cfg")})
    assert [f.id for f in Stores().candidates(agents.CLAUDE, p, U2, None, [])] == [U2]


def test_claude_store_long_path(tmp_path):
    cwd = "/" + "/".join(["deep-folder-name"] * 14)
    assert len(agents.encode_claude(cwd, {})) > 200
    claude_tree(tmp_path, cwd)
    p = proc(tmp_path, cwd, comm="claude")
    assert [f.id for f in Stores().candidates(agents.CLAUDE, p, U2, None, [])] == [U2]


def test_long_path_found_whatever_the_hash(tmp_path):
    cwd = "/" + "/".join(["other-deep-folder"] * 14)
    enc = agents.encode_claude(cwd, {})
    records = json.loads(json.dumps(CLAUDE_RECORDS).replace('"CWD"', json.dumps(cwd)))
    write_jsonl(tmp_path / ".claude/projects" / (enc[:201] + "zzhash") / f"{U2}.jsonl", records)  # Bun.hash
    p = proc(tmp_path, cwd, comm="claude")
    assert [f.id for f in Stores().candidates(agents.CLAUDE, p, U2, None, [])] == [U2]


def test_qwen_store_has_a_chats_folder(tmp_path):
    cwd = "/w/q"
    claude_tree(tmp_path, cwd, root=".qwen/projects", sub="chats")
    p = proc(tmp_path, cwd, comm="qwen", cmdline=("qwen",))
    assert [f.id for f in Stores().candidates(agents.QWEN, p, U2, None, [])] == [U2]


def codex_meta(sid, cwd):
    return {
        "timestamp": "2026-11-01T10:00:00.000Z",
        "type": "session_meta",
        "payload": {
            "id": sid,
            "timestamp": "2026-11-01T10:00:00.000Z",
            "cwd": cwd,
            "originator": "codex_exec",
            "cli_version": "0.169.0",
            "base_instructions": {"text": "x" * 200_000},
        },
    }


def test_codex_date_tree_reads_cwd_from_the_file(tmp_path):
    day = tmp_path / ".codex/sessions/2026/11/01"
    user = {
        "type": "response_item",
        "payload": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "codex task"}]},
    }
    write_jsonl(day / f"rollout-2026-11-01T10-00-00-{U1}.jsonl", [codex_meta(U1, "/a"), user])
    write_jsonl(day / f"rollout-2026-11-01T10-05-00-{U2}.jsonl", [codex_meta(U2, "/b"), user])
    p = proc(tmp_path, "/b", comm="codex", cmdline=("codex", "exec"))
    s = Stores()
    assert [f.id for f in s.candidates(agents.CODEX, p, None, fingerprint("codex task"), [])] == [U2]
    assert [f.id for f in s.candidates(agents.CODEX, p, U1, None, [])] == [U1]  # an id is exact
    assert agents.CODEX.hint({"session-id": U1}, None) == (U1, "header session-id")
    index = tmp_path / ".codex/session_index.jsonl"
    index.write_text(json.dumps({"id": U1, "thread_name": "First", "updated_at": "x"}) + "\n")
    with open(index, "a") as out:
        out.write(json.dumps({"id": U1, "thread_name": "Renamed", "updated_at": "y"}) + "\n")
    assert [f.name for f in s.candidates(agents.CODEX, p, U1, None, [])] == ["Renamed"]


def test_gemini_store_by_registry_slug_and_by_hash(tmp_path):
    cwd = "/home/u/My App"
    gemini = tmp_path / ".gemini"
    gemini.mkdir()
    (gemini / "projects.json").write_text(json.dumps({"projects": {cwd: "my-app"}}))
    first = {
        "sessionId": U1,
        "projectHash": hashlib.sha256(cwd.encode()).hexdigest(),
        "startTime": "2026-11-01T10:00:00.000Z",
        "lastUpdated": "x",
        "kind": "main",
    }
    write_jsonl(
        gemini / "tmp/my-app/chats/session-2026-11-01T10-00-019dbbc7.jsonl",
        [first, {"id": "m1", "type": "user", "content": [{"text": "gemini task"}]}],
    )
    p = proc(tmp_path, cwd, comm="gemini", cmdline=("gemini",))
    (f,) = Stores().candidates(agents.GEMINI, p, U1, None, [])
    assert (f.id, f.first_user) == (U1, fingerprint("gemini task"))
    legacy = gemini / "tmp" / hashlib.sha256(cwd.encode()).hexdigest() / "chats"
    write_jsonl(legacy / "session-2026-10-01T10-00-5f0c9a40.jsonl", [{**first, "sessionId": U2}])
    assert [f.id for f in Stores().candidates(agents.GEMINI, p, U2, None, [])] == [U2]


def test_opencode_newest_session_of_the_cwd_from_sqlite(tmp_path):
    data = tmp_path / ".local/share/opencode"
    data.mkdir(parents=True)
    db = sqlite3.connect(data / "opencode.db")
    db.execute(
        "CREATE TABLE session (id TEXT, project_id TEXT, parent_id TEXT, slug TEXT, directory TEXT, "
        "title TEXT, version TEXT, time_created INTEGER, time_updated INTEGER, time_archived INTEGER)"
    )
    rows = [("ses_" + "a" * 26, "/w", 1000), ("ses_" + "b" * 26, "/w", 3000), ("ses_" + "c" * 26, "/other", 5000)]
    for sid, directory, t in rows:
        db.execute("INSERT INTO session VALUES (?, 'p', NULL, 's', ?, 'T', '1', ?, ?, NULL)", (sid, directory, t, t))
    db.commit()
    db.close()
    p = proc(tmp_path, "/w", comm="opencode", cmdline=("opencode",))
    (f,) = Stores().candidates(agents.OPENCODE, p, None, None, [])
    assert f.id == "ses_" + "b" * 26
    assert agents.OPENCODE.hint({"x-session-affinity": "ses_" + "d" * 26}, None)[0] == "ses_" + "d" * 26
    assert agents.OPENCODE.hint({"x-session-affinity": U1}, None) == (None, "")


def test_claude_session_resolves_from_its_header_before_its_file(tmp_path):
    cwd = "/w"
    p = proc(tmp_path, cwd, comm="claude")
    stores, r = Stores(), Resolver()
    first = r.for_process("claude", p, None, stores.candidates(agents.CLAUDE, p, U2, None, []), 1.0, U2, "header x")
    path = claude_tree(tmp_path, cwd)
    second = r.for_process("claude", p, None, stores.candidates(agents.CLAUDE, p, U2, None, []), 2.0, U2, "header x")
    assert first.id == second.id == U2 and second.file == str(path) and second.label == "second-title-" + U2[-8:]
    assert first.trace_uuid == second.trace_uuid
    os.unlink(path)


def test_qwen_parts_and_injected_reminders_match_the_request():
    from reference_conversation import from_body

    request = {
        "messages": [
            {"role": "system", "content": "sys"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>\nfiles...\n</system-reminder>"},
                    {"type": "text", "text": "the real prompt"},
                ],
            },
        ]
    }
    conv = from_body(request)
    assert conv.first_user == fingerprint("the real prompt") and conv.fresh
    gemini = {
        "contents": [
            {"role": "user", "parts": [{"text": "<session_context>x</session_context>"}, {"text": "hi gemini"}]},
            {"role": "model", "parts": [{"text": "ok"}]},
            {"role": "user", "parts": [{"text": "more"}]},
        ]
    }
    conv = from_body(gemini)
    assert (conv.first_user, conv.n_user, conv.n_assistant) == (fingerprint("hi gemini"), 2, 1)


def test_qwen_store_reads_message_parts(tmp_path):
    cwd = "/w/qp"
    folder = tmp_path / ".qwen/projects" / agents.encode_claude(cwd, {}) / "chats"
    write_jsonl(
        folder / f"{U2}.jsonl",
        [
            {
                "type": "user",
                "sessionId": U2,
                "cwd": cwd,
                "timestamp": "2026-11-01T10:00:00.000Z",
                "message": {"role": "user", "parts": [{"text": "qwen prompt"}]},
            },
            {"type": "assistant", "sessionId": U2, "cwd": cwd, "message": {"role": "model", "parts": [{"text": "ok"}]}},
        ],
    )
    p = proc(tmp_path, cwd, comm="MainThread", cmdline=("node", "/usr/local/bin/qwen", "-p", "x"))
    assert agents.recognise(p).name == "qwen"
    (f,) = Stores().candidates(agents.QWEN, p, None, fingerprint("qwen prompt"), [])
    assert (f.id, f.n_assistant) == (U2, 1)
