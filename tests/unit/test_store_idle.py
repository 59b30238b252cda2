"""The JSONL store's background work ends: header-only files do not keep it busy (issue 9, defect 1)."""

from __future__ import annotations

import json

from agent_session_ids.resolution import jsonl_store
from agent_session_ids.resolution.agents import CLAUDE_FORMAT, PI_FORMAT
from agent_session_ids.resolution.conversation import fingerprint
from agent_session_ids.resolution.jsonl_store import JsonlStore


def _drain(store: JsonlStore, limit: int = 10_000) -> int:
    """Run the background steps until none is left; how many it took (limit: it never ends)."""
    for n in range(limit):
        if not store.catch_up():
            return n
    return limit


def _header_only_pi(folder, i):
    path = folder / f"2026-05-06T12-00-{i:02d}-000Z_{i:08d}-0000-4000-8000-000000000000.jsonl"
    path.write_text(json.dumps({"type": "session", "version": 3, "id": f"{i:08d}-0000-4000-8000-000000000000",
                                "timestamp": "2026-05-06T12:00:00.000Z", "cwd": "/w"}) + "\n")
    return path


def test_claude_summary_only_file_leaves_the_store_idle(tmp_path):
    # older Claude Code versions wrote files of only summary lines: no header, no user turn
    (tmp_path / "aaaaaaaa-0000-4000-8000-000000000000.jsonl").write_text(
        "".join(json.dumps({"type": "summary", "summary": f"s{i}", "leafUuid": "x"}) + "\n" for i in range(3)))
    store = JsonlStore()
    assert store.candidates(str(tmp_path), CLAUDE_FORMAT, first_users=[fingerprint("hi")]) == []
    assert _drain(store) < 10
    assert not store.behind


def test_many_header_only_files_leave_the_store_idle_and_a_grown_one_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl_store, "WAIT_RECHECK_S", 0.0)
    paths = [_header_only_pi(tmp_path, i) for i in range(300)]
    store = JsonlStore()
    want = fingerprint("the first question")
    assert store.candidates(str(tmp_path), PI_FORMAT, first_users=[want]) == []
    assert _drain(store) < 1000
    assert not store.behind
    # a request that finds its conversation in no file does not start background work again
    assert store.candidates(str(tmp_path), PI_FORMAT, first_users=[want]) == []
    assert not store.behind
    # the newest header-only file gets its first user turn (Codex writes the header first)
    newest = max(paths, key=lambda p: p.stat().st_mtime)
    with open(newest, "a") as f:
        f.write(json.dumps({"type": "message", "message": {"role": "user", "content": "the first question"}}) + "\n")
    (found,) = store.candidates(str(tmp_path), PI_FORMAT, first_users=[want])
    assert found.path == str(newest)
    assert not store.behind


def test_forgets_the_least_recently_used_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl_store, "MAX_FOLDERS", 3)
    store = JsonlStore()
    for i in range(5):
        folder = tmp_path / f"f{i}"
        folder.mkdir()
        _header_only_pi(folder, i)
        store.candidates(str(folder), PI_FORMAT, ids=[f"{i:08d}-0000-4000-8000-000000000000"])
    assert list(store._dirs) == [str(tmp_path / f"f{i}") for i in (2, 3, 4)]
