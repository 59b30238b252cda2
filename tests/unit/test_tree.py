"""Sessions as trees (issue 21): where a session sits, from the request's headers, the agent's
environment and the process tree, as plain data; the template fields; a rename with keep."""

from __future__ import annotations

import pytest

from agent_session_ids.resolution.model import Process, Session
from agent_session_ids.resolution.tree import SessionTree


def session(sid="ses-root", label=None, agent="claude", name=None) -> Session:
    return Session(sid, label or sid, "trace-" + sid, agent, "test", name=name)


def proc(pid, ticks=100, environ=None) -> Process:
    return Process(pid, ticks, 0.0, "boot", 1000, "/work", "pi", "/usr/bin/pi", ("pi",), environ or {})


def test_a_session_without_a_tree_is_returned_as_it_is():
    tree = SessionTree(stat_of=lambda pid: None)
    s = session()
    assert tree.place(s, {}, None) is s
    fields = s.fields()
    assert (fields["session.subagent"], fields["session.parent"], fields["session.root"], fields["session.path"]) == (
        "",
        "",
        "ses-root",
        "/ses-root",
    )


def test_a_claude_sub_agent_keeps_the_session_and_names_itself():
    tree = SessionTree(stat_of=lambda pid: None)
    root = session("c0ffee00-0000-4000-8000-000000000001", "fix-the-parser-00000001")
    tree.place(root, {}, None)
    sub = tree.place(root, {"x-claude-code-agent-id": "a8eb0aa8b9aaf25f1"}, None)
    assert sub.id == root.id and sub.label == root.label  # toward OpenRouter: the parent's session
    assert (sub.subagent, sub.parent, sub.root) == ("a8eb0aa8b9aaf25f1", root.id, root.id)
    assert sub.fields()["session.path"] == "/fix-the-parser-00000001/a8eb0aa8b9aaf25f1"
    nested = tree.place(
        root, {"x-claude-code-agent-id": "bbbb", "x-claude-code-parent-agent-id": "a8eb0aa8b9aaf25f1"}, None
    )
    assert nested.fields()["session.path"] == "/fix-the-parser-00000001/a8eb0aa8b9aaf25f1/bbbb"
    assert tree.place(root, {"x-claude-code-agent-id": "not a safe id!"}, None) is root
    with_file = Session(root.id, root.label, "t", "claude", "test", file=f"/h/.claude/projects/-w/{root.id}.jsonl")
    assert tree.place(with_file, {"x-claude-code-agent-id": "a8eb"}, None).subagent_file == (
        f"/h/.claude/projects/-w/{root.id}/subagents/agent-a8eb.jsonl"
    )


def test_a_codex_sub_agent_sends_the_roots_session_and_its_own_thread():
    tree = SessionTree(stat_of=lambda pid: None)
    root = session("019a0000-0000-7000-8000-00000000000a", agent="codex")
    # the root's own turns carry its thread id too: that is no sub-agent
    assert tree.place(root, {"thread-id": root.id}, None) is root
    sub = tree.place(
        root,
        {
            "thread-id": "019a0000-0000-7000-8000-00000000000b",
            "x-codex-parent-thread-id": root.id,
            "x-openai-subagent": "review",
        },
        None,
    )
    assert (sub.subagent, sub.subagent_kind, sub.root) == ("019a0000-0000-7000-8000-00000000000b", "review", root.id)
    assert sub.fields()["session.path"] == f"/{root.label}/019a0000-0000-7000-8000-00000000000b"


def test_an_opencode_sub_agent_has_its_own_session_under_its_parent():
    tree = SessionTree(stat_of=lambda pid: None)
    parent = session("ses_parent0000000000000000", "build-the-app-00000000", agent="opencode")
    tree.place(parent, {}, None)
    child = session("ses_child00000000000000000", "look-around-00000000", agent="opencode")
    placed = tree.place(child, {"x-parent-session-id": parent.id}, None)
    # the task tool's sub-agent: it is the sub-agent, with a session of its own
    assert (placed.id, placed.parent, placed.root, placed.subagent) == (child.id, parent.id, parent.id, child.id)
    assert placed.fields()["session.path"] == "/build-the-app-00000000/look-around-00000000"
    # the parent sticks: a later request without the header is still in the tree
    assert tree.place(child, {}, None).root == parent.id


def test_a_child_pi_gets_its_parent_from_its_environment_or_the_process_tree():
    stats = {300: (200, 30), 200: (100, 20), 100: (1, 10)}  # pid -> (ppid, start ticks)
    tree = SessionTree(stat_of=stats.get)
    parent = session("019b0000-0000-7000-8000-000000000001", agent="pi")
    tree.place(parent, {}, proc(100, ticks=10))
    child = session("019b0000-0000-7000-8000-000000000002", agent="pi")
    by_tree = tree.place(child, {}, proc(300, ticks=30))  # pi -> bash -> pi
    assert (by_tree.parent, by_tree.root) == (parent.id, parent.id)
    # a reused pid (other start ticks) is not the parent
    other = SessionTree(stat_of={300: (200, 30), 200: (100, 20), 100: (1, 99)}.get)
    other.place(parent, {}, proc(100, ticks=10))
    assert other.place(child, {}, proc(300, ticks=30)).parent is None
    # the environment names it even where the process tree does not
    env = SessionTree(stat_of=lambda pid: None)
    env.place(parent, {}, proc(100, ticks=10))
    placed = env.place(child, {}, proc(300, environ={"PI_SESSION_ID": parent.id}))
    assert placed.parent == parent.id
    # an environment naming the session itself is no parent
    assert env.place(parent, {}, proc(100, ticks=10, environ={"PI_SESSION_ID": parent.id})) is parent


def test_a_parent_that_would_make_a_cycle_is_refused():
    tree = SessionTree(stat_of=lambda pid: None)
    a = session("ses_a000000000000000000000", agent="opencode")
    b = session("ses_b000000000000000000000", agent="opencode")
    assert tree.place(b, {"x-parent-session-id": a.id}, None).parent == a.id
    assert tree.place(a, {"x-parent-session-id": b.id}, None) is a  # a is b's parent already


def test_privacy_writes_the_path_by_ids():
    tree = SessionTree(stat_of=lambda pid: None)
    parent = session("ses_parent0000000000000000", "secret-plan-00000000", agent="opencode", name="Secret plan")
    tree.place(parent, {}, None)
    child = tree.place(
        session("ses_child00000000000000000", agent="opencode"), {"x-parent-session-id": parent.id}, None
    )
    assert child.fields(privacy=True)["session.path"] == f"/{parent.id}/ses_child00000000000000000"
    assert "secret" not in child.fields(privacy=True)["session.path"]


@pytest.mark.parametrize("rename", ["follow", "keep"])
def test_a_rename_follows_or_keeps_the_label_sent(rename):
    tree = SessionTree(stat_of=lambda pid: None)
    tree.rename = rename
    sid = "019b0000-0000-7000-8000-0000000000aa"
    first = tree.place(session(sid, sid, agent="pi"), {}, None)
    assert first.fields()["session.label"] == sid
    renamed = tree.place(session(sid, "release-notes-000000aa", agent="pi", name="Release notes"), {}, None)
    assert renamed.label == "release-notes-000000aa"  # what mitmweb, the ledger and the report show
    sent = renamed.fields()["session.label"]
    assert sent == (sid if rename == "keep" else "release-notes-000000aa")
    assert renamed.fields()["session.name"] == "Release notes"
    assert renamed.fields(privacy=True)["session.label"] == (
        sid if rename == "keep" else renamed.fields(privacy=True)["session.label"]
    )
