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
    path.write_text(
        json.dumps(
            {
                "type": "session",
                "version": 3,
                "id": f"{i:08d}-0000-4000-8000-000000000000",
                "timestamp": "2026-05-06T12:00:00.000Z",
                "cwd": "/w",
            }
        )
        + "\n"
    )
    return path


def test_claude_summary_only_file_leaves_the_store_idle(tmp_path):
    # older Claude Code versions wrote files of only summary lines: no header, no user turn
    (tmp_path / "aaaaaaaa-0000-4000-8000-000000000000.jsonl").write_text(
        "".join(json.dumps({"type": "summary", "summary": f"s{i}", "leafUuid": "x"}) + "\n" for i in range(3))
    )
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


# -- every way a file can stay "behind" ends (issue 17, defect 1) ---------------------------------

_SID = "0199bbbb-0000-7000-8000-000000000001"


def _pi_with_tail(folder, tail: bytes, filler_bytes: int = 0):
    """A pi session file: its session line, a user turn, `filler_bytes` of answered turns, then `tail`."""
    path = folder / f"2026-11-29T10-00-00-000Z_{_SID}.jsonl"
    lines = [
        {"type": "session", "version": 3, "id": _SID, "timestamp": "2026-11-29T10:00:00.000Z", "cwd": "/w"},
        {"type": "message", "message": {"role": "user", "content": "the question"}},
    ]
    body = "".join(json.dumps(x) + "\n" for x in lines).encode()
    turn = (json.dumps({"type": "message", "message": {"role": "assistant", "content": "x" * 1000}}) + "\n").encode()
    body += turn * (filler_bytes // len(turn))
    path.write_bytes(body + tail)
    return path


PARTIAL = b'{"type":"message","id":"a2","partial'


def test_a_partial_last_line_leaves_the_store_idle(tmp_path):
    path = _pi_with_tail(tmp_path, PARTIAL)
    store = JsonlStore()
    (found,) = store.candidates(str(tmp_path), PI_FORMAT, ids=[_SID])
    assert found.path == str(path)
    assert _drain(store) < 5
    assert not store.behind


def test_a_partial_last_line_past_the_budget_is_read_and_then_leaves_the_store_idle(tmp_path):
    path = _pi_with_tail(tmp_path, PARTIAL, filler_bytes=jsonl_store.TAIL_BUDGET + (1 << 20))
    store = JsonlStore()
    (found,) = store.candidates(str(tmp_path), PI_FORMAT, ids=[_SID])
    assert store.behind  # the budget ended before the file's end: more to read between requests
    assert _drain(store) < 10
    assert not store.behind
    # every whole line was counted, and the completed line is read at the next look
    (found,) = store.candidates(str(tmp_path), PI_FORMAT, ids=[_SID])
    n = found.n_assistant
    with open(path, "ab") as f:
        f.write(b'":false,"message":{"role":"assistant","content":"done"}}\n')
    (found,) = store.candidates(str(tmp_path), PI_FORMAT, ids=[_SID])
    assert found.n_assistant == n + 1
    assert not store.behind


def test_a_partial_last_line_longer_than_a_chunk_leaves_the_store_idle(tmp_path):
    _pi_with_tail(tmp_path, PARTIAL + b"y" * (jsonl_store.CHUNK * 2 + 17))
    store = JsonlStore()
    store.candidates(str(tmp_path), PI_FORMAT, ids=[_SID])
    assert _drain(store) < 10
    assert not store.behind


def test_a_file_cut_short_while_behind_leaves_the_store_idle(tmp_path):
    path = _pi_with_tail(tmp_path, b"", filler_bytes=jsonl_store.TAIL_BUDGET + (1 << 20))
    store = JsonlStore()
    store.candidates(str(tmp_path), PI_FORMAT, ids=[_SID])
    assert store.behind
    with open(path, "r+b") as f:  # shorter than the size the scan goes on to
        f.truncate(1 << 20)
    assert _drain(store) < 10
    assert not store.behind


def test_a_file_that_grew_by_a_partial_line_while_behind_leaves_the_store_idle(tmp_path):
    path = _pi_with_tail(tmp_path, b"", filler_bytes=jsonl_store.TAIL_BUDGET + (1 << 20))
    store = JsonlStore()
    store.candidates(str(tmp_path), PI_FORMAT, ids=[_SID])
    with open(path, "ab") as f:
        f.write(PARTIAL)
    assert _drain(store) < 10
    store.candidates(str(tmp_path), PI_FORMAT, ids=[_SID])
    assert _drain(store) < 10
    assert not store.behind
