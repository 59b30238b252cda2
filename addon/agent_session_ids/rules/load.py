"""The rules in use: a folder's files loaded in name order, the ones session_enable switches on,
and what changes when the folder is edited."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .model import Rule, RuleError
from .parse import HOST_RE, parse_rules

ENABLE_OPTION = "session_enable"


def active_rules(rules: list[Rule], enable: str = "") -> list[Rule]:
    """The rules in use: those not `enabled: false`, and those the session_enable option names.

    `enable` is a comma-separated list of rule names, each optionally followed by `@host`: the rule
    is switched on, and matches that host instead of its own (a name given several times collects
    its hosts). A rule that names no host of its own (a self-hosted gateway's) needs one here.
    Raises RuleError."""
    by_name = {rule.name: rule for rule in rules}
    hosts: dict[str, list[str]] = {}
    for entry in (e.strip() for e in enable.split(",")):
        if not entry:
            continue
        name, _, host = (part.strip() for part in entry.partition("@"))
        if name not in by_name:
            off = sorted(r.name for r in rules if not r.enabled)
            raise RuleError(
                ENABLE_OPTION,
                0,
                f"no rule is named {name!r}; the rules that ship off are: "
                f"{', '.join(off) or 'none'} (write name or name@host, "
                "separated by commas)",
            )
        names = hosts.setdefault(name, [])
        if host:
            host = host.lower()
            if not HOST_RE.match(host):
                raise RuleError(
                    ENABLE_OPTION,
                    0,
                    f"{host!r} (for {name}) is not a host name; write it like "
                    f"{name}@llm.example.com (no scheme, port or path)",
                )
            names.append(host)
    out = []
    for rule in rules:
        if rule.name in hosts:
            new_hosts = tuple(hosts[rule.name]) or rule.match.hosts
            if not new_hosts:
                raise RuleError(
                    ENABLE_OPTION,
                    0,
                    f"rule {rule.name} ({rule.file}:{rule.line}) names no host: give the "
                    f"gateway's, as {ENABLE_OPTION}={rule.name}@<host>",
                )
            rule = dataclasses.replace(rule, enabled=True, match=dataclasses.replace(rule.match, hosts=new_hosts))
        if rule.enabled:
            out.append(rule)
    return out


def rules_signature(path: str | os.PathLike[str]) -> tuple:
    """What changes when a rule file is added, removed or edited (names, sizes, mtimes)."""
    try:
        entries = sorted(os.scandir(os.path.expanduser(path)), key=lambda e: e.name)
    except OSError:
        return ("missing",)
    out = []
    for e in entries:
        if e.name.endswith((".yaml", ".yml")):
            try:
                st = e.stat()
            except OSError:
                continue
            out.append((e.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def default_rules_dir() -> str:
    """The shipped rules: the checkout's rules/ folder when running from a checkout (so edits show
    at once), else the copy installed with the package (a wheel, pipx, uv tool)."""
    checkout = Path(__file__).resolve().parents[3] / "rules"
    if (checkout / "rules.schema.json").is_file():
        return str(checkout)
    from importlib import resources

    return str(resources.files("agent_session_ids") / "shipped_rules")


def load_rules_dir(path: str | os.PathLike[str]) -> list[Rule]:
    """Load every *.yaml / *.yml file of a folder, in name order. Raises RuleError."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise RuleError(
            str(folder), 0, "the rules folder does not exist; point session_rules at a folder of *.yaml rule files"
        )
    rules: list[Rule] = []
    seen: dict[str, Rule] = {}
    for file in sorted(folder.iterdir()):
        if file.suffix not in (".yaml", ".yml") or not file.is_file():
            continue
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise RuleError(str(file), 0, f"cannot read the rule file: {e}") from None
        for rule in parse_rules(text, str(file)):
            if rule.name in seen:
                other = seen[rule.name]
                raise RuleError(
                    rule.file,
                    rule.line,
                    f"rule name '{rule.name}' is already used at {other.file}:{other.line}; names must be unique",
                )
            seen[rule.name] = rule
            rules.append(rule)
    return rules
