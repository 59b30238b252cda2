"""Rule files: the shipped ones load, and every kind of mistake is one line naming file, line, fix."""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml

from agent_session_ids.rules import ClientField, RuleError, active_rules, load_rules_dir, parse_rules
from agent_session_ids.rules.matching import RuleSet

RULES_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "rules")
ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "rules" / "rules.schema.json").read_text())
#: the shipped rules that are on by default, and those that ship off (self-hosted gateways)
ON = {
    "openrouter-session-id",
    "opencode-session",
    "opper-trace",
    "helicone-session",
    "portkey-trace",
    "openai-prompt-cache-key",
    "fireworks-session-affinity",
    "cloudflare-aig-metadata",
    "llmgateway-session",
}
OFF = {"litellm-session", "bifrost-session"}


def parse(text: str):
    return parse_rules(textwrap.dedent(text), "x.yaml")


def error_of(text: str) -> RuleError:
    with pytest.raises(RuleError) as e:
        parse(text)
    assert "\n" not in str(e.value)
    return e.value


def test_shipped_rules_load_and_cover_every_gateway():
    rules = load_rules_dir(RULES_DIR)
    assert {r.name for r in rules} == ON | OFF
    assert {r.name for r in rules if r.enabled} == ON
    assert RuleSet(rules).hosts == [
        "ai-gateway.helicone.ai",
        "anthropic.helicone.ai",
        "api.fireworks.ai",
        "api.llmgateway.io",
        "api.openai.com",
        "api.opper.ai",
        "api.portkey.ai",
        "gateway.ai.cloudflare.com",
        "gateway.helicone.ai",
        "oai.helicone.ai",
        "opencode.ai",
        "openrouter.ai",
    ]


@pytest.mark.parametrize("path", sorted((ROOT / "rules").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_rule_file_passes_the_schema_and_the_addons_own_check(path):
    """Every file, the ones that ship off included: the JSON Schema, the addon's parser, and what
    every shipped rule must say."""
    text = path.read_text()
    assert text.startswith("# yaml-language-server: $schema=rules.schema.json\n")
    jsonschema.validate(yaml.safe_load(text), SCHEMA)
    rules = parse_rules(text, str(path))  # raises RuleError with file:line
    assert rules
    comment = "".join(line for line in text.splitlines(keepends=True) if line.lstrip().startswith("#"))
    if path.name not in ("opencode.yaml", "opper.yaml"):  # (these two came before the rule was made)
        # the wire facts are cited: a public documentation address in the file's comment
        assert re.search(r"\b[a-z0-9.-]+\.(ai|io|com|dev)/[a-z0-9/_#.-]+", comment), f"{path.name} cites no source"
    for rule in rules:
        # never weaker than the client: every rule says where its gateway honours the client's own id
        assert rule.client_fields, f"{rule.name} has no client_fields"
        if not rule.match.hosts:  # a self-hosted gateway: its host comes from the option
            assert not rule.enabled, f"{rule.name} matches every host and is on"
        if not rule.enabled:  # how to switch it on, in one line, in its file and in the README
            line = f"--set session_enable={rule.name}@"
            assert line in comment, f"{path.name} does not say how to switch {rule.name} on"
            assert line in (ROOT / "README.md").read_text(), f"the README does not say how to switch {rule.name} on"


def test_the_rules_that_ship_off_are_switched_on_by_the_option_with_their_host():
    rules = load_rules_dir(RULES_DIR)
    assert {r.name for r in active_rules(rules)} == ON
    on = active_rules(
        rules, "litellm-session@litellm.example.internal, bifrost-session@a.internal,bifrost-session@B.internal"
    )
    assert {r.name for r in on} == ON | OFF
    by_name = {r.name: r for r in on}
    assert by_name["litellm-session"].match.hosts == ("litellm.example.internal",)
    assert by_name["bifrost-session"].match.hosts == ("a.internal", "b.internal")
    assert RuleSet(on).candidates("litellm.example.internal") == [by_name["litellm-session"]]
    assert "~d '^litellm\\.example\\.internal$'" in by_name["litellm-session"].match.to_filter_expression()
    # a rule that is on already can be pointed at another host; the others are untouched
    moved = {r.name: r for r in active_rules(rules, "openrouter-session-id@router.internal")}
    assert moved["openrouter-session-id"].match.hosts == ("router.internal",)
    assert moved["opencode-session"].match.hosts == ("opencode.ai",)


@pytest.mark.parametrize(
    "spec, words",
    [
        ("litellm", ["no rule is named 'litellm'", "bifrost-session, litellm-session", "name@host"]),
        ("litellm-session", ["names no host", "session_enable=litellm-session@<host>"]),
        ("litellm-session@https://x.example/", ["is not a host name", "no scheme, port or path"]),
        ("bifrost-session@localhost:8080", ["is not a host name"]),
    ],
)
def test_a_wrong_session_enable_is_one_line_that_says_the_fix(spec, words):
    with pytest.raises(RuleError) as e:
        active_rules(load_rules_dir(RULES_DIR), spec)
    assert str(e.value).startswith("session_enable: ") and "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_json_members_of_headers_and_switched_off_rules_parse():
    (rule,) = parse("""\
        rules:
          - name: r
            enabled: false
            match: {path: ^/v1/}
            client_fields:
              - header: X-Meta
                json_key: session
            set:
              - header: x-meta
                json_key: session
                max_entries: 5
                value: "{session.id}"
              - header: x-meta
                json_key: agent
                value: "{agent.name}"
        """)
    assert rule.enabled is False
    assert rule.client_fields == (ClientField("header", "x-meta", "session"),)
    assert [(a.json_key, a.max_entries) for a in rule.actions] == [("session", 5), ("agent", None)]
    target, key = rule.client_fields[0]  # a client field still unpacks as (target, key)
    assert (target, key) == ("header", "x-meta")


def test_a_client_field_reads_its_json_member():
    field = ClientField("header", "cf-aig-metadata", "session")
    assert field.header_value('{"team": "AI", "session": "s-1"}') == "s-1"
    assert field.header_value('{"session": 42}') == "42"
    for raw in ('{"team": "AI"}', '{"session": true}', '{"session": {"a": 1}}', "not json", "[1]", "", None):
        assert field.header_value(raw) is None, raw
    assert ClientField("header", "x-session-id").header_value("abc") == "abc"
    assert field.describe == "header cf-aig-metadata (session)"


GOOD = """\
rules:
  - name: r
    match:
      host: example.com
    set:
      - header: x-a
        value: "{session.id}"
"""


def test_a_minimal_rule_has_the_documented_defaults():
    (rule,) = parse(GOOD)
    (action,) = rule.actions
    assert (rule.fallback, action.if_present, action.keep, action.max_length) == (True, "keep", "first", None)
    assert rule.line == 2


@pytest.mark.parametrize(
    "text, line, words",
    [
        (GOOD.replace("header: x-a", "hedaer: x-a"), 6, ["unknown key 'hedaer'", "use one of"]),
        (
            GOOD.replace("{session.id}", "{session.idd}"),
            7,
            ["unknown template field '{session.idd}'", "{session.label}"],
        ),
        (
            GOOD.replace("host: example.com", "path: '(unclosed'"),
            4,
            ["not a valid regular expression", "fix the pattern"],
        ),
        (GOOD.replace("host: example.com", "host: https://example.com/"), 4, ["not a host name"]),
        (GOOD.replace("host: example.com", "filter: '~q ~~'"), 4, ["not a mitmproxy filter expression"]),
        (GOOD.replace('value: "{session.id}"', "value: 7"), 7, ["must be a string"]),
        (GOOD.replace('value: "{session.id}"', 'value: "{"'), 7, ["unbalanced brace"]),
        (GOOD + "        max_length: 0\n", 8, ["at least 1"]),
        (GOOD + "        keep: middle\n", 8, ["first, last"]),
        (GOOD + "        if_present: merge\n", 8, ["keep, replace"]),
        (GOOD.replace("    match:", "    fallback: maybe\n    match:"), 3, ["true or false"]),
        (GOOD.replace("  - name: r\n", "  -\n"), 3, ["needs 'name'"]),
        (GOOD.replace("header: x-a", "header: 'x a'"), 6, ["not a valid header name"]),
        ("rules:\n  - name: r\n    match: {host: a.b\n", 4, ["YAML syntax error"]),
        ("rule:\n  - {}\n", 1, ["unknown key 'rule'"]),
        (GOOD + "      - header: X-A\n        value: b\n", 8, ["twice"]),
        (
            GOOD + "        json_key: s\n      - header: X-A\n        json_key: s\n        value: b\n",
            9,
            ["member 's' twice"],
        ),
        (GOOD.replace("    match:", "    enabled: no-thanks\n    match:"), 3, ["'enabled' must be true or false"]),
        (
            GOOD.replace("header: x-a", "body: a.b") + "        json_key: s\n",
            8,
            ["'json_key' names a member", "with 'header'"],
        ),
        (GOOD + "        max_entries: 5\n", 8, ["use it with 'json_key'"]),
        (GOOD + "        json_key: s\n        max_entries: 0\n", 9, ["'max_entries' must be at least 1"]),
        (GOOD + "        json_key: ''\n", 8, ["'json_key' must not be empty"]),
        (GOOD + "    client_fields:\n      - json_key: s\n", 9, ["exactly one of 'header: <name>' or 'body"]),
        (GOOD + "    client_fields:\n      - body: a\n        json_key: s\n", 10, ["'json_key' names a member"]),
    ],
)
def test_each_mistake_names_file_line_and_fix(text, line, words):
    e = error_of(text)
    assert (e.file, e.line) == ("x.yaml", line), str(e)
    for w in words:
        assert w in str(e), str(e)


def test_duplicate_rule_names_across_files(tmp_path):
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD)
    with pytest.raises(RuleError) as e:
        load_rules_dir(tmp_path)
    assert "b.yaml:2" in str(e.value) and "already used at" in str(e.value)


def test_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(RuleError) as e:
        load_rules_dir(tmp_path / "nope")
    assert "does not exist" in str(e.value)


def test_template_literal_braces_render():
    (rule,) = parse(GOOD.replace("{session.id}", "{{x}}-{agent.name}"))
    assert rule.actions[0].value.render({"agent.name": "pi"}) == "{x}-pi"


def test_host_index_matches_exact_and_wildcard_hosts():
    rules = parse(
        """\
        rules:
          - name: exact
            match: {host: api.example.com}
            set: [{header: x-a, value: a}]
          - name: wild
            match: {host: "*.example.com"}
            set: [{header: x-b, value: b}]
          - name: any
            match: {method: POST}
            set: [{header: x-c, value: c}]
        """
    )
    rs = RuleSet(rules)
    assert [r.name for r in rs.candidates("API.example.com")] == ["exact", "wild", "any"]
    assert [r.name for r in rs.candidates("example.com")] == ["any"]
