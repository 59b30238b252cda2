"""Options, commands, reload, the check command and the JSON Schema of rule files."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml
from mitmproxy.test import taddons

from agent_session_ids.addon import DEFAULT_RULES, SessionIds
from agent_session_ids.rules import RuleError, load_rules_dir, parse_rules
from test_addon import flow, run
from test_rules import GOOD

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "rules" / "rules.schema.json").read_text())


SECRET_SID = "019dbbc7-c8c5-748c-8710-3fdf6fefc083"
SECRET_RULES = """\
rules:
  - name: secret
    match: {host: openrouter.ai, path: ^/api/v1/chat/completions$, method: POST}
    set:
      - body: session_id
        value: "{session.label}"
      - header: x-session-name
        value: "{session.name}"
"""


def _named_pi_session(home: Path, cwd: Path) -> None:
    """A pi session of `cwd` named "Secret Project", whose first user turn is "fix the login bug"."""
    folder = home / ".pi" / "agent" / "sessions" / ("--" + str(cwd).lstrip("/").replace("/", "-") + "--")
    folder.mkdir(parents=True)
    lines = [
        {"type": "session", "version": 3, "id": SECRET_SID, "timestamp": "2026-05-06T12:00:00.000Z", "cwd": str(cwd)},
        {"type": "message", "message": {"role": "user", "content": [{"type": "text", "text": "fix the login bug"}]}},
        {"type": "message", "message": {"role": "assistant", "content": [], "stopReason": "stop"}},
        {"type": "session_info", "name": "Secret Project"},
    ]
    (folder / f"2026-05-06T12-00-00-000Z_{SECRET_SID}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_privacy_mode_sends_a_hash_instead_of_the_name(tmp_path):
    """A named pi session, resolved by the real addon from a real client process, sent once
    without and once with the session_privacy option."""
    home, cwd, rules = tmp_path / "home", tmp_path / "proj", tmp_path / "rules"
    cwd.mkdir()
    rules.mkdir()
    (rules / "secret.yaml").write_text(SECRET_RULES)
    _named_pi_session(home, cwd)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    # a client that looks like pi to the addon: named "pi", in `cwd`, with this HOME
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import ctypes,socket,sys,time; ctypes.CDLL(None).prctl(15, b'pi', 0, 0, 0); "
            "s=socket.create_connection(('127.0.0.1', int(sys.argv[1]))); print('ok', flush=True); time.sleep(60)",
            str(server.getsockname()[1]),
        ],
        cwd=cwd,
        env={**os.environ, "HOME": str(home)},
        stdout=subprocess.PIPE,
    )
    try:
        conn, peer = server.accept()
        assert child.stdout.readline().strip() == b"ok"
        body = json.dumps(
            {
                "model": "m",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "fix the login bug"}]},
                    {"role": "assistant", "content": "answer"},
                    {"role": "user", "content": [{"type": "text", "text": "go on"}]},
                ],
            }
        ).encode()

        def send(privacy: bool, confdir: Path):
            async def main():
                addon = SessionIds()
                with taddons.context(addon) as tctx:
                    tctx.configure(addon, confdir=str(confdir), session_rules=str(rules), session_privacy=privacy)
                    f = flow(body=body)
                    f.client_conn.peername, f.client_conn.sockname = peer, conn.getsockname()
                    await addon.request(f)
                    return f

            f = run(main())
            assert f.metadata["session_ids"]["session"]["id"] == SECRET_SID, f.comment  # the named session
            return json.loads(f.request.content)["session_id"], f.request.headers["x-session-name"], f

        plain_label, plain_name, _ = send(False, tmp_path / "c1")
        assert (plain_label, plain_name) == ("secret-project-6fefc083", "Secret Project")
        label, name, f = send(True, tmp_path / "c2")
        again_label, again_name, _ = send(True, tmp_path / "c3")
    finally:
        child.kill()
        child.wait()
        server.close()
    sent = f.request.content + bytes(f.request.headers)
    assert b"secret" not in sent.lower() and b"Secret" not in sent
    assert re.fullmatch(r"n[0-9a-f]{8}", name) and label == f"{name}-6fefc083"  # README: n<hash>-<8 chars>
    assert (again_label, again_name) == (label, name)  # stable: the same session keeps its hash


def test_commands_list_sessions_explain_flows_and_check_folders(tmp_path):
    async def go(addon, tctx):
        f = flow()
        await addon.request(f)
        return addon, f

    async def main():
        addon = SessionIds()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, confdir=str(tmp_path), session_rules=DEFAULT_RULES)
            return await go(addon, tctx)

    addon, f = run(main())
    table = addon.cmd_sessions()
    session_id = f.metadata["session_ids"]["session"]["id"]
    decided = table.split("How each session was decided:\n", 1)[1]
    assert session_id in decided and decided.splitlines()[0].split()[:3] == ["AGENT", "REQS", "PID"]
    explained = addon.cmd_explain(f)
    assert f"session   {session_id}" in explained and "set       body.session_id: None ->" in explained
    assert "openrouter-session-id" in explained and "~d '^openrouter\\.ai$'" in explained
    assert addon.cmd_check(DEFAULT_RULES).startswith(f"ok: {len(load_rules_dir(DEFAULT_RULES))} rules")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.yaml").write_text(GOOD.replace("host:", "hots:"))
    assert (
        addon.cmd_check(str(bad))
        == f"{bad / 'x.yaml'}:4: unknown key 'hots' in 'match'; use one of: filter, host, method, path"
    )


def test_fallback_ids_can_be_switched_off(tmp_path):
    async def main():
        addon = SessionIds()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, confdir=str(tmp_path), session_rules=DEFAULT_RULES, session_fallback=False)
            f = flow()
            await addon.request(f)
            return f

    f = run(main())
    assert b"session_id" not in f.request.content
    assert "fallback IDs are off" in f.comment


def test_reload_swaps_good_rules_and_keeps_the_running_ones_on_a_bad_edit(tmp_path, caplog):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.yaml").write_text(GOOD)

    async def main():
        addon = SessionIds()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, confdir=str(tmp_path), session_rules=str(rules))
            assert [a.key for r in addon.rules.rules for a in r.actions] == ["x-a"]
            (rules / "a.yaml").write_text(GOOD.replace("x-a", "x-b"))
            assert addon.cmd_reload().startswith("reloaded 1 rules")
            assert [a.key for r in addon.rules.rules for a in r.actions] == ["x-b"]
            (rules / "a.yaml").write_text(GOOD.replace("x-a", "x b"))
            message = addon.cmd_reload()
            assert "keeping the 1 running ones" in message and "a.yaml:6" in message
            return [a.key for r in addon.rules.rules for a in r.actions]

    assert run(main()) == ["x-b"]


def test_the_rules_folder_is_watched(tmp_path, monkeypatch):
    from agent_session_ids.rules import rulebook

    monkeypatch.setattr(rulebook, "POLL_S", 0.05)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.yaml").write_text(GOOD)

    async def main():
        addon = SessionIds()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, confdir=str(tmp_path), session_rules=str(rules))
            addon.running()
            (rules / "b.yaml").write_text(GOOD.replace("name: r", "name: second"))
            for _ in range(100):
                await asyncio.sleep(0.05)
                if len(addon.rules.rules) == 2:
                    break
            addon.done()
            return [r.name for r in addon.rules.rules]

    assert run(main()) == ["r", "second"]


def test_check_command_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "addon")}
    ok = subprocess.run(
        [sys.executable, "-m", "agent_session_ids.check", str(ROOT / "rules")], capture_output=True, text=True, env=env
    )
    assert ok.returncode == 0 and ok.stdout.startswith(f"ok: {len(load_rules_dir(ROOT / 'rules'))} rules")
    (tmp_path / "x.yaml").write_text("rules:\n  - name: x\n")
    bad = subprocess.run(
        [sys.executable, "-m", "agent_session_ids.check", str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 1 and bad.stderr.strip() == f"{tmp_path / 'x.yaml'}:2: a rule needs 'match'; add it"


# -- the JSON Schema agrees with the addon's own validation ---------------------------------------

VALID = [
    GOOD,
    GOOD.replace("host: example.com", "host: [a.example.com, '*.example.org']\n      method: [POST, PUT]"),
    GOOD.replace('"{session.id}"', '"{{literal}} {agent.name}-{ session.label }"'),
    GOOD + "        max_length: 30\n        keep: last\n        if_present: replace\n",
    GOOD.replace("    match:", "    fallback: false\n    match:"),
    GOOD.replace("header: x-a", "body: metadata.session_id"),
    GOOD.replace("    match:", "    enabled: false\n    match:"),
    GOOD + "        json_key: session\n        max_entries: 5\n",
    GOOD + "    client_fields:\n      - header: X-Meta\n        json_key: session\n      - body: a.b\n",
    "rules: []\n",
    "{}\n",
]
INVALID = [
    GOOD.replace("header: x-a", "hedaer: x-a"),
    GOOD.replace("{session.id}", "{session.idd}"),
    GOOD.replace('"{session.id}"', '"{"'),
    GOOD.replace("host: example.com", "host: https://example.com/"),
    GOOD.replace('value: "{session.id}"', "value: 7"),
    GOOD + "        max_length: 0\n",
    GOOD + "        max_length: true\n",
    GOOD + "        keep: middle\n",
    GOOD + "        if_present: merge\n",
    GOOD.replace("    match:", "    fallback: maybe\n    match:"),
    GOOD.replace("  - name: r\n", "  -\n"),
    GOOD.replace("header: x-a", "header: 'x a'"),
    GOOD.replace("header: x-a", "header: x-a\n        body: b"),
    GOOD.replace("header: x-a", "body: 'a..b'"),
    GOOD.replace("      host: example.com\n", "      {}\n").replace("    match:\n      {}", "    match: {}"),
    "rule:\n  - {}\n",
    "rules: {}\n",
    GOOD.replace("    set:\n", "    set: []\n    x:\n"),
    GOOD.replace("    match:", "    enabled: maybe\n    match:"),
    GOOD + "        max_entries: 5\n",
    GOOD + "        json_key: session\n        max_entries: 0\n",
    GOOD + "        json_key: ''\n",
    GOOD.replace("header: x-a", "body: a") + "        json_key: session\n",
    GOOD + "    client_fields:\n      - body: a\n        json_key: session\n",
    GOOD + "    client_fields:\n      - json_key: session\n",
    GOOD + "    client_fields:\n      - header: x-a\n        body: a\n",
    GOOD + "    client_fields:\n      - header: x-a\n        keep: last\n",
]


def addon_accepts(text: str) -> bool:
    try:
        parse_rules(text, "x.yaml")
    except RuleError:
        return False
    return True


def schema_accepts(text: str) -> bool:
    try:
        jsonschema.validate(yaml.safe_load(text) or {}, SCHEMA)
    except jsonschema.ValidationError:
        return False
    return True


@pytest.mark.parametrize("text", VALID + INVALID)
def test_schema_and_addon_agree(text):
    assert addon_accepts(text) == schema_accepts(text) == (text in VALID), textwrap.indent(text, "  ")


def test_shipped_rules_pass_the_schema_and_name_it():
    for path in sorted((ROOT / "rules").glob("*.yaml")):
        text = path.read_text()
        assert text.startswith("# yaml-language-server: $schema=rules.schema.json"), path
        jsonschema.validate(yaml.safe_load(text), SCHEMA)
