"""The store-by-id index: session files found by the id in their names, cheaply, with no process."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from agent_session_ids.resolution import agents
from agent_session_ids.resolution.id_index import HOT, RECHECK_S, IdHit, IdIndex, store_roots
from agent_session_ids.resolution.ids import SAFE_ID, is_safe_id

U1 = "019dbbc7-c8c5-748c-8710-3fdf6fefc083"
U2 = "5f0c9a40-1b2c-4d3e-8f90-a1b2c3d4e5f6"
U3 = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
T = "2026-05-06T12-00-00-000Z"
PAST = 1_700_000_000  # folder mtimes well in the past: no folder counts as just changed


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Calls:
    """Counts the stats and listings the index does, by wrapping os.stat and os.scandir."""

    def __init__(self, monkeypatch) -> None:
        self.stat = self.scandir = 0
        real_stat, real_scandir = os.stat, os.scandir

        def counted_stat(*a, **k):
            self.stat += 1
            return real_stat(*a, **k)

        def counted_scandir(*a, **k):
            self.scandir += 1
            return real_scandir(*a, **k)

        monkeypatch.setattr(os, "stat", counted_stat)
        monkeypatch.setattr(os, "scandir", counted_scandir)

    def reset(self) -> tuple[int, int]:
        out = (self.stat, self.scandir)
        self.stat = self.scandir = 0
        return out


def touch(path: Path, mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"type":"session"}\n')
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def age(*folders: Path, at: float = PAST) -> None:
    for f in folders:
        os.utime(f, (at, at))


def index_for(home: Path, clock=None, **kw) -> IdIndex:
    roots = store_roots(agents.PROFILES, {"HOME": str(home)})
    return IdIndex(agents.PROFILES, lambda p: roots.get(p.name, []), clock=clock or Clock(), **kw)


def pi_store(home: Path) -> Path:
    return home / ".pi/agent/sessions"


# -- ids and roots ---------------------------------------------------------------------------------


def test_safe_session_ids():
    for good in (U1, U1.upper(), "feature-x", "feature_x", "ses_01JABCDEF", "a", "v1.2:3", "x" * 128):
        assert is_safe_id(good), good
        assert SAFE_ID.match(good)
    for bad in (
        "",
        "-x",
        ".x",
        "_x",
        "../x",
        "a/b",
        "a\\b",
        "a b",
        "a\nb",
        "a\n",
        "a\x00",
        "é",
        "x" * 129,
        "connection-\u202e",
        None,
        42,
        b"abc",
    ):
        assert not is_safe_id(bad), repr(bad)


def test_store_roots_from_the_proxys_environment_and_extra_homes(tmp_path):
    env = {"HOME": "/home/u", "CODEX_HOME": "/data/codex", "CLAUDE_CONFIG_DIR": "/cfg/claude"}
    roots = store_roots(agents.PROFILES, env, ["/srv/agent-home/", ""])
    assert roots["pi"] == ["/home/u/.pi/agent/sessions", "/srv/agent-home/.pi/agent/sessions"]
    assert roots["omp"] == ["/home/u/.omp/agent/sessions", "/srv/agent-home/.omp/agent/sessions"]
    assert roots["codex"] == ["/data/codex/sessions", "/srv/agent-home/.codex/sessions"]
    # an extra HOME is resolved with HOME alone: the proxy's CLAUDE_CONFIG_DIR is not its
    assert roots["claude"] == [
        "/cfg/claude/projects",
        "/home/u/.config/claude/projects",
        "/srv/agent-home/.claude/projects",
        "/srv/agent-home/.config/claude/projects",
    ]
    assert roots["qwen"] == ["/home/u/.qwen/projects", "/srv/agent-home/.qwen/projects"]
    # no HOME: only the roots an env variable names
    assert store_roots(agents.PROFILES, {"CODEX_HOME": "/c"})["codex"] == ["/c/sessions"]
    assert store_roots(agents.PROFILES, {})["pi"] == []
    # pi and omp both read PI_CODING_AGENT_DIR: one store, both agents
    shared = store_roots(agents.PROFILES, {"HOME": "/h", "PI_CODING_AGENT_DIR": "/a"})
    assert shared["pi"] == shared["omp"] == ["/a/sessions"]


# -- 10,000 files ----------------------------------------------------------------------------------


def test_ten_thousand_files_one_lookup_and_its_cost(tmp_path, monkeypatch):
    store = pi_store(tmp_path)
    folders = []
    for i in range(400):
        folder = store / f"--work-project-{i:03d}--"
        folder.mkdir(parents=True)
        for j in range(25):
            (
                folder / f"2026-05-{j % 28 + 1:02d}T12-00-00-000Z_{i:03d}{j:02d}000-0000-4000-8000-000000000000.jsonl"
            ).touch()
        folders.append(folder)
    target_folder = folders[123]
    target = touch(target_folder / f"{T}_{U1}.jsonl")
    for i, folder in enumerate(folders):
        age(folder, at=PAST + i)  # folder 399 changed last
    age(store)
    assert sum(1 for _ in store.rglob("*.jsonl")) == 10_001

    clock = Clock()
    index = index_for(tmp_path, clock)
    calls = Calls(monkeypatch)

    mtime = target.stat().st_mtime
    calls.reset()
    assert index.lookup("pi", U1) == [IdHit("pi", str(target), str(target_folder), mtime)]
    # the first lookup stats and lists the root and every cwd folder once, then stats the file
    assert calls.reset() == (401 + 1, 401)

    # the same lookup again: one stat (the file is still there), no listing
    for _ in range(3):
        assert [h.path for h in index.lookup("pi", U1)] == [str(target)]
        assert calls.reset() == (1, 0)

    # an unknown id, again and again: the root and the hot folders only
    for _ in range(3):
        assert index.lookup("pi", U2) == []
        assert calls.reset() == (1 + HOT, 0)

    # once every RECHECK_S, a miss stats every folder, and lists none that did not change
    clock.now += RECHECK_S
    assert index.lookup("pi", U2) == []
    stats, listings = calls.reset()
    assert (stats, listings) == (1 + HOT + 401, 0)
    assert index.lookup("pi", U2) == []
    assert calls.reset() == (1 + HOT, 0)

    # any agent: every store root is stat'ed (those that do not exist cost one stat each)
    assert index.lookup(None, U2) == []
    stats, listings = calls.reset()
    roots = sum(len(r) for r in store_roots(agents.PROFILES, {"HOME": str(tmp_path)}).values())
    assert listings == 0 and stats <= roots + HOT


def test_a_large_store_is_swept_within_the_budget_of_each_lookup(tmp_path, monkeypatch):
    store = pi_store(tmp_path)
    for i in range(60):
        touch(store / f"--p{i:02d}--" / f"{T}_{i:02d}000000-0000-4000-8000-000000000000.jsonl")
        age(store / f"--p{i:02d}--", at=PAST + i)
    target = touch(store / "--p00--" / f"{T}_feature-x.jsonl")
    age(store / "--p00--", store)
    index = index_for(tmp_path, budget=20)
    calls = Calls(monkeypatch)
    found = []
    for _ in range(10):
        found = index.lookup("pi", "feature-x")
        stats, listings = calls.reset()
        assert stats + listings <= 20 + 2 + HOT + 1
        if found:
            break
    assert [h.path for h in found] == [str(target)]


def test_warm_lists_every_store_up_front(tmp_path, monkeypatch):
    target = touch(pi_store(tmp_path) / "--w--" / f"{T}_{U1}.jsonl")
    index = index_for(tmp_path, budget=0)
    index.warm()
    calls = Calls(monkeypatch)
    assert [h.path for h in index.lookup("pi", U1)] == [str(target)]
    assert calls.reset() == (1, 0)


# -- which files hold which id ---------------------------------------------------------------------


def test_ids_that_are_not_uuids_match_exactly(tmp_path):
    folder = pi_store(tmp_path) / "--work--"
    feature = touch(folder / f"{T}_feature-x.jsonl")
    underscore = touch(folder / f"{T}_feature_x.jsonl")
    index = index_for(tmp_path)
    assert [h.path for h in index.lookup("pi", "feature-x")] == [str(feature)]
    assert [h.path for h in index.lookup("pi", "feature_x")] == [str(underscore)]  # pi's time has no '_'
    assert index.lookup("pi", "Feature-X") == []
    assert index.lookup("pi", "feature") == []
    assert index.lookup("pi", "x") == []


def test_uuids_match_whatever_their_case(tmp_path):
    upper = touch(pi_store(tmp_path) / "--w--" / f"{T}_{U1.upper()}.jsonl")
    lower = touch(tmp_path / ".claude/projects/-w" / f"{U2}.jsonl")
    index = index_for(tmp_path)
    assert [h.path for h in index.lookup("pi", U1)] == [str(upper)]
    assert [h.path for h in index.lookup(None, U2.upper())] == [str(lower)]


def test_the_same_id_in_two_stores_gives_both_with_their_agent(tmp_path):
    pi = touch(pi_store(tmp_path) / "--home-u-w--" / f"{T}_{U1}.jsonl", mtime=PAST)
    omp = touch(tmp_path / ".omp/agent/sessions/-w" / f"{T}_{U1}.jsonl", mtime=PAST + 10)
    index = index_for(tmp_path)
    hits = index.lookup(None, U1)
    assert [(h.agent, h.path, h.mtime) for h in hits] == [("omp", str(omp), PAST + 10), ("pi", str(pi), PAST)]
    assert [h.agent for h in index.lookup("pi", U1)] == ["pi"]
    assert [h.agent for h in index.lookup("omp", U1)] == ["omp"]
    assert index.lookup("claude", U1) == []
    assert index.lookup("no-such-agent", U1) == []


def test_a_store_shared_by_two_agents_is_listed_once(tmp_path, monkeypatch):
    f = touch(tmp_path / "a/sessions/--w--" / f"{T}_{U1}.jsonl")
    roots = store_roots(agents.PROFILES, {"HOME": str(tmp_path), "PI_CODING_AGENT_DIR": str(tmp_path / "a")})
    index = IdIndex(agents.PROFILES, lambda p: roots[p.name], clock=Clock())
    calls = Calls(monkeypatch)
    assert [(h.agent, h.path) for h in index.lookup(None, U1)] == [("omp", str(f)), ("pi", str(f))]
    assert calls.reset()[1] == 2  # the shared root and its folder, once; the other roots do not exist


def test_claude_top_level_uuid_files_only(tmp_path):
    project = tmp_path / ".claude/projects/-home-u-w"
    main = touch(project / f"{U1}.jsonl")
    touch(project / U1 / "subagents" / f"agent-{U2}.jsonl")
    touch(project / U3 / "subagents" / "agent-a1b2.jsonl")
    touch(project / "agent-a1b2.jsonl")  # older Claude Code: flat subagent files
    touch(project / f"{T}_{U2}.jsonl")  # not a Claude name
    index = index_for(tmp_path)
    assert [h.path for h in index.lookup("claude", U1)] == [str(main)]
    for sid in (U2, U3, "agent-a1b2", "a1b2"):
        assert index.lookup(None, sid) == [], sid


def test_qwen_chats_folders(tmp_path):
    projects = tmp_path / ".qwen/projects"
    chat = touch(projects / "-home-u-w/chats" / f"{U1}.jsonl")
    (projects / "-home-u-new").mkdir()  # a project whose chats folder comes later
    touch(projects / "-home-u-w" / f"{U2}.jsonl")  # beside chats/: not a session
    clock = Clock()
    index = index_for(tmp_path, clock)
    assert [(h.agent, h.path, h.folder) for h in index.lookup(None, U1)] == [
        ("qwen", str(chat), str(projects / "-home-u-w/chats"))
    ]
    assert index.lookup("qwen", U2) == []
    later = touch(projects / "-home-u-new/chats" / f"{U3}.jsonl")
    clock.now += RECHECK_S
    assert [h.path for h in index.lookup("qwen", U3)] == [str(later)]


def test_codex_date_tree(tmp_path):
    root = tmp_path / ".codex/sessions"
    old = touch(root / "2026/05/06" / f"rollout-2026-05-06T10-00-00-{U1}.jsonl")
    touch(root / "2026/05/07" / "notes.jsonl")
    touch(root / "2026/05/07" / f"other-2026-05-07T10-00-00-{U2}.jsonl")
    touch(root / "misc/05/07" / f"rollout-2026-05-07T10-00-00-{U2}.jsonl")  # not a date folder
    clock = Clock()
    index = index_for(tmp_path, clock)
    hits = index.lookup("codex", U1.upper())
    assert [(h.agent, h.path, h.folder) for h in hits] == [("codex", str(old), str(root / "2026/05/06"))]
    assert index.lookup("codex", U2) == []
    # a new day, a new month and a new year are found at once (the newest year and month are watched)
    for day, sid in (("2026/05/08", U2), ("2026/06/01", U3), ("2027/01/01", "ffffffff-0000-4000-8000-000000000000")):
        new = touch(root / day / f"rollout-2026-05-08T10-00-00-{sid}.jsonl")
        assert [h.path for h in index.lookup("codex", sid)] == [str(new)], day
    # a file archived away is gone
    old.unlink()
    assert index.lookup("codex", U1) == []


# -- a store that changes --------------------------------------------------------------------------


def test_new_files_are_found(tmp_path):
    store = pi_store(tmp_path)
    for i in range(3 * HOT):
        touch(store / f"--p{i:02d}--" / f"{T}_{U2[:-2]}{i:02d}.jsonl")
        age(store / f"--p{i:02d}--", at=PAST + i)
    age(store)
    clock = Clock()
    index = index_for(tmp_path, clock)
    assert index.lookup("pi", U1) == []

    # in a new cwd folder: at once (the root changed)
    new = touch(store / "--new--" / f"{T}_{U1}.jsonl")
    assert [h.path for h in index.lookup("pi", U1)] == [str(new)]

    # in a folder used lately: at once
    hot = touch(store / f"--p{3 * HOT - 1:02d}--" / f"{T}_feature-x.jsonl")
    assert [h.path for h in index.lookup("pi", "feature-x")] == [str(hot)]

    # in a folder not used for long: within RECHECK_S
    cold = touch(store / "--p00--" / f"{T}_feature-y.jsonl")
    assert index.lookup("pi", "feature-y") == []
    clock.now += RECHECK_S
    assert [h.path for h in index.lookup("pi", "feature-y")] == [str(cold)]


def test_removed_files_are_not_returned(tmp_path):
    folder = pi_store(tmp_path) / "--w--"
    f = touch(folder / f"{T}_{U1}.jsonl")
    index = index_for(tmp_path)
    assert len(index.lookup("pi", U1)) == 1
    f.unlink()
    assert index.lookup("pi", U1) == []
    assert index.lookup("pi", U1) == []
    touch(f)
    assert len(index.lookup("pi", U1)) == 1
    # a whole cwd folder removed
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()
    assert index.lookup("pi", U1) == []


def test_odd_entries_and_odd_input_are_skipped(tmp_path):
    store = pi_store(tmp_path)
    folder = store / "--w--"
    good = touch(folder / f"{T}_{U1}.jsonl")
    os.mkfifo(folder / f"{T}_fifo-id.jsonl")
    os.symlink(folder / "missing", folder / f"{T}_broken-link.jsonl")
    (folder / f"{T}_a-folder.jsonl").mkdir()
    touch(folder / f"{T}_a b.jsonl")
    touch(folder / f"{T}_.hidden.jsonl")
    touch(folder / "no-underscore.jsonl")
    touch(folder / f"{T}_not-jsonl.json")
    fd = os.open(os.fsencode(folder) + b"/" + T.encode() + b"_bad\xff.jsonl", os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    os.mkdir(os.fsencode(store) + b"/--bad\xfe--")
    fd = os.open(os.fsencode(store) + b"/--bad\xfe--/" + f"{T}_{U2}.jsonl".encode(), os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    touch(store / "a-file-among-the-cwd-folders.jsonl")
    locked = store / "--locked--"
    touch(locked / f"{T}_locked-id.jsonl")
    locked.chmod(0)
    # a root that is a file
    (tmp_path / ".omp/agent").mkdir(parents=True)
    (tmp_path / ".omp/agent/sessions").write_text("not a folder")
    try:
        roots = store_roots(agents.PROFILES, {"HOME": str(tmp_path)})
        roots["pi"] = roots["pi"] + ["relative/root", "", 42, None, "/nul\0byte", str(good)]
        index = IdIndex(agents.PROFILES, lambda p: roots.get(p.name, []), clock=Clock())
        assert [h.path for h in index.lookup(None, U1)] == [str(good)]
        for sid in (
            "fifo-id",
            "broken-link",
            "a-folder",
            "a b",
            ".hidden",
            "hidden",
            "no-underscore",
            "not-jsonl",
            "bad\udcff",
            "bad",
            U2,
            "locked-id" if os.geteuid() != 0 else "none",
        ):
            assert index.lookup(None, sid) == [], sid
        for sid in ("", "../" + U1, f"--w--/{T}_{U1}", "x" * 500, "a\nb", None, 7):
            assert index.lookup(None, sid) == []
        # a file that turns into a FIFO is dropped when it is hit
        good.unlink()
        os.mkfifo(good)
        assert index.lookup("pi", U1) == []
    finally:
        locked.chmod(0o700)


def test_lookups_from_two_threads(tmp_path):
    store = pi_store(tmp_path)
    for i in range(50):
        touch(store / f"--p{i:02d}--" / f"{T}_id-{i}.jsonl")
    index = index_for(tmp_path)
    errors = []

    def run(k: int) -> None:
        try:
            for i in range(200):
                n = (i * 7 + k) % 60
                hits = index.lookup("pi" if i % 2 else None, f"id-{n}")
                assert len(hits) == (1 if n < 50 else 0)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("agent", ["gemini", "opencode"])
def test_stores_without_ids_in_file_names_are_not_indexed(tmp_path, agent):
    assert index_for(tmp_path).lookup(agent, U1) == []
