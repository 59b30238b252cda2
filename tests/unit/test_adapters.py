"""The I/O adapters, for real: session folders on disk, and the process behind a real socket."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from agent_session_ids.resolution import agents, proc, state
from agent_session_ids.resolution.agents import PI_FORMAT
from agent_session_ids.resolution.conversation import fingerprint
from agent_session_ids.resolution.jsonl_store import JsonlStore
from agent_session_ids.resolution.kinds import PerSession, SessionFolder
from agent_session_ids.resolution.model import Process

UUID = "019dbbc7-c8c5-748c-8710-3fdf6fefc083"

processes = proc.ProcessTable()  # one table for the module, as the addon keeps one


def pi_file(folder, sid=UUID, first="hello", cwd="/w", extra=(), ts="2026-05-06T12:00:00.000Z"):
    path = folder / f"{ts.replace(':', '-').replace('.', '-')}_{sid}.jsonl"
    lines = [
        {"type": "session", "version": 3, "id": sid, "timestamp": ts, "cwd": cwd},
        {"type": "model_change", "id": "a1", "parentId": None, "provider": "openrouter", "modelId": "m"},
        {
            "type": "message",
            "id": "a2",
            "parentId": "a1",
            "message": {"role": "user", "content": [{"type": "text", "text": first}]},
        },
        {
            "type": "message",
            "id": "a3",
            "parentId": "a2",
            "message": {"role": "assistant", "content": [], "stopReason": "stop"},
        },
        *extra,
    ]
    path.write_text("".join(json.dumps(x, separators=(",", ":")) + "\n" for x in lines))
    return path


def test_store_finds_files_by_id_and_first_turn_and_reads_appends(tmp_path):
    store = JsonlStore()
    path = pi_file(tmp_path)
    (tmp_path / "notes.txt").write_text("not a session")
    (f,) = store.candidates(str(tmp_path), PI_FORMAT, ids=[UUID])
    assert (f.id, f.first_user, f.n_assistant, f.name, f.cwd) == (UUID, fingerprint("hello"), 1, None, "/w")
    assert f.created == pytest.approx(1778068800.0)
    assert store.candidates(str(tmp_path), PI_FORMAT, first_users=[fingerprint("hello")])[0].path == str(path)
    assert store.candidates(str(tmp_path), PI_FORMAT, first_users=[fingerprint("other")]) == []
    with open(path, "a") as out:
        out.write(json.dumps({"type": "session_info", "id": "b", "name": "First name"}) + "\n")
        out.write(json.dumps({"type": "message", "message": {"role": "assistant", "stopReason": "error"}}) + "\n")
        out.write(json.dumps({"type": "session_info", "id": "c", "name": " Second name "}) + "\n")
        out.write('{"type":"message","message":{"role":"assistant"')  # a line still being written
    (f,) = store.candidates(str(tmp_path), PI_FORMAT, ids=[UUID])
    assert (f.name, f.n_assistant) == ("Second name", 1)
    with open(path, "a") as out:
        out.write(',"stopReason":"stop"}}\n')
    (f,) = store.candidates(str(tmp_path), PI_FORMAT, ids=[UUID])
    assert f.n_assistant == 2


def test_store_sees_new_and_removed_files_and_cwd_filter(tmp_path):
    store = JsonlStore()
    assert store.candidates(str(tmp_path), PI_FORMAT, ids=[UUID]) == []
    time.sleep(0.01)
    path = pi_file(tmp_path, cwd="/a")
    assert len(store.candidates(str(tmp_path), PI_FORMAT, ids=[UUID])) == 1
    # a folder of every cwd's files: a first-turn match must be of this cwd; an id is exact anyway
    assert store.candidates(str(tmp_path), PI_FORMAT, first_users=[fingerprint("hello")], cwd="/b") == []
    assert len(store.candidates(str(tmp_path), PI_FORMAT, first_users=[fingerprint("hello")], cwd="/a")) == 1
    assert len(store.candidates(str(tmp_path), PI_FORMAT, ids=[UUID], cwd="/b")) == 1
    path.unlink()
    assert store.candidates(str(tmp_path), PI_FORMAT, ids=[UUID]) == []


def test_store_survives_hostile_files(tmp_path):
    store = JsonlStore()
    os.mkfifo(tmp_path / f"2026_{UUID[:-1]}0.jsonl")  # a FIFO must not block
    (tmp_path / "x_bad.jsonl").write_bytes(b"\x00\xff garbage\n{not json\n")
    (tmp_path / "x_partial.jsonl").write_text('{"type":"session","id":"partial","timestamp":"2026-01-01T00:00:00Z"')
    os.symlink("loop.jsonl", tmp_path / "loop.jsonl")
    good = pi_file(tmp_path)
    found = {
        os.path.basename(f.path): f
        for f in store.candidates(str(tmp_path), PI_FORMAT, ids=[UUID, UUID[:-1] + "0", "bad", "partial", "loop"])
    }
    # the FIFO and the symlink loop are not files; garbage gives no conversation to match
    assert sorted(found) == sorted([good.name, "x_bad.jsonl", "x_partial.jsonl"])
    assert found[good.name].first_user == fingerprint("hello")
    assert found["x_bad.jsonl"].first_user is None and found["x_partial.jsonl"].first_user is None
    assert store.candidates(str(tmp_path), PI_FORMAT, first_users=[fingerprint("hello")])[0].path == str(good)
    assert store.candidates(str(tmp_path / "missing"), PI_FORMAT, ids=[UUID]) == []
    (tmp_path / "afile").write_text("")
    assert store.candidates(str(tmp_path / "afile"), PI_FORMAT, ids=[UUID]) == []


def folders(process):
    return agents.PI.store.folders(process)


def test_pi_session_folders_follow_the_agents_environment():
    p = Process(1, 1, 0.0, "b", 0, "/home/u/my proj", "pi", "/usr/bin/node", ("pi",), {"HOME": "/home/u"})
    assert folders(p) == [SessionFolder("/home/u/.pi/agent/sessions/--home-u-my proj--", None)]
    p2 = Process(1, 1, 0.0, "b", 0, "/w", "pi", "", ("pi",), {"HOME": "/h", "PI_CODING_AGENT_DIR": "~/agent"})
    assert folders(p2)[0].path == "/h/agent/sessions/--w--"
    p3 = Process(1, 1, 0.0, "b", 0, "/w", "pi", "", ("pi",), {"HOME": "/h", "PI_CODING_AGENT_SESSION_DIR": "/s"})
    assert folders(p3) == [SessionFolder("/s", "/w")]
    p4 = Process(1, 1, 0.0, "b", 0, "/w", "node", "", ("pi", "--session-dir", "rel"), {"HOME": "/h"})
    assert folders(p4) == [SessionFolder("/w/rel", "/w")]
    assert agents.PI.store.folders_from(p2, "/from/settings")[0].path == "/from/settings"


def test_hint_headers_take_any_id_within_a_safe_charset():
    assert agents.PI.hint({"x-session-id": UUID.upper()}, None) == (UUID, "header x-session-id")
    # pi 1.x: `--session-id feature-x`; ids are not always uuids
    assert agents.PI.hint({"x-session-id": "feature-x"}, None) == ("feature-x", "header x-session-id")
    for hostile in ("a b", "../etc", "x" * 129, "id\x00", "-leading-dash", "é"):
        assert agents.PI.hint({"x-session-id": hostile}, {"prompt_cache_key": 5}) == (None, ""), hostile
    assert agents.PI.hint({}, {"prompt_cache_key": UUID}) == (UUID, "body prompt_cache_key")
    # opencode's ids keep their own shape
    assert agents.OPENCODE.hint({"x-opencode-session": "feature-x"}, None) == (None, "")


def test_state_file_is_atomic_and_private(tmp_path):
    path = str(tmp_path / "sub" / "state.json")
    state.save(path, {"version": 1, "bound": {"a": ["b", "c", 1.0]}})
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert state.load(path)["bound"] == {"a": ["b", "c", 1.0]}
    assert os.listdir(tmp_path / "sub") == ["state.json"]
    (tmp_path / "garbage.json").write_text("{half")
    with pytest.raises(state.StateError):
        state.load(str(tmp_path / "garbage.json"))
    assert state.load(str(tmp_path / "missing.json")) == {}


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_process_lookup_finds_the_real_client_process(tmp_path, family, host):
    server = socket.socket(family)
    try:
        server.bind((host, 0))
    except OSError:
        pytest.skip(f"{host} not available")
    server.listen()
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket,sys,time; s=socket.socket(int(sys.argv[1])); s.connect((sys.argv[2], int(sys.argv[3]))); "
            "print('ok', flush=True); time.sleep(30)",
            str(int(family)),
            host,
            str(server.getsockname()[1]),
        ],
        cwd=tmp_path,
        env={**os.environ, "MARKER": "lookup-test"},
        stdout=subprocess.PIPE,
    )
    try:
        conn, peer = server.accept()
        assert child.stdout.readline().strip() == b"ok"
        found = processes.lookup(peer, conn.getsockname())
        assert found is not None
        assert found.pid == child.pid
        assert found.cwd == str(tmp_path)
        assert found.environ.get("MARKER") == "lookup-test"
        assert found.cmdline[0] == sys.executable
        assert abs(found.started_at - time.time()) < 30
        assert processes.alive(found.key)
        conn.close()
    finally:
        child.kill()
        child.wait()
        server.close()
    assert not processes.alive(found.key)


def test_process_lookup_of_an_unknown_address_is_none():
    assert processes.lookup(("127.0.0.1", 1), ("127.0.0.1", 2)) is None
    assert processes.lookup(("203.0.113.5", 5555), ("127.0.0.1", 8080)) is None


def test_a_large_file_is_read_in_budgets_and_its_latest_name_found_at_once(tmp_path, monkeypatch):
    from agent_session_ids.resolution import jsonl_store

    monkeypatch.setattr(jsonl_store, "TAIL_BUDGET", 64 << 10)
    monkeypatch.setattr(jsonl_store, "CHUNK", 16 << 10)
    filler = {"type": "message", "message": {"role": "assistant", "content": [{"type": "text", "text": "x" * 1000}]}}
    path = pi_file(
        tmp_path,
        extra=[{"type": "session_info", "name": "Old name"}]
        + [filler] * 500
        + [{"type": "session_info", "name": "Latest name"}]
        + [filler] * 20,
    )
    assert path.stat().st_size > 500_000
    store = JsonlStore()
    (f,) = store.candidates(str(tmp_path), PI_FORMAT, ids=[UUID])
    assert f.name == "Latest name"  # found backwards from the end, before the forward scan reaches it
    assert f.n_assistant < 521 and store.behind
    rounds = 0
    while store.catch_up():
        rounds += 1
    assert rounds > 3
    (f,) = store.candidates(str(tmp_path), PI_FORMAT, ids=[UUID])
    assert (f.name, f.n_assistant) == ("Latest name", 521)  # older names met later do not win
    with open(path, "a") as out:
        out.write(json.dumps({"type": "session_info", "name": "Newer"}) + "\n")
    (f,) = store.candidates(str(tmp_path), PI_FORMAT, ids=[UUID])
    assert f.name == "Newer"


def test_a_socket_shared_with_a_forked_child_is_flagged(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os,socket,sys,time; s=socket.socket(); s.connect(('127.0.0.1', int(sys.argv[1]))); "
            "pid=os.fork(); print(pid, flush=True) if pid else None; time.sleep(30)",
            str(server.getsockname()[1]),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        conn, peer = server.accept()
        forked = int(child.stdout.readline())
        found = processes.lookup(peer, conn.getsockname())
        assert found is not None and found.shared
        assert found.pid == min(child.pid, forked)
    finally:
        child.kill()
        child.wait()
        with contextlib.suppress(OSError, UnboundLocalError):  # UnboundLocalError: it never forked
            os.kill(forked, 9)
        server.close()


def test_the_proc_net_fallback_finds_the_same_socket():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    client = socket.create_connection(server.getsockname())
    conn, peer = server.accept()
    try:
        by_netlink = processes.socket_owner(peer, conn.getsockname())
        assert proc.ProcessTable(use_netlink=False).socket_owner(peer, conn.getsockname()) == by_netlink
        assert by_netlink[0] == os.fstat(client.fileno()).st_ino
    finally:
        client.close()
        conn.close()
        server.close()


def test_a_big_folder_is_indexed_newest_first_and_on_demand(tmp_path, monkeypatch):
    from agent_session_ids.resolution import jsonl_store

    n = 400
    for i in range(n):
        path = pi_file(
            tmp_path,
            sid=f"00000000-0000-4000-8000-{i:012d}",
            first=f"task {i}",
            ts=f"2026-05-06T12:{i // 60:02d}:{i % 60:02d}.000Z",
        )
        os.utime(path, (1_700_000_000 + i, 1_700_000_000 + i))
    # no clock decides what is read: a step's deadline has always passed (one file per step), and
    # a continued session's file is looked for until it is found, however slow the machine
    monkeypatch.setattr(jsonl_store, "INDEX_STEP_S", -1.0)
    monkeypatch.setattr(jsonl_store, "INDEX_WAIT_S", 3600.0)
    store = JsonlStore()
    # a new session's request only needs the newest files: the index is not read whole for it
    assert store.candidates(str(tmp_path), PI_FORMAT, first_users=[fingerprint("brand new")], fresh=True) == []
    d = store._dirs[str(tmp_path)]
    assert len(d.incomplete) == n - 1 and d.order[0].endswith(f"{n - 2:012d}.jsonl")  # newest first
    # a continued session's file is looked for until found, newest first
    (f,) = store.candidates(str(tmp_path), PI_FORMAT, first_users=[fingerprint("task 3")])
    assert f.id.endswith("000000000003")
    assert sorted(int(p[-18:-6]) for p in d.incomplete) == [0, 1, 2]  # the search stopped there
    # the rest is indexed between requests
    while store.catch_up():
        pass
    assert not d.incomplete and len(d.by_first_user) == n


def test_mount_table_tells_local_from_network_filesystems(monkeypatch):
    from agent_session_ids.resolution.mounts import MountTable

    mounts = MountTable(read=lambda: [("/mnt/nfs", "nfs4"), ("/mnt/fuse", "fuse.sshfs"), ("/", "ext4")])
    assert mounts.is_local("/home/u/.pi/agent/sessions")
    assert not mounts.is_local("/mnt/nfs/home/.pi")
    assert not mounts.is_local("/mnt/fuse/x")
    assert mounts.is_local("/mnt/nfsother")  # a prefix of a name is not its mount point


def test_the_real_mount_table_is_read():
    from agent_session_ids.resolution.mounts import MountTable

    mounts = MountTable()
    assert mounts.fs_type("/") is not None and mounts.fs_type("/proc") == "proc"


CLINE_ID = "1796206695303_o6y51"


def cline_session(root, sid=CLINE_ID, prompt="fix the bug", cwd="/w", manifest=True):
    folder = root / sid
    folder.mkdir(parents=True)
    if manifest:
        (folder / f"{sid}.json").write_text(
            json.dumps(
                {
                    "version": 1,
                    "session_id": sid,
                    "source": "cli",
                    "pid": 5051,
                    "started_at": "2026-12-02T10:18:15.303Z",
                    "status": "running",
                    "cwd": cwd,
                    "prompt": prompt,
                    "metadata": {"title": prompt},
                },
                indent=2,
            )
        )
    return folder


def test_session_dirs_find_a_session_by_id_first_turn_and_path_as_folders_appear(tmp_path):
    from agent_session_ids.resolution.session_dirs import SessionDirs

    fmt = agents.by_name("cline").store.manifest
    store = SessionDirs()
    assert store.candidates(str(tmp_path / "missing"), fmt, ids=[CLINE_ID]) == []
    cline_session(tmp_path, prompt='<user_input mode="act">fix the bug</user_input>')
    (f,) = store.candidates(str(tmp_path), fmt, ids=[CLINE_ID])
    assert (f.id, f.cwd, f.first_user, f.n_assistant) == (CLINE_ID, "/w", fingerprint("fix the bug"), 0)
    assert f.created == pytest.approx(1796206695.303)
    assert store.candidates(str(tmp_path), fmt, first_users=[fingerprint("fix the bug")]) == [f]
    assert store.candidates(str(tmp_path), fmt, paths=[f.path]) == [f]
    assert store.candidates(str(tmp_path), fmt, first_users=[fingerprint("another")]) == []
    # a new session's folder before its manifest is there, then with it
    folder = cline_session(tmp_path, "1796206698717_cib14", "another", manifest=False)
    assert store.candidates(str(tmp_path), fmt, first_users=[fingerprint("another")]) == []
    assert store.unread(str(tmp_path)) == [str(folder)]
    (folder / "1796206698717_cib14.json").write_text('{"session_id": "1796206698717_cib14", "prom')  # not whole
    assert store.candidates(str(tmp_path), fmt, first_users=[fingerprint("another")]) == []
    (folder / "1796206698717_cib14.json").write_text(
        json.dumps(
            {
                "session_id": "1796206698717_cib14",
                "cwd": "/v",
                "started_at": "2026-12-02T10:18:18.717Z",
                "prompt": "another",
            }
        )
    )
    (g,) = store.candidates(str(tmp_path), fmt, first_users=[fingerprint("another")])
    assert (g.id, g.cwd) == ("1796206698717_cib14", "/v") and store.unread(str(tmp_path)) == []


def test_session_dirs_survive_hostile_folders(tmp_path):
    from agent_session_ids.resolution.session_dirs import SessionDirs

    fmt = agents.by_name("cline").store.manifest
    store = SessionDirs()
    cline_session(tmp_path, "1796206698717_aaaaa", manifest=False)
    (tmp_path / "1796206698717_aaaaa" / "1796206698717_aaaaa.json").mkdir()  # a folder, not a file
    other = cline_session(tmp_path, "1796206698717_bbbbb", manifest=False)
    (other / "1796206698717_bbbbb.json").write_text(json.dumps({"session_id": "someone-else", "prompt": "x"}))
    (tmp_path / "1796206698717_ccccc").mkdir()
    (tmp_path / "1796206698717_ccccc" / "1796206698717_ccccc.json").write_text("[1, 2]")
    (tmp_path / "stray.json").write_text("{}")
    assert (
        store.candidates(
            str(tmp_path), fmt, ids=["1796206698717_aaaaa", "someone-else"], first_users=[fingerprint("x")]
        )
        == []
    )


def test_cline_sessions_are_every_session_of_its_store_whatever_the_cwd():
    profile = agents.by_name("cline")
    for env, root in (
        ({"HOME": "/h"}, "/h/.cline/data/sessions"),
        ({"HOME": "/h", "CLINE_DATA_DIR": "/d"}, "/d/sessions"),
        ({"HOME": "/h", "CLINE_DIR": "/c"}, "/c/data/sessions"),
        ({"HOME": "/h", "CLINE_SESSION_DATA_DIR": "/s"}, "/s"),
    ):
        process = Process(
            pid=1,
            start_ticks=1,
            started_at=0.0,
            boot_id="b",
            uid=0,
            comm=".cline",
            exe="/x/.cline",
            cmdline=(".cline", "--cline-hub-daemon"),
            cwd="/first/project",
            environ=env,
        )
        assert profile.recognises(process)
        folders = profile.store.folders(process)
        assert root in [f.path for f in folders] and isinstance(profile.store, PerSession)
        assert all(f.cwd_filter is None for f in folders)
