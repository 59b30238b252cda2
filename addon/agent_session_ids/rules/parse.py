"""The YAML reader: a rule file's text to rules, every error with its file, line and fix."""

from __future__ import annotations

import re

import yaml

from .model import FIELDS, ClientField, Match, Rule, RuleError, SetAction, Template

RULE_KEYS = {"name", "match", "set", "fallback", "client_fields", "enabled"}
CLIENT_FIELD_KEYS = {"header", "body", "json_key"}
MATCH_KEYS = {"host", "path", "method", "filter"}
SET_KEYS = {"header", "body", "value", "max_length", "keep", "if_present", "json_key", "max_entries"}
_FIELD_RE = re.compile(r"\{([^{}]*)\}")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
HOST_RE = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_BODY_KEY_RE = re.compile(r"^[^.\s]+(\.[^.\s]+)*$")


def parse_template(source: str, file: str, line: int) -> Template:
    parts: list[tuple[bool, str]] = []
    pos = 0
    literal = []
    while pos < len(source):
        if source.startswith("{{", pos):
            literal.append("{")
            pos += 2
            continue
        if source.startswith("}}", pos):
            literal.append("}")
            pos += 2
            continue
        m = _FIELD_RE.match(source, pos)
        if m:
            name = m.group(1).strip()
            if name not in FIELDS:
                raise RuleError(
                    file,
                    line,
                    f"unknown template field '{{{m.group(1)}}}' in value {source!r}; "
                    f"use one of: {', '.join('{' + f + '}' for f in FIELDS)} (write '{{{{' for a literal brace)",
                )
            if literal:
                parts.append((False, "".join(literal)))
                literal = []
            parts.append((True, name))
            pos = m.end()
            continue
        if source[pos] in "{}":
            raise RuleError(
                file, line, f"unbalanced brace in value {source!r}; write '{{{{' or '}}}}' for a literal brace"
            )
        literal.append(source[pos])
        pos += 1
    if literal:
        parts.append((False, "".join(literal)))
    return Template(source, tuple(parts))


class _Reader:
    """Walks a composed YAML node tree and turns it into rules, with file:line on every error."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, node: yaml.Node, message: str) -> RuleError:
        return RuleError(self.file, node.start_mark.line + 1, message)

    def mapping(self, node: yaml.Node, what: str, allowed: set[str]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping (key: value lines), not {self.kind(node)}")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.fail(key_node, f"keys in {what} must be plain words")
            key = key_node.value
            if key not in allowed:
                raise self.fail(key_node, f"unknown key '{key}' in {what}; use one of: {', '.join(sorted(allowed))}")
            if key in out:
                raise self.fail(key_node, f"key '{key}' appears twice in {what}; keep one")
            out[key] = (key_node, value_node)
        return out

    @staticmethod
    def kind(node: yaml.Node) -> str:
        if isinstance(node, yaml.MappingNode):
            return "a mapping"
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        return f"the scalar {node.value!r}"

    def string(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str":
            raise self.fail(node, f"{what} must be a string, not {self.kind(node)}; quote it if needed")
        if not node.value:
            raise self.fail(node, f"{what} must not be empty")
        return node.value

    def strings(self, node: yaml.Node, what: str) -> list[tuple[yaml.Node, str]]:
        if isinstance(node, yaml.SequenceNode):
            if not node.value:
                raise self.fail(node, f"{what} must not be an empty list")
            return [(item, self.string(item, what)) for item in node.value]
        return [(node, self.string(node, what))]

    def boolean(self, node: yaml.Node, what: str) -> bool:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:bool":
            raise self.fail(node, f"{what} must be true or false, not {self.kind(node)}")
        return node.value.lower() in ("true", "yes", "on")

    def integer(self, node: yaml.Node, what: str) -> int:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:int":
            raise self.fail(node, f"{what} must be a whole number, not {self.kind(node)}")
        return int(node.value)

    def choice(self, node: yaml.Node, what: str, choices: tuple[str, ...]) -> str:
        value = self.string(node, what)
        if value not in choices:
            raise self.fail(node, f"{what} must be one of: {', '.join(choices)} (got {value!r})")
        return value

    def document(self, root: yaml.Node | None) -> list[Rule]:
        if root is None:
            return []
        top = self.mapping(root, "a rule file", {"rules"})
        if "rules" not in top:
            return []
        _, rules_node = top["rules"]
        if not isinstance(rules_node, yaml.SequenceNode):
            raise self.fail(
                rules_node, f"'rules' must be a list of rules (lines starting with '- '), not {self.kind(rules_node)}"
            )
        return [self.rule(node) for node in rules_node.value]

    def rule(self, node: yaml.Node) -> Rule:
        m = self.mapping(node, "a rule", RULE_KEYS)
        for required in ("name", "match", "set"):
            if required not in m:
                raise self.fail(node, f"a rule needs '{required}'; add it")
        name = self.string(m["name"][1], "a rule's name")
        match = self.match(m["match"][1])
        set_node = m["set"][1]
        if not isinstance(set_node, yaml.SequenceNode) or not set_node.value:
            raise self.fail(
                set_node, "'set' must be a non-empty list of entries such as '- header: x-name' with a 'value'"
            )
        actions = tuple(self.action(item) for item in set_node.value)
        targets = [(a.target, a.key.lower() if a.target == "header" else a.key, a.json_key) for a in actions]
        for i, t in enumerate(targets):
            if t in targets[:i]:
                what = actions[i].describe + (f" member '{t[2]}'" if t[2] is not None else "")
                raise self.fail(set_node.value[i], f"rule '{name}' sets {what} twice; keep one entry")
        fallback = self.boolean(m["fallback"][1], "'fallback'") if "fallback" in m else True
        client_fields = self.client_fields(m["client_fields"][1]) if "client_fields" in m else ()
        enabled = self.boolean(m["enabled"][1], "'enabled'") if "enabled" in m else True
        return Rule(name, self.file, node.start_mark.line + 1, match, actions, fallback, client_fields, enabled)

    def client_fields(self, node: yaml.Node) -> tuple[ClientField, ...]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.fail(
                node,
                "'client_fields' must be a non-empty list of entries such as '- header: "
                "x-session-id' or '- body: session_id'",
            )
        out = []
        for item in node.value:
            m = self.mapping(item, "a 'client_fields' entry", CLIENT_FIELD_KEYS)
            target, key = self.target(m, item, "a 'client_fields' entry", "session_id")
            json_key = self.json_key(m, target)
            out.append(ClientField(target, key.lower() if target == "header" else key, json_key))  # type: ignore[arg-type]
        return tuple(out)

    def json_key(self, m: dict[str, tuple[yaml.Node, yaml.Node]], target: str) -> str | None:
        if "json_key" not in m:
            return None
        key_node, value_node = m["json_key"]
        if target != "header":
            raise self.fail(
                key_node,
                "'json_key' names a member of a JSON object in a header; use it with 'header', "
                "or write the body path with dots",
            )
        return self.string(value_node, "'json_key'")

    def match(self, node: yaml.Node) -> Match:
        m = self.mapping(node, "'match'", MATCH_KEYS)
        if not m:
            raise self.fail(node, "'match' needs at least one of: host, path, method, filter")
        hosts: list[str] = []
        if "host" in m:
            for item, host in self.strings(m["host"][1], "'host'"):
                host = host.lower()
                if not HOST_RE.match(host):
                    raise self.fail(
                        item,
                        f"'host' {host!r} is not a host name; write it like openrouter.ai or "
                        "*.example.com (no scheme, port or path)",
                    )
                hosts.append(host)
        path = None
        if "path" in m:
            source = self.string(m["path"][1], "'path'")
            try:
                path = re.compile(source)
            except re.error as e:
                raise self.fail(
                    m["path"][1], f"'path' is not a valid regular expression: {e}; fix the pattern {source!r}"
                ) from None
        methods = (
            frozenset(method.upper() for _, method in self.strings(m["method"][1], "'method'"))
            if "method" in m
            else frozenset()
        )
        flt = None
        filter_source = None
        if "filter" in m:
            filter_source = self.string(m["filter"][1], "'filter'")
            from mitmproxy import flowfilter

            try:
                flt = flowfilter.parse(filter_source)
            except ValueError as e:
                raise self.fail(
                    m["filter"][1],
                    f"'filter' is not a mitmproxy filter expression ({e}); check it in mitmweb's search box",
                ) from None
        return Match(tuple(hosts), path, methods, flt, filter_source)

    def target(self, m: dict, node: yaml.Node, what: str, body_example: str) -> tuple[str, str]:
        """The one 'header: <name>' or 'body: <dotted.path>' of an entry, checked."""
        targets = [k for k in ("header", "body") if k in m]
        if len(targets) != 1:
            raise self.fail(node, f"{what} needs exactly one of 'header: <name>' or 'body: <dotted.json.path>'")
        target = targets[0]
        key_node = m[target][1]
        key = self.string(key_node, f"'{target}'")
        if target == "header" and not _HEADER_NAME_RE.match(key):
            raise self.fail(key_node, f"{key!r} is not a valid header name; use letters, digits and '-'")
        if target == "body" and not _BODY_KEY_RE.match(key):
            raise self.fail(key_node, f"{key!r} is not a body path; write dotted JSON keys such as {body_example}")
        return target, key

    def action(self, node: yaml.Node) -> SetAction:
        m = self.mapping(node, "a 'set' entry", SET_KEYS)
        target, key = self.target(m, node, "a 'set' entry", "session_id or metadata.session_id")
        if "value" not in m:
            raise self.fail(node, "a 'set' entry needs 'value', for example value: \"{session.label}\"")
        value_node = m["value"][1]
        value = parse_template(self.string(value_node, "'value'"), self.file, value_node.start_mark.line + 1)
        max_length = None
        if "max_length" in m:
            max_length = self.integer(m["max_length"][1], "'max_length'")
            if max_length < 1:
                raise self.fail(m["max_length"][1], "'max_length' must be at least 1")
        keep = self.choice(m["keep"][1], "'keep'", ("first", "last")) if "keep" in m else "first"
        if_present = (
            self.choice(m["if_present"][1], "'if_present'", ("keep", "replace")) if "if_present" in m else "keep"
        )
        json_key = self.json_key(m, target)
        max_entries = None
        if "max_entries" in m:
            if json_key is None:
                raise self.fail(
                    m["max_entries"][0], "'max_entries' caps the members of a JSON header; use it with 'json_key'"
                )
            max_entries = self.integer(m["max_entries"][1], "'max_entries'")
            if max_entries < 1:
                raise self.fail(m["max_entries"][1], "'max_entries' must be at least 1")
        return SetAction(target, key, value, max_length, keep, if_present, json_key, max_entries)  # type: ignore[arg-type]


def parse_rules(text: str, file: str) -> list[Rule]:
    """Parse one rule file's text. Raises RuleError."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        raise RuleError(
            file, line, f"YAML syntax error: {e.problem or e.context}; check indentation and quoting"
        ) from None
    except yaml.YAMLError as e:
        raise RuleError(file, 1, f"YAML error: {e}") from None
    return _Reader(file).document(root)
