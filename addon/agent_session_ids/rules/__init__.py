"""Rules as data: load and validate the YAML rule files.

A rule file holds a list of rules. Each rule says which flows it matches and what it sets:

    rules:
      - name: openrouter-session
        match: {host: openrouter.ai, path: ^/api/v1/chat/completions$, method: POST}
        set:
          - body: session_id
            value: "{session.label}"
            max_length: 128

Everything is validated when the file is loaded. Errors carry the file and line, and say how to fix
them, so that a bad rule stops start-up with one clear line instead of a traceback.

A rule with `enabled: false` is loaded and checked but not used until it is switched on, by the
`session_enable` option (see `active_rules`), which can also give it the hosts it matches: that is
how rules for self-hosted gateways ship.
"""

from .load import ENABLE_OPTION, active_rules, default_rules_dir, load_rules_dir, rules_signature
from .model import FIELDS, ClientField, Match, Rule, RuleError, SetAction, Template, json_object
from .parse import parse_rules, parse_template

__all__ = [
    "ENABLE_OPTION",
    "FIELDS",
    "ClientField",
    "Match",
    "Rule",
    "RuleError",
    "SetAction",
    "Template",
    "active_rules",
    "default_rules_dir",
    "json_object",
    "load_rules_dir",
    "parse_rules",
    "parse_template",
    "rules_signature",
]
