"""Plain data that the pure resolver takes and gives: snapshots of processes, files and sessions."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .conversation import Conversation

if TYPE_CHECKING:  # the rules import the resolution at run time, never the other way round
    from ..rules.model import ClientField


@dataclass(frozen=True)
class Process:
    """A snapshot of the local process that owns a client connection."""

    pid: int
    start_ticks: int  # /proc/<pid>/stat starttime: with boot_id, tells a reused pid apart
    started_at: float  # epoch seconds
    boot_id: str
    uid: int
    cwd: str
    comm: str
    exe: str
    cmdline: tuple[str, ...] = ()
    environ: Mapping[str, str] = field(default_factory=dict)
    shared: bool = False  # other processes hold the same socket (a fork)
    inode: int = field(default=0, compare=False)  # the client socket it was found by (0: not known)

    @functools.cached_property
    def key(self) -> str:  # read several times per request: made once per snapshot
        return f"{self.boot_id}:{self.pid}:{self.start_ticks}"


@dataclass(frozen=True)
class SessionFile:
    """A snapshot of one session file of an agent's store."""

    path: str
    id: str  # the agent's own session id
    created: float  # when the agent created the session (its header), epoch seconds
    mtime: float
    first_user: str | None  # fingerprint of the first user turn, None while there is none
    n_assistant: int  # answered assistant turns (errors and aborts do not count)
    name: str | None = None
    cwd: str | None = None
    parent: str | None = None  # the session this one was forked from (a path)
    agent: str | None = None  # whose store it is in, when found without the process


@dataclass(frozen=True)
class Session:
    """The resolved session of one request, and why."""

    id: str
    label: str
    trace_uuid: str
    agent: str
    source: str  # which evidence decided, in words, for the flow comment
    name: str | None = None
    file: str | None = None
    fallback: bool = False
    named_by_request: bool = False  # the id the request itself names decided
    cwd: str | None = None  # the session's folder, where its session file says it
    # where it sits in a tree of sessions (tree.py); None and () where it has no parent
    subagent: str | None = None  # the sub-agent that sent this request (its own id)
    subagent_kind: str | None = None  # what kind of sub-agent, where the agent says (Codex: review, ...)
    subagent_file: str | None = None  # its transcript, where the agent keeps one (Claude Code)
    parent: str | None = None  # the session it was started from
    root: str | None = None  # the top of its tree
    lineage: tuple[str, ...] = ()  # labels from the root down to this session, then its sub-agent
    lineage_ids: tuple[str, ...] = ()  # the same by ids (privacy mode's path)
    # session_rename keep: the label and name its first request sent (kept is False: they follow)
    kept: bool = False
    kept_label: str | None = None
    kept_name: str | None = None

    def fields(self, privacy: bool = False) -> dict[str, str]:
        """The template fields that rule values can use. With privacy, a hash stands for the name.
        With session_rename keep (`kept`), the label is the one the session's first request sent."""
        name = self.name or ""
        label_name, label = (self.kept_name, self.kept_label or self.id) if self.kept else (self.name, self.label)
        if privacy:
            from .ids import label as make_label
            from .ids import name_hash

            name = name_hash(name) if name else ""
            if label_name:
                label = make_label(name_hash(label_name), self.id)
        path = self.lineage_ids if privacy else self.lineage
        return {
            "session.id": self.id,
            "session.label": label,
            "session.trace_uuid": self.trace_uuid,
            "session.name": name,
            "session.source": self.source,
            "session.subagent": self.subagent or "",
            "session.parent": self.parent or "",
            "session.root": self.root or self.id,
            "session.path": "/" + "/".join(path) if path else f"/{label}",
            "agent.name": self.agent,
        }


@dataclass(frozen=True)
class Evidence:
    """What the request itself says. Headers: lower-case names, only those the resolution reads."""

    headers: Mapping[str, str]
    body: Mapping[str, object] | None  # the JSON body's top-level members
    conversation: Conversation | None
    connection_id: str
    # where the target gateway honours a client's id (the rules' fields); read unpacked as (target, key)
    client_fields: Sequence[ClientField] = ()


@dataclass(frozen=True)
class Seen:
    """The process behind the connection, or why it cannot be read, and whose it is when the
    socket is seen to belong to another user (then its conversation and the ids it names are
    looked up only in session_store_homes, never in the proxy user's own stores)."""

    process: Process | None
    unreadable: str | None = None
    other_uid: int | None = None
