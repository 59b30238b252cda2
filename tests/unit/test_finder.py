"""The resolution pipeline with plain data and real store files: the request's own id first, the
store by id, the conversation without a process, and the fallback last (issue 10)."""

from __future__ import annotations

import json

import pytest

from agent_session_ids.resolution import agents, ids
from agent_session_ids.resolution.conversation import Conversation, fingerprint
from agent_session_ids.resolution.finder import SessionFinder, requested_id
from agent_session_ids.resolution.model import Evidence, Process, Seen

UNREADABLE = Seen(None, "another user's process (uid 65534)")
OPENROUTER_FIELDS = (("body", "session_id"), ("header", "x-session-id"), ("body", "prompt_cache_key"))


def write_pi_session(home, cwd, sid, first="hello", name=None, answers=1, stamp="2026-11-29T10-00-00-000Z"):
    folder = home / ".pi" / "agent" / "sessions" / agents.encode_pi(cwd, {})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stamp}_{sid}.jsonl"
    lines = [
        {"type": "session", "version": 3, "id": sid, "timestamp": "2026-11-29T10:00:00.000Z", "cwd": cwd},
        {"type": "message", "message": {"role": "user", "content": [{"type": "text", "text": first}]}},
    ]
    lines += [{"type": "message", "message": {"role": "assistant", "content": "ok"}}] * answers
    if name:
        lines.append({"type": "session_info", "name": name})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def pipeline(home, extra=()):
    return SessionFinder({"HOME": str(home)}, extra, recheck=lambda proc: proc)  # plain data: no /proc


def ev(headers=None, body=None, first="hello", answers=0, conn="c1", fields=OPENROUTER_FIELDS):
    conv = Conversation(fingerprint(first), answers + 1, answers) if first else None
    return Evidence({k.lower(): v for k, v in (headers or {}).items()}, body, conv, conn, fields)


def test_the_id_the_request_names_is_the_session_without_a_process(home):
    p = pipeline(home)
    s1, _ = p.find(ev({"x-session-id": "0199aaaa-0000-7000-8000-000000000001"}), UNREADABLE, 1000.0)
    assert s1.id == "0199aaaa-0000-7000-8000-000000000001" and not s1.fallback
    assert "another user's process" in s1.source
    # `pi -c` on another connection: the same id, the same trace UUID
    s2, _ = p.find(ev({"x-session-id": s1.id}, conn="c2", answers=1), UNREADABLE, 1010.0)
    assert (s2.id, s2.trace_uuid) == (s1.id, s1.trace_uuid)


def test_a_chosen_id_that_is_no_uuid_is_kept_exactly(home):
    p = pipeline(home)
    s, _ = p.find(ev({"x-session-id": "feature-x"}), UNREADABLE, 1000.0)
    assert s.id == s.label == "feature-x"


def test_the_store_by_id_gives_the_name_and_the_file_trace_without_a_process(home):
    path = write_pi_session(home, "/work/proj", "feature-x", name="Fix the parser")
    p = pipeline(home)
    s, _ = p.find(ev({"x-session-id": "feature-x"}), UNREADABLE, 1000.0)
    assert s.file == str(path) and s.agent == "pi" and s.name == "Fix the parser"
    assert s.label == "fix-the-parser-featurex"
    assert s.trace_uuid == ids.trace_uuid(str(path))


def test_extra_homes_are_searched(tmp_path):
    container_home = tmp_path / "container-home"
    path = write_pi_session(container_home, "/src", "0199aaaa-0000-7000-8000-0000000000c0")
    s, _ = SessionFinder({"HOME": str(tmp_path / "nobody")}, [str(container_home)]).find(
        ev({"x-session-id": "0199aaaa-0000-7000-8000-0000000000c0"}), UNREADABLE, 1000.0
    )
    assert s.file == str(path)


def test_an_honoured_client_field_is_the_session_for_an_unknown_client(home):
    p = pipeline(home)
    s, _ = p.find(ev(body={"session_id": "my-own"}), UNREADABLE, 1000.0)
    assert s.id == "my-own" and not s.fallback
    # hostile values are no ids: the conversation decides instead
    s2, _ = p.find(ev(body={"session_id": "../../etc/passwd"}), UNREADABLE, 1000.0)
    assert s2.id != "../../etc/passwd"


def test_the_conversation_finds_a_continued_session_across_cwd_folders_without_a_process(home):
    write_pi_session(home, "/a", "0199aaaa-0000-7000-8000-00000000000a", first="other question")
    path = write_pi_session(home, "/b", "0199aaaa-0000-7000-8000-00000000000b", first="fix the tests", answers=2)
    s, _ = pipeline(home).find(ev(first="fix the tests", answers=2), UNREADABLE, 1000.0)
    assert s.file == str(path) and s.id == "0199aaaa-0000-7000-8000-00000000000b" and s.agent == "pi"


def test_a_new_session_without_a_process_keeps_its_minted_id_once_its_file_appears(home):
    p = pipeline(home)
    first, _ = p.find(ev(first="write a poem"), UNREADABLE, 1000.0)
    assert first.id.startswith("ephemeral-")
    again, _ = p.find(ev(first="write a poem", conn="c2"), UNREADABLE, 1001.0)
    assert again.id == first.id  # a retry of the first request
    path = write_pi_session(home, "/poems", "0199aaaa-0000-7000-8000-0000000000ee", first="write a poem")
    later, _ = p.find(ev(first="write a poem", answers=1, conn="c3"), UNREADABLE, 1002.0)
    assert (later.id, later.trace_uuid, later.file) == (first.id, first.trace_uuid, str(path))
    # `pi -c` much later, on a fresh proxy that loaded the saved state
    restarted = pipeline(home)
    restarted.resolver.load_state(p.resolver.export_state())
    cont, _ = restarted.find(ev(first="write a poem", answers=3, conn="c4"), UNREADABLE, 90_000.0)
    assert (cont.id, cont.trace_uuid) == (first.id, first.trace_uuid)


def write_cline_session(home, sid, prompt, cwd="/w", started="2026-11-29T10:00:00.000Z"):
    folder = home / ".cline" / "data" / "sessions" / sid
    folder.mkdir(parents=True)
    path = folder / f"{sid}.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "session_id": sid,
                "pid": 77,
                "started_at": started,
                "status": "running",
                "cwd": cwd,
                "prompt": prompt,
            }
        )
    )
    return path


def test_a_cline_session_is_found_by_its_manifests_prompt_without_a_process(home):
    write_cline_session(home, "1796206581394_aaaaa", "other question")
    path = write_cline_session(home, "1796206584743_bbbbb", '<user_input mode="act">fix the tests</user_input>', "/b")
    s, _ = pipeline(home).find(ev(first="fix the tests", answers=1), UNREADABLE, 1000.0)
    assert (s.id, s.agent, s.file, s.cwd) == ("1796206584743_bbbbb", "cline", str(path), "/b")


def test_sessions_served_by_one_cline_hub_process_stay_apart(home):
    hub = Process(
        pid=77,
        start_ticks=7,
        started_at=1796206500.0,
        boot_id="b",
        uid=0,
        cwd="/first",
        comm=".cline",
        exe="/x/.cline",
        cmdline=("/x/.cline", "--cline-hub-daemon"),
        environ={"HOME": str(home)},
    )
    a = write_cline_session(
        home,
        "1796206581394_aaaaa",
        '<user_input mode="act">first task</user_input>',
        started="2026-12-02T10:16:21.394Z",
    )
    b = write_cline_session(
        home,
        "1796206584743_bbbbb",
        '<user_input mode="act">second task</user_input>',
        "/other",
        started="2026-12-02T10:16:24.743Z",
    )
    p = pipeline(home)
    steps = [
        ("first task", 0, a),
        ("second task", 0, b),
        ("first task", 1, a),
        ("second task", 1, b),
        ("second task", 2, b),
        ("first task", 2, a),
    ]
    for i, (first, answers, path) in enumerate(steps):
        s, _ = p.find(ev(first=first, answers=answers, conn=f"c{i}"), Seen(hub), 1796206600.0 + i)
        assert (s.file, s.agent, s.fallback) == (str(path), "cline", False), (i, s.source)
        assert s.id == path.parent.name


def test_the_connection_fallback_is_the_last_resort(home):
    s, _ = pipeline(home).find(ev(first=None), UNREADABLE, 1000.0)
    assert s.fallback and s.id.startswith("connection-") and "names no session" in s.source


def test_a_readable_program_that_is_no_agent_gets_its_process_fallback_unless_it_names_a_session(home):
    curl = Process(
        pid=4242, start_ticks=7, started_at=900.0, boot_id="b", uid=0, cwd="/", comm="curl", exe="/usr/bin/curl"
    )
    p = pipeline(home)
    s, _ = p.find(ev(), Seen(curl), 1000.0)
    assert s.fallback and s.id.startswith("process-4242-")
    named, _ = p.find(ev({"x-session-id": "abc-1"}), Seen(curl), 1000.0)
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


def _append(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _grow(rng, files, op: float, step: int) -> None:
    """One of the files gets an answer (op < 0.1) or a name."""
    if op < 0.1:
        _append(rng.choice(files), {"type": "message", "message": {"role": "assistant", "content": "a"}})
    else:
        _append(rng.choice(files), {"type": "session_info", "name": f"name {step}"})


def _same_decision(a, b, minted: dict[str, str], step: int) -> None:
    """The same decision with and without the memo. Minted IDs are random: the two pipelines'
    must correspond one to one."""
    for x, y in ((a.id, b.id), (a.label, b.label), (a.trace_uuid, b.trace_uuid)):
        assert minted.setdefault(x, y) == y, (step, a, b)
    assert (a.file, a.name, a.fallback) == (b.file, b.name, b.fallback), step


@pytest.mark.parametrize("seed", range(12))
def test_the_memo_never_changes_a_decision(home, seed):
    """Two pipelines over the same store, one with the memo and one without, see the same random
    mix of requests (two processes, hints or none, continued or new conversations) and store
    changes (answers appended, names, new files, forks): every decision is the same."""
    import random

    rng = random.Random(seed)
    cwd = "/work/memo"
    procs = [
        Process(
            pid=100 + i,
            start_ticks=i,
            started_at=1000.0,
            boot_id="b",
            uid=0,
            cwd=cwd,
            comm="pi",
            exe="/usr/bin/node",
            environ={"HOME": str(home)},
        )
        for i in range(2)
    ]
    with_memo, without = pipeline(home), pipeline(home)
    without.memo = False
    files = [write_pi_session(home, cwd, "0199aaaa-0000-7000-8000-000000000000", first="q0")]
    firsts = ["q0"]
    now = 2000.0
    hits = 0
    minted: dict[str, str] = {}
    for step in range(200):
        now += 1.0
        op = rng.random()
        if op < 0.14:
            _grow(rng, files, op, step)
        elif op < 0.18:
            i = len(files)
            parent = rng.choice(files)
            first = rng.choice(firsts + [f"q{i}"])
            path = write_pi_session(
                home, cwd, f"0199aaaa-0000-7000-8000-{i:012d}", first=first, stamp=f"2026-11-29T10-00-{i:02d}-000Z"
            )
            if rng.random() < 0.5:  # a fork of another file
                lines = path.read_text().splitlines()
                header = json.loads(lines[0])
                header["parentSession"] = str(parent)
                path.write_text("\n".join([json.dumps(header)] + lines[1:]) + "\n")
            files.append(path)
            firsts.append(first)
        p = rng.randrange(2)
        headers = {}
        if rng.random() < 0.2:
            headers["x-session-id"] = json.loads(rng.choice(files).read_text().splitlines()[0])["id"]
        # mostly the same conversation again on the same connection, as agents do
        first = firsts[p % len(firsts)] if rng.random() < 0.7 else rng.choice(firsts)
        e = ev(headers, first=first, answers=rng.randrange(3), conn=f"c{p}")
        before = dict(with_memo._memo._entries)
        a, _ = with_memo.find(e, Seen(procs[p]), now)
        b, _ = without.find(e, Seen(procs[p]), now)
        hits += (
            before.get(f"c{p}") is not None
            and with_memo._memo._entries.get(f"c{p}") is not None
            and before[f"c{p}"].session is a
        )
        _same_decision(a, b, minted, step)
    assert hits >= 1  # the memo was used, not only checked


# (with seed 9 every first turn soon has two files: the memo rightly never applies, and the check
# that it was used would fail)
@pytest.mark.parametrize("seed", [s for s in range(13) if s != 9])
def test_the_memo_never_changes_a_decision_without_the_process(home, seed):
    """The same for requests whose process cannot be read, that name no session (three
    connections): the conversation alone decides, across cwd folders. The store changes under
    them: answers and names appended, new files with a first turn seen before (in the same
    folder or in another one), new sessions' first requests. Every decision is the same with and
    without the memo."""
    import random

    rng = random.Random(seed)
    cwds = ["/work/a", "/work/b"]
    with_memo, without = pipeline(home), pipeline(home)
    without.memo = False
    files = [write_pi_session(home, cwds[0], "0199bbbb-0000-7000-8000-000000000000", first="q0", answers=2)]
    firsts = ["q0"]
    # odd seeds: the files are older than a new session's window, so first requests mint IDs that
    # later requests of other connections with the same first turn then get (the bindings change)
    now = 2000.0 if seed % 2 == 0 else 1795946400.0 + 700  # the files' header: 2026-11-29T10:00:00Z
    hits = 0
    minted: dict[str, str] = {}
    for step in range(300):
        now += rng.choice((1.0, 60.0, 400.0))  # a minted first turn's window (600 s) ends now and then
        op = rng.random()
        if op < 0.14:
            _grow(rng, files, op, step)
        elif op < 0.2:
            i = len(files)
            first = rng.choice(firsts) if rng.random() < 0.3 else f"q{i}"  # a turn seen before, or a new one
            files.append(
                write_pi_session(
                    home,
                    rng.choice(cwds),
                    f"0199bbbb-0000-7000-8000-{i:012d}",
                    first=first,
                    answers=rng.randrange(3),
                    stamp=f"2026-11-29T10-00-{i:02d}-000Z",
                )
            )
            firsts.append(first)
        c = rng.randrange(3)
        first = firsts[c % len(firsts)] if rng.random() < 0.9 else rng.choice(firsts + ["new turn"])
        answers = 0 if rng.random() < 0.03 else rng.randrange(1, 4)  # now and then a first request
        e = ev(first=first, answers=answers, conn=f"c{c}")
        before = dict(with_memo._memo._entries)
        served = with_memo.unseen_from_memo(e, UNREADABLE)
        a = served or with_memo.find(e, UNREADABLE, now)[0]
        b, _ = without.find(e, UNREADABLE, now)
        hits += served is not None and before.get(f"c{c}") is not None
        _same_decision(a, b, minted, step)
    assert hits >= 1  # the memo was used, not only checked


def test_the_memo_serves_a_continued_conversation_and_sees_a_new_name(home, monkeypatch):
    cwd = "/work/memo"
    path = write_pi_session(home, cwd, "0199aaaa-0000-7000-8000-0000000000aa", first="go on")
    proc = Process(
        pid=7,
        start_ticks=1,
        started_at=1000.0,
        boot_id="b",
        uid=0,
        cwd=cwd,
        comm="pi",
        exe="/usr/bin/node",
        environ={"HOME": str(home)},
    )
    p = pipeline(home)
    decisions = []
    monkeypatch.setattr(p, "_decide", lambda *a, _d=p._decide: decisions.append(1) or _d(*a))
    for turn in range(1, 6):  # pi appends each answer to the file: the memo must still serve
        s, _ = p.find(ev(first="go on", answers=turn), Seen(proc), 2000.0 + turn)
        assert s.file == str(path) and s.label == s.id
        _append(path, {"type": "message", "message": {"role": "assistant", "content": "a"}})
    assert len(decisions) == 3  # decided, settled on the process binding, confirmed; then the memo
    _append(path, {"type": "session_info", "name": "Renamed"})
    s, _ = p.find(ev(first="go on", answers=6), Seen(proc), 2010.0)
    assert s.name == "Renamed" and s.label == "renamed-000000aa" and len(decisions) == 4


def test_a_request_of_an_unseen_process_is_served_from_the_memo(home):
    path = write_pi_session(home, "/w", "feature-y", first="hello")
    p = pipeline(home)
    e = ev({"x-session-id": "feature-y"}, answers=1)
    assert p.unseen_from_memo(e, UNREADABLE) is None  # nothing decided yet
    first, _ = p.find(e, UNREADABLE, 1000.0)
    again, _ = p.find(e, UNREADABLE, 1001.0)  # confirmed
    assert first == again and first.file == str(path)
    assert p.unseen_from_memo(e, UNREADABLE) == first
    # another id named on the connection: not the memo's
    assert p.unseen_from_memo(ev({"x-session-id": "feature-z"}, answers=1), UNREADABLE) is None


# -- another user's process (issue 29): never matched to the proxy user's own stores --------------

OTHER_USER = Seen(None, "another user's process (uid 65534)", other_uid=65534)


def test_another_users_conversation_is_never_matched_to_the_proxy_users_own_session(home):
    owner = write_pi_session(
        home, "/work", "0199aaaa-0000-7000-8000-00000000c0de", first="fix the login bug", name="Private plans"
    )
    p = pipeline(home)
    for turn, answers in enumerate((1, 0)):  # a continued conversation, then a fresh one
        s, _ = p.find(ev(first="fix the login bug", answers=answers, conn=f"o{turn}"), OTHER_USER, 1000.0 + turn)
        assert s.file is None and s.name is None and s.id.startswith("ephemeral-"), s
        assert "Private plans".lower() not in s.label.lower() and "c0de" not in s.id
        assert "not looked up in the proxy user's own stores (no session_store_homes)" in s.source, s.source
    # the same request of a process whose owner is not seen (another namespace) still finds it
    seen, _ = pipeline(home).find(ev(first="fix the login bug", answers=1), UNREADABLE, 1000.0)
    assert seen.file == str(owner)


def test_another_users_conversation_is_matched_in_the_session_store_homes_named_for_it(tmp_path, home):
    write_pi_session(home, "/work", "0199aaaa-0000-7000-8000-00000000c0de", first="fix the login bug", answers=2)
    theirs = write_pi_session(
        tmp_path / "their-home",
        "/src",
        "0199aaaa-0000-7000-8000-0000000000f0",
        first="fix the login bug",
        answers=1,
        stamp="2026-11-28T10-00-00-000Z",
    )
    p = pipeline(home, [str(tmp_path / "their-home")])
    s, _ = p.find(ev(first="fix the login bug", answers=1), OTHER_USER, 1000.0)
    assert s.file == str(theirs) and s.id == "0199aaaa-0000-7000-8000-0000000000f0"
    assert "only in session_store_homes" in s.source


def test_another_user_naming_the_owners_session_id_keeps_its_own_id_without_the_owners_label(tmp_path, home):
    owner = write_pi_session(home, "/work", "feature-x", name="Private plans")
    p = pipeline(home)
    mine, _ = p.find(ev({"x-session-id": "feature-x"}, conn="mine"), UNREADABLE, 1000.0)
    assert mine.file == str(owner)  # control: the owner's own request gets its label
    s, _ = p.find(ev({"x-session-id": "feature-x"}, conn="theirs"), OTHER_USER, 1001.0)
    assert (s.id, s.label, s.name, s.file) == ("feature-x", "feature-x", None, None)
    assert s.trace_uuid != mine.trace_uuid and not s.fallback
    # with their own home named, their file of that id gives their label
    theirs = write_pi_session(tmp_path / "their-home", "/src", "feature-x", name="Their plans")
    s2, _ = pipeline(home, [str(tmp_path / "their-home")]).find(ev({"x-session-id": "feature-x"}), OTHER_USER, 1002.0)
    assert s2.file == str(theirs) and s2.name == "Their plans"


def test_another_users_minted_ids_are_its_own_and_survive_a_restart(home):
    p = pipeline(home)
    ours, _ = p.find(ev(first="write a poem", conn="a"), UNREADABLE, 1000.0)
    theirs, _ = p.find(ev(first="write a poem", conn="b"), OTHER_USER, 1000.5)
    again, _ = p.find(ev(first="write a poem", conn="c"), OTHER_USER, 1001.0)
    assert ours.id != theirs.id == again.id
    restarted = pipeline(home)
    restarted.load_state(json.loads(json.dumps(p.export_state())))
    later, _ = restarted.find(ev(first="write a poem", conn="d"), OTHER_USER, 1002.0)
    assert later.id == theirs.id
