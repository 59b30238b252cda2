"""Rules as data: what a rule matches, what it sets, and from which template fields."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .. import jsontext

# Template fields a value may use, with what they mean (also the README's list).
FIELDS: dict[str, str] = {
    "session.id": "the session's stable ID: the agent's own session id, or the one minted at its first request",
    "session.label": "the name slug plus 8 chars of the ID for a named session, else session.id",
    "session.trace_uuid": "a UUID for the session: uuid5 over the session file path, as Opper's pi extension does",
    "session.name": "the session's name, empty when it has none",
    "session.source": "which evidence decided the session (header, file, binding, pending, fallback)",
    "session.subagent": "the sub-agent that sent the request (its own id), empty for the session's own turns",
    "session.parent": "the session this one was started from (a sub-agent's or child agent's parent), else empty",
    "session.root": "the top session of its tree: session.id for a session with no parent",
    "session.path": "where the request sits in its tree: /<root label>/.../<label>[/<sub-agent>]",
    "agent.name": "the agent that sent the request (pi, ...), or the process name for other programs",
}


class RuleError(ValueError):
    """A rule file is wrong. str() is one line: file:line: what is wrong; how to fix it."""

    def __init__(self, file: str, line: int, message: str) -> None:
        self.file = file
        self.line = line
        self.message = message
        # line 0: the whole file or folder, or an option (session_enable)
        super().__init__(f"{file}:{line}: {message}" if line else f"{file}: {message}")


@dataclass(frozen=True)
class Template:
    """A value with {field} placeholders; '{{' and '}}' are literal braces."""

    source: str
    parts: tuple[tuple[bool, str], ...]  # (is_field, text)

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(text for is_field, text in self.parts if is_field)

    def render(self, values: dict[str, str]) -> str:
        return "".join(values[text] if is_field else text for is_field, text in self.parts)


@dataclass(frozen=True)
class Match:
    hosts: tuple[str, ...]  # lower-case; "*.example.com" matches subdomains only
    path: re.Pattern[str] | None  # searched in the path without its query
    methods: frozenset[str]  # empty: any method
    filter: Callable[..., bool] | None  # a compiled mitmproxy filter, or None
    filter_source: str | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_expression", self._filter_expression())  # once, not per flow

    def to_filter_expression(self) -> str:
        """The same match in mitmproxy's filter language, for mitmweb's search box."""
        return self._expression  # type: ignore[attr-defined]

    def _filter_expression(self) -> str:
        parts = []
        if self.hosts:
            alts = [re.escape(h[2:]) + "$" if h.startswith("*.") else "^" + re.escape(h) + "$" for h in self.hosts]
            parts.append("~d '" + "|".join(alts) + "'")
        if self.methods:
            parts.append("~m '^(" + "|".join(sorted(self.methods)) + ")$'")
        if self.path is not None:
            # ~u searches the whole URL: anchor the path after the scheme and host
            pattern = self.path.pattern
            if pattern.startswith("^"):
                pattern = "^[a-z]+://[^/]+" + pattern[1:]
            parts.append("~u '" + pattern.replace("'", "\\'") + "'")
        if self.filter_source:
            parts.append("(" + self.filter_source + ")")
        return " & ".join(parts) or "~all"


@dataclass(frozen=True)
class SetAction:
    target: Literal["header", "body"]
    key: str  # the header name, or the dotted body path as written
    value: Template
    max_length: int | None
    keep: Literal["first", "last"]  # which end survives max_length
    if_present: Literal["keep", "replace"]
    # a header whose value is a small JSON object: the value is set as this member of it, merged
    # into the object the client sent (never replacing it), and not added to one that already has
    # max_entries members
    json_key: str | None = None
    max_entries: int | None = None

    @property
    def body_path(self) -> tuple[str, ...]:
        return tuple(self.key.split("."))

    @property
    def describe(self) -> str:
        return f"{self.target}.{self.key}" if self.target == "body" else f"header {self.key}"


@dataclass(frozen=True)
class ClientField:
    """A field in which a gateway honours a session id the client sent itself.

    Unpacks as the pair (target, key), target "header" (key: the lower-case name) or "body" (key:
    the dotted path). json_key: the header's value is a JSON object, and the id is this member."""

    target: Literal["header", "body"]
    key: str
    json_key: str | None = None

    def __iter__(self):
        return iter((self.target, self.key))

    @property
    def describe(self) -> str:
        return f"{self.target} {self.key}" + (f" ({self.json_key})" if self.json_key else "")

    def header_value(self, raw: str | None) -> str | None:
        """The id this field holds in a header value as sent (None: it holds none)."""
        if raw is None or self.json_key is None:
            return raw
        member = json_object(raw).get(self.json_key)
        if isinstance(member, bool) or not isinstance(member, (str, int)):
            return None
        return str(member)


def json_object(text: str) -> dict:
    """The JSON object a header value holds; {} when it holds none."""
    try:
        doc = jsontext.loads(text)
    except (ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


@dataclass(frozen=True)
class Rule:
    name: str
    file: str
    line: int
    match: Match
    actions: tuple[SetAction, ...]
    fallback: bool  # may this rule use a fallback ID when no agent session was found?
    # the fields in which the gateway honours a session id the client sent itself: such an id is
    # the session, and a weaker one (a fallback) is never written over it
    client_fields: tuple[ClientField, ...] = ()
    enabled: bool = True  # off: loaded and checked, but used only once session_enable names it
