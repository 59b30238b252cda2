"""Options, commands, reload, the check command and the JSON Schema of rule files."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml
from mitmproxy.test import taddons

from agent_session_ids.addon import DEFAULT_RULES, SessionIds
from agent_session_ids.resolution.model import Session
from agent_session_ids.rules import RuleError, parse_rules

from test_addon import flow, run
from test_rules import GOOD

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "rules" / "rules.schema.json").read_text())


def test_privacy_mode_sends_a_hash_instead_of_the_name():
    s = Session("019dbbc7-c8c5-748c-8710-3fdf6fefc083", "secret-project-6fefc083", "t", "pi", "x",
                name="Secret Project")
    plain, private = s.fields(), s.fields(privacy=True)
    assert plain["session.label"] == "secret-project-6fefc083"
    assert "secret" not in private["session.label"] and private["session.label"].endswith("-6fefc083")
    assert private["session.name"] != "Secret Project" and private["session.name"] == s.fields(True)["session.name"]


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
    assert session_id in table and table.splitlines()[0].split()[:3] == ["AGENT", "REQS", "PID"]
    explained = addon.cmd_explain(f)
    assert f"session   {session_id}" in explained and "set       body.session_id: None ->" in explained
    assert "openrouter-session-id" in explained and "~d '^openrouter\\.ai$'" in explained
    assert addon.cmd_check(DEFAULT_RULES).startswith("ok: 3 rules")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.yaml").write_text(GOOD.replace("host:", "hots:"))
    assert addon.cmd_check(str(bad)) == f"{bad / 'x.yaml'}:4: unknown key 'hots' in 'match'; use one of: filter, host, method, path"


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
    from agent_session_ids import addon as addon_module

    monkeypatch.setattr(addon_module, "RULES_POLL_S", 0.05)
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
    ok = subprocess.run([sys.executable, "-m", "agent_session_ids.check", str(ROOT / "rules")],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: 3 rules")
    (tmp_path / "x.yaml").write_text("rules:\n  - name: x\n")
    bad = subprocess.run([sys.executable, "-m", "agent_session_ids.check", str(tmp_path)],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and bad.stderr.strip() == f"{tmp_path / 'x.yaml'}:2: a rule needs 'match'; add it"


# -- the JSON Schema agrees with the addon's own validation ---------------------------------------

VALID = [
    GOOD,
    GOOD.replace("host: example.com", "host: [a.example.com, '*.example.org']\n      method: [POST, PUT]"),
    GOOD.replace('"{session.id}"', '"{{literal}} {agent.name}-{ session.label }"'),
    GOOD + "        max_length: 30\n        keep: last\n        if_present: replace\n",
    GOOD.replace("    match:", "    fallback: false\n    match:"),
    GOOD.replace("header: x-a", "body: metadata.session_id"),
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
