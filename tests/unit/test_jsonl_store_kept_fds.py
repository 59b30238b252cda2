"""The memo's check reads a grown session file through an fd kept open for it: the same answers
as reading it afresh, a replaced file is never read through the old fd, and the fds are bounded."""

from __future__ import annotations

import json
import os

from agent_session_ids.resolution import jsonl_store
from agent_session_ids.resolution.agents import PI_FORMAT
from agent_session_ids.resolution.conversation import fingerprint
from agent_session_ids.resolution.jsonl_store import JsonlStore


def _pi_file(folder, i, name=None):
    sid = f"{i:08d}-0000-4000-8000-000000000000"
    path = folder / f"2026-05-06T12-00-{i:02d}-000Z_{sid}.jsonl"
    lines = [
        {"type": "session", "version": 3, "id": sid, "timestamp": "2026-05-06T12:00:00.000Z", "cwd": "/w"},
        {"type": "message", "message": {"role": "user", "content": [{"type": "text", "text": f"task {i}"}]}},
    ]
    if name:
        lines.append({"type": "session_info", "name": name})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _append(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _known(store, folder, i):
    store.candidates(str(folder), PI_FORMAT, first_users=[fingerprint(f"task {i}")])


def test_a_name_appended_is_seen_through_the_kept_fd(tmp_path):
    path = _pi_file(tmp_path, 1, name="First")
    store = JsonlStore()
    _known(store, tmp_path, 1)
    assert store.name_now(str(path), PI_FORMAT, os.stat(path)) == (True, "First")
    _append(path, {"type": "message", "message": {"role": "assistant", "content": "ok"}})
    assert store.name_now(str(path), PI_FORMAT, os.stat(path)) == (True, "First")
    _append(path, {"type": "session_info", "name": "Second"})
    assert store.name_now(str(path), PI_FORMAT, os.stat(path)) == (True, "Second")
    assert str(path) in store._kept


def test_a_replaced_file_is_read_anew_not_through_the_old_fd(tmp_path):
    path = _pi_file(tmp_path, 1, name="Old")
    store = JsonlStore()
    _known(store, tmp_path, 1)
    assert store.name_now(str(path), PI_FORMAT, os.stat(path)) == (True, "Old")
    new = tmp_path / "new.tmp"
    new.write_text(path.read_text().replace('"Old"', '"New name, longer"'))
    os.replace(new, path)  # as an editor or a rewrite does: another inode at the same path
    assert store.name_now(str(path), PI_FORMAT, os.stat(path)) == (True, "New name, longer")


def test_a_removed_file_is_forgotten_and_its_fd_closed(tmp_path):
    path = _pi_file(tmp_path, 1, name="Gone")
    store = JsonlStore()
    _known(store, tmp_path, 1)
    st = os.stat(path)
    assert store.name_now(str(path), PI_FORMAT, st) == (True, "Gone")
    os.unlink(path)
    assert store.name_now(str(path), PI_FORMAT, None) == (False, None)
    assert str(path) not in store._kept


def test_the_kept_fds_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl_store, "MAX_KEPT_FDS", 5)
    paths = [_pi_file(tmp_path, i) for i in range(12)]
    store = JsonlStore()
    for i in range(12):
        _known(store, tmp_path, i)
    before = _open_fds()
    for path in paths:
        assert store.name_now(str(path), PI_FORMAT, os.stat(path))[0]
    assert len(store._kept) == 5 and _open_fds() - before == 5
    store._drop_folder(str(tmp_path))
    assert not store._kept and _open_fds() == before
