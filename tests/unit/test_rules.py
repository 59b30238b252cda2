"""Rule files: the shipped ones load, and every kind of mistake is one line naming file, line, fix."""

from __future__ import annotations

import os
import textwrap

import pytest

from agent_session_ids.matching import RuleSet
from agent_session_ids.rules import RuleError, load_rules_dir, parse_rules

RULES_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "rules")


def parse(text: str):
    return parse_rules(textwrap.dedent(text), "x.yaml")


def error_of(text: str) -> RuleError:
    with pytest.raises(RuleError) as e:
        parse(text)
    assert "\n" not in str(e.value)
    return e.value


def test_shipped_rules_load_and_cover_the_three_gateways():
    rules = load_rules_dir(RULES_DIR)
    assert {r.name for r in rules} == {"openrouter-session-id", "opencode-session", "opper-trace"}
    assert RuleSet(rules).hosts == ["api.opper.ai", "opencode.ai", "openrouter.ai"]


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
        (GOOD.replace("{session.id}", "{session.idd}"), 7, ["unknown template field '{session.idd}'", "{session.label}"]),
        (GOOD.replace("host: example.com", "path: '(unclosed'"), 4, ["not a valid regular expression", "fix the pattern"]),
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
