"""Issue 29, item 6: whoever makes the state folder first (the running addon's ledger and state
writers here), it ends up 0700 and each file in it 0600, and a symlink placed at a file's path is
never followed. A folder the user named for a file of theirs is left as it is."""

from __future__ import annotations

import os
import stat

from agent_session_ids.resolution import state
from agent_session_ids.usage import ledger


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def record(n: int) -> dict:
    return {"ts": "2026-11-21T10:00:00.000Z", "session": f"s{n}", "label": "l", "agent": "pi", "model": "m"}


def write_ledger(path: str) -> list[str]:
    errors: list[str] = []
    book = ledger.Ledger(path, on_error=lambda key, message: errors.append(message))
    book.append(record(1))
    book.close()
    return errors


def test_the_ledger_and_state_writers_tighten_the_addons_folder_an_older_version_made_0755(tmp_path):
    folder = tmp_path / "agent-session-ids"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    (folder / "usage.jsonl").write_text("")
    (folder / "usage.jsonl").chmod(0o644)
    assert write_ledger(str(folder / "usage.jsonl")) == []
    assert mode(folder) == 0o700 and mode(folder / "usage.jsonl") == 0o600
    folder.chmod(0o755)
    state.save(str(folder / "state.json"), {"a": 1})
    assert mode(folder) == 0o700 and mode(folder / "state.json") == 0o600


def test_the_ledger_made_first_in_a_fresh_confdir_is_0700_and_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        path = tmp_path / "confdir" / "agent-session-ids" / "usage.jsonl"
        assert write_ledger(str(path)) == []
    finally:
        os.umask(old)
    assert mode(path.parent) == 0o700 and mode(path) == 0o600


def test_a_folder_the_user_named_for_the_ledger_keeps_its_mode(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    folder.chmod(0o755)
    assert write_ledger(str(folder / "usage.jsonl")) == []
    assert mode(folder) == 0o755 and mode(folder / "usage.jsonl") == 0o600


def test_a_symlink_at_the_ledgers_path_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    folder = tmp_path / "agent-session-ids"
    folder.mkdir()
    (folder / "usage.jsonl").symlink_to(victim)
    errors = write_ledger(str(folder / "usage.jsonl"))
    assert victim.read_text() == "precious\n" and errors, errors
