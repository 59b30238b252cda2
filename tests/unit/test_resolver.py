"""The pure session decision, case by case, from plain snapshots (no I/O)."""

from __future__ import annotations

import uuid

from agent_session_ids.resolution import ids
from agent_session_ids.resolution.conversation import Conversation, fingerprint
from agent_session_ids.resolution.model import Process, SessionFile
from agent_session_ids.resolution.resolver import Resolver

T0 = 1_800_000_000.0
DIR = "/home/u/.pi/agent/sessions/--home-u-proj--"


def proc(pid=100, start=T0, cwd="/home/u/proj") -> Process:
    return Process(
        pid=pid,
        start_ticks=int(start * 100),
        started_at=start,
        boot_id="boot",
        uid=1000,
        cwd=cwd,
        comm="pi",
        exe="/usr/bin/node",
    )


def conv(first: str, n_user=1, n_assistant=0) -> Conversation:
    return Conversation(fingerprint(first), n_user, n_assistant)


def sfile(
    sid: str, first: str | None, created: float, n_assistant=1, name=None, mtime=None, parent=None, folder=DIR
) -> SessionFile:
    return SessionFile(
        path=f"{folder}/2026-01-01T00-00-00-000Z_{sid}.jsonl",
        id=sid,
        created=created,
        mtime=mtime if mtime is not None else created + 5,
        first_user=fingerprint(first) if first else None,
        n_assistant=n_assistant,
        name=name,
        parent=parent,
    )


U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"
U3 = "33333333-3333-4333-8333-333333333333"


def test_new_session_first_request_before_its_file_keeps_its_id():
    r = Resolver()
    p = proc()
    previous = sfile(U1, "old prompt", created=T0 - 3600)  # the naive heuristic's answer
    first = r.for_process("pi", p, conv("hello"), [previous], T0 + 1)
    assert first.id.startswith("ephemeral-")
    assert first.id != U1 and first.file is None
    # pi wrote the file with the first answer; the second request (after a tool call) finds it
    written = sfile(U2, "hello", created=T0 + 0.5)
    second = r.for_process("pi", p, conv("hello", 1, 1), [written], T0 + 3)
    assert second.id == first.id
    assert second.trace_uuid == first.trace_uuid
    assert second.file == written.path
    # the file is now bound to the minted ID for good
    third = r.for_process("pi", p, conv("hello", 2, 2), [written], T0 + 9)
    assert third.id == first.id


def test_second_new_session_in_the_same_cwd_gets_a_new_id():
    r = Resolver()
    a = r.for_process("pi", proc(100, T0), conv("same words"), [], T0 + 1)
    done = sfile(U1, "same words", created=T0 + 0.5)
    assert r.for_process("pi", proc(100, T0), conv("same words", 1, 1), [done], T0 + 2).id == a.id
    # a later process, same cwd, same prompt: the earlier file was created before it started
    b = r.for_process("pi", proc(200, T0 + 60), conv("same words"), [done], T0 + 61)
    assert b.id != a.id and b.id != U1


def test_continue_carries_the_continued_sessions_id_from_its_first_request():
    r = Resolver()
    # Two sessions in the cwd. `older` was written to last, so a guess by recency (or by list
    # order) picks it; only the request's conversation says that it continues `newest`.
    older = sfile(U1, "first topic", created=T0 - 7200, n_assistant=1, mtime=T0 - 60)
    newest = sfile(U2, "second topic", created=T0 - 3600, n_assistant=1, mtime=T0 - 3500)
    s = r.for_process("pi", proc(), conv("second topic", 2, 1), [older, newest], T0 + 1)
    assert s.id == U2 and s.file == newest.path  # from the first request: no minted id first
    s2 = r.for_process("pi", proc(), conv("second topic", 3, 2), [older, newest], T0 + 5)
    assert s2.id == U2 and s2.file == newest.path


def test_continue_picks_the_newest_of_files_with_the_same_first_turn():
    r = Resolver()
    a = sfile(U1, "hello", created=T0 - 7200, n_assistant=1, mtime=T0 - 7000)
    b = sfile(U2, "hello", created=T0 - 3600, n_assistant=1, mtime=T0 - 100)
    assert r.for_process("pi", proc(), conv("hello", 2, 1), [a, b], T0 + 1).id == U2


def test_two_processes_at_once_in_one_cwd_keep_their_own_ids():
    r = Resolver()
    outer, inner = proc(100, T0), proc(200, T0 + 5)
    o1 = r.for_process("pi", outer, conv("outer task"), [], T0 + 1)
    # the outer pi answered with a tool call and wrote its file; the tool starts a sub-agent pi
    f_outer = sfile(U1, "outer task", created=T0 + 0.4)
    i1 = r.for_process("pi", inner, conv("inner task"), [], T0 + 6)
    f_inner = sfile(U2, "inner task", created=T0 + 5.4)
    i2 = r.for_process("pi", inner, conv("inner task", 1, 1), [f_inner], T0 + 7)
    o2 = r.for_process("pi", outer, conv("outer task", 1, 1), [f_outer], T0 + 8)
    assert o1.id == o2.id and i1.id == i2.id and o1.id != i1.id
    assert o2.file == f_outer.path and i2.file == f_inner.path


def test_two_processes_with_the_same_prompt_in_one_cwd_keep_their_own_ids():
    r = Resolver()
    p1, p2 = proc(100, T0), proc(200, T0 + 10)
    a1 = r.for_process("pi", p1, conv("hi"), [], T0 + 1)
    b1 = r.for_process("pi", p2, conv("hi"), [], T0 + 11)
    f1 = sfile(U1, "hi", created=T0 + 0.5)
    f2 = sfile(U2, "hi", created=T0 + 10.5)
    b2 = r.for_process("pi", p2, conv("hi", 1, 1), [f1, f2], T0 + 12)
    a2 = r.for_process("pi", p1, conv("hi", 1, 1), [f1, f2], T0 + 13)
    assert a1.id == a2.id and b1.id == b2.id and a1.id != b1.id
    assert a2.file == f1.path and b2.file == f2.path


def test_two_processes_in_different_cwds_keep_their_own_ids():
    r = Resolver()
    pa, pb = proc(100, T0, "/home/u/a"), proc(200, T0, "/home/u/b")
    fa = sfile(U1, "task", created=T0 - 100, folder="/s/--home-u-a--")
    fb = sfile(U2, "task", created=T0 - 100, folder="/s/--home-u-b--")
    a = r.for_process("pi", pa, conv("task", 2, 1), [fa], T0 + 1)
    b = r.for_process("pi", pb, conv("task", 2, 1), [fb], T0 + 1)
    assert (a.id, b.id) == (U1, U2)


def test_no_session_gets_one_ephemeral_id_for_the_process_life():
    r = Resolver()
    p = proc()
    existing = sfile(U1, "question", created=T0 - 50)
    ids_seen = {r.for_process("pi", p, conv("question", 1, n), [existing], T0 + n).id for n in range(4)}
    assert len(ids_seen) == 1
    (sid,) = ids_seen
    assert sid.startswith("ephemeral-") and sid != U1


def test_name_set_mid_session_changes_the_label_from_the_next_request():
    r = Resolver()
    p = proc()
    f = sfile("019dbbc7-c8c5-748c-8710-3fdf6fefc083", "refactor", created=T0 - 10, n_assistant=1)
    assert r.for_process("pi", p, conv("refactor", 2, 1), [f], T0).label == f.id
    named = sfile(f.id, "refactor", created=T0 - 10, n_assistant=2, name="Refactor auth module!")
    s = r.for_process("pi", p, conv("refactor", 3, 2), [named], T0 + 5)
    assert s.label == "refactor-auth-module-6fefc083"
    assert s.id == f.id and s.name == "Refactor auth module!"


def test_name_given_at_start_applies_once_the_file_is_written():
    r = Resolver()
    p = proc()
    first = r.for_process("pi", p, conv("go"), [], T0 + 1)
    assert first.label == first.id  # the name is only in pi's memory
    f = sfile(U1, "go", created=T0 + 0.5, name="my feature")
    second = r.for_process("pi", p, conv("go", 1, 1), [f], T0 + 2)
    assert second.id == first.id
    assert second.label == "my-feature-" + ids.short_id(first.id)


def test_bindings_survive_a_restart():
    r = Resolver()
    p = proc()
    first = r.for_process("pi", p, conv("persist me"), [], T0 + 1)
    f = sfile(U1, "persist me", created=T0 + 0.5)
    r.for_process("pi", p, conv("persist me", 1, 1), [f], T0 + 2)
    saved = r.export_state()
    restarted = Resolver()
    restarted.load_state(saved)
    # a fresh proxy sees the session continue (from this process or a later `pi -c`)
    later = restarted.for_process("pi", proc(300, T0 + 100), conv("persist me", 2, 1), [f], T0 + 101)
    assert later.id == first.id and later.trace_uuid == first.trace_uuid


def test_a_pending_session_survives_a_restart_before_its_file_appears():
    r = Resolver()
    p = proc()
    first = r.for_process("pi", p, conv("slow"), [], T0 + 1)
    restarted = Resolver()
    restarted.load_state(r.export_state())
    f = sfile(U1, "slow", created=T0 + 0.5)
    assert restarted.for_process("pi", p, conv("slow", 1, 1), [f], T0 + 5).id == first.id


def test_new_inside_one_process_starts_a_new_session():
    r = Resolver()
    p = proc()
    f1 = sfile(U1, "topic one", created=T0 + 0.5)
    a = r.for_process("pi", p, conv("topic one", 1, 1), [f1], T0 + 2)
    b = r.for_process("pi", p, conv("topic two"), [], T0 + 20)
    assert b.id != a.id
    f2 = sfile(U2, "topic two", created=T0 + 19)
    assert r.for_process("pi", p, conv("topic two", 1, 1), [f2], T0 + 22).id == b.id


def test_resume_of_another_file_inside_one_process_switches():
    r = Resolver()
    p = proc()
    f1 = sfile(U1, "topic one", created=T0 - 10)
    f2 = sfile(U2, "topic two", created=T0 - 500, n_assistant=3)
    assert r.for_process("pi", p, conv("topic one", 2, 1), [f1], T0 + 1).id == U1
    assert r.for_process("pi", p, conv("topic two", 4, 3), [f2], T0 + 5).id == U2


def test_fork_inside_one_process_switches_to_the_forked_file():
    r = Resolver()
    p = proc()
    f1 = sfile(U1, "base", created=T0 - 10, n_assistant=2)
    assert r.for_process("pi", p, conv("base", 3, 2), [f1], T0 + 1).id == U1
    fork = sfile(U2, "base", created=T0 + 3, n_assistant=1, parent=f1.path)
    assert r.for_process("pi", p, conv("base", 2, 1), [f1, fork], T0 + 5).id == U2


def test_compaction_keeps_the_process_on_its_session():
    r = Resolver()
    p = proc()
    f1 = sfile(U1, "long work", created=T0 - 10, n_assistant=40)
    assert r.for_process("pi", p, conv("long work", 41, 40), [f1], T0 + 1).id == U1
    # after compaction the first user turn is a summary that no file starts with
    assert r.for_process("pi", p, conv("The conversation so far: ...", 3, 2), [f1], T0 + 5).id == U1


def test_the_request_header_names_the_session_even_before_its_file():
    r = Resolver()
    p = proc()
    first = r.for_process("pi", p, conv("hi"), [], T0 + 1, hint=U3, hint_source="header x-session-id")
    assert first.id == U3 and first.label == U3 and "x-session-id" in first.source
    f = sfile(U3, "hi", created=T0 + 0.5, name=None)
    second = r.for_process("pi", p, conv("hi", 1, 1), [f], T0 + 2, hint=U3, hint_source="header x-session-id")
    assert second.id == U3 and second.trace_uuid == first.trace_uuid and second.file == f.path


def test_a_header_named_session_with_a_file_uses_the_opper_trace_of_its_path():
    r = Resolver()
    f = sfile(U3, "hi", created=T0 - 100)
    s = r.for_process("pi", proc(), conv("hi", 2, 1), [f], T0, hint=U3, hint_source="header x-session-id")
    assert s.trace_uuid == ids.trace_uuid(f.path)


def test_fallback_is_per_process_and_stable():
    r = Resolver()
    a1 = r.fallback("curl", proc(100, T0), None, "not an agent")
    a2 = r.fallback("curl", proc(100, T0), None, "not an agent")
    b = r.fallback("curl", proc(100, T0 + 5), None, "not an agent")  # the pid was reused
    c = r.fallback("unknown", None, "conn-1", "no process")
    assert a1.id == a2.id and a1.id != b.id and a1.fallback and c.fallback and c.id != a1.id
    uuid.UUID(a1.trace_uuid)


def test_agent_request_without_a_conversation_uses_the_process_binding():
    r = Resolver()
    p = proc()
    f = sfile(U1, "x", created=T0 - 5)
    s = r.for_process("pi", p, conv("x", 2, 1), [f], T0)
    assert r.for_process("pi", p, None, [f], T0 + 1).id == s.id
    assert r.for_process("pi", proc(999, T0), None, [], T0 + 1).fallback


def test_prune_forgets_ended_processes():
    r = Resolver()
    p = proc()
    r.for_process("pi", p, conv("ephemeral"), [], T0)
    assert p.key in r.pending
    r.prune([], T0 + 10)
    assert p.key not in r.on and r.pending[p.key].ended  # kept a while as an orphan
    r.prune([], T0 + 8 * 24 * 3600)
    assert p.key not in r.pending


def test_a_one_request_session_is_bound_when_its_file_is_seen_later():
    r = Resolver()
    p = proc(100, T0)
    first = r.for_process("pi", p, conv("quick question", 1, 0), [], T0 + 1)  # `pi -p`: one request, exits
    r.prune([], T0 + 100)
    restarted = Resolver()
    restarted.load_state(r.export_state())
    f = sfile(U1, "quick question", created=T0 + 0.6)
    later = restarted.for_process("pi", proc(200, T0 + 500), conv("quick question", 2, 1), [f], T0 + 501)  # `pi -c`
    assert later.id == first.id and later.trace_uuid == first.trace_uuid
    # an unrelated older file with the same first turn is not adopted
    old = sfile(U2, "quick question", created=T0 - 3600)
    assert restarted.for_process("pi", proc(300, T0 + 600), conv("quick question", 2, 1), [old], T0 + 601).id == U2


def test_a_session_left_by_new_before_its_file_is_still_bound_later():
    r = Resolver()
    p = proc(100, T0)
    a = r.for_process("pi", p, conv("first topic"), [], T0 + 1)
    b = r.for_process("pi", p, conv("second topic"), [], T0 + 30)
    assert a.id != b.id
    f_a = sfile(U1, "first topic", created=T0 + 0.5)
    assert r.for_process("pi", proc(200, T0 + 60), conv("first topic", 2, 1), [f_a], T0 + 61).id == a.id


# Opper's pi extension derives the trace id as uuid5(NS, <pi session file path>), with
# NS = 3f2504e0-4f89-41d3-9a0c-0305e82c3301 (opper-ai/cli, data/pi-opper-extension/opper-session.ts;
# see also ../shared/reference/pi.md and gateways.md), and `pi-proc-<pid>-<hrtime>` for a session
# without a file. The expected values below were computed once, outside this code base, with that
# extension's own algorithm on Node (node:crypto SHA-1 of the namespace bytes + the UTF-8 name,
# version and variant bits set), and agree with Python's uuid.uuid5. They are fixed on purpose.
OPPER_TRACE_VECTORS = [
    (
        "/home/u/.pi/agent/sessions/--home-u-proj--/2026-05-06T12-00-00-000Z_019dbbc7-c8c5-748c-8710-3fdf6fefc083.jsonl",
        "9bcfc164-cee6-5377-94c2-818be70e3012",
    ),
    (
        "/home/jösé/.pi/agent/sessions/--home-jösé-проект--/2026-05-06T12-00-00-000Z_019dbbc7-c8c5-748c-8710-3fdf6fefc083.jsonl",
        "07d47f7a-21b1-51d6-8b1b-a3e6b2fb9c2e",
    ),
    ("pi-proc-4242-123456789", "f78fec16-275f-5845-8aa0-ffea0436e3b5"),
]


def test_ids_match_the_reference_extensions():
    for key, expected in OPPER_TRACE_VECTORS:
        assert ids.trace_uuid(key) == expected, key
    assert ids.slug("  Refactor: Auth/Module  ") == "refactor-auth-module"
    assert len(ids.slug("x" * 80)) == 50
    assert ids.short_id("019dbbc7-c8c5-748c-8710-3fdf6fefc083") == "6fefc083"
    assert ids.label("!!!", "abc") == "abc"
    e = ids.mint_ephemeral(1.5)
    assert e.startswith("ephemeral-1500-") and len(e) == len("ephemeral-1500-") + 10
