"""How an agent's session records read: JSONL records (RecordFormat) and a session folder's JSON
manifest (ManifestFormat). Plain data, set in each agent's profile (agents.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ANY = object()  # a record condition that only asks for the field to be there


@dataclass(frozen=True)
class RecordFormat:
    """How an agent's JSONL records read. Paths are dotted; conditions map paths to values."""

    header: Mapping[str, object]  # the record that holds the session's id and cwd
    id: str
    cwd: str | None
    created: str | None
    user: Mapping[str, object]  # a user-turn record
    user_content: str
    assistant: tuple[bytes, ...]  # a line holding any of these is an assistant turn ...
    assistant_not: tuple[bytes, ...] = (b'"stopReason":"error"', b'"stopReason":"aborted"')  # ... unless
    parent: str | None = None
    name: Mapping[str, object] | None = None  # a record that names the session (the latest wins)
    name_field: str | None = None
    name_marker: bytes = b""  # cheap pre-check for name records


@dataclass(frozen=True)
class ManifestFormat:
    """How a session folder's JSON manifest reads (a store of one folder per session). Paths are dotted."""

    file: str  # the manifest's name in its folder, "{id}" the folder's name
    id: str
    cwd: str
    created: str
    prompt: str  # the first user turn
    prompt_wrappers: tuple[str, ...] = ()  # regexes whose group 1 is the user's own text of a prompt
