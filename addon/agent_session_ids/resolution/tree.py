"""Sessions as trees: where a resolved session sits, from what the request and the process say.
Pure, but for one adapter it is given: the parent of a process (procfs on Linux).

- A sub-agent inside its parent's session (Claude Code, Codex) names itself in a header of its
  own: the session stays the parent's, the request gets the sub-agent's id (and its parent
  sub-agent's, when nested).
- A sub-agent with a session of its own (opencode) names its parent session in a header.
- A child agent process has its own session; its parent is the one its environment names (pi's
  PI_SESSION_ID), else the session of its nearest ancestor process that holds one (Linux).

The headers are data in the agents' profiles (agents.py). Each session's parent, label and first
label are kept, bounded, so that a path from the root can be written and a rename can keep the
label its first request sent (session_rename keep).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping

from . import agents
from .agents import safe_id
from .model import Process, Session

MAX_NODES = 10_000  # sessions remembered (the least recently used forgotten first)
MAX_PROCESSES = 10_000
MAX_DEPTH = 16  # tree levels, and process ancestors looked at
RENAME_CHOICES = ("follow", "keep")


@dataclasses.dataclass
class Node:
    label: str
    first_label: str  # what its first request sent
    first_name: str | None
    parent: str | None = None


def _parent_from_procfs(pid: int) -> tuple[int, int] | None:
    """(its parent's pid, its own start ticks), or None: the Linux adapter."""
    from .proc import procfs

    try:
        fields = procfs.read_stat(pid)
        return int(fields[procfs.PPID]), int(fields[procfs.START_TICKS])
    except (OSError, ValueError, IndexError):
        return None


class SessionTree:
    def __init__(self, stat_of: Callable[[int], tuple[int, int] | None] = _parent_from_procfs) -> None:
        self._stat_of = stat_of  # pid -> (ppid, start ticks)
        self.rename = "follow"
        self._nodes: dict[str, Node] = {}
        self._holders: dict[int, tuple[int, str]] = {}  # pid -> (start ticks, its session)
        self._parent_of_process: dict[str, str | None] = {}  # process key -> parent session (found once)

    def place(self, session: Session, headers: Mapping[str, str], proc: Process | None) -> Session:
        """The session with its place in the tree (the same object when it has none to add)."""
        profile = agents.by_name(session.agent)
        subagent = parent = kind = by_header = None
        nested: str | None = None  # the sub-agent that started this sub-agent
        if profile is not None:
            subagent = _first(headers, profile.subagent_headers)
            if subagent == session.id:
                subagent = None  # the session's own turn (Codex sends its thread id on every request)
            if subagent is not None:
                nested = _first(headers, profile.subagent_parent_headers)
                kind = _first(headers, profile.subagent_kind_headers, any_text=True)
            parent = _first(headers, profile.parent_headers)
            by_header = parent
            if parent is None and proc is not None:
                parent = _first(proc.environ, profile.parent_env)
        if parent == session.id:
            parent = None
        if proc is not None:
            if parent is None:
                parent = self._by_process(proc, session.id)
            self._hold(proc, session.id)
        node = self._node(session, parent)
        if by_header is not None and node.parent == by_header and subagent is None:
            subagent = session.id  # a sub-agent with a session of its own (opencode's task tool)
        kept = self.rename == "keep" and node.first_label != session.label
        if node.parent is None and subagent is None and not kept:
            return session
        lineage, lineage_ids = self._lineage(session.id)
        inside = subagent is not None and subagent != session.id  # a sub-agent in this session
        if subagent is not None and inside:
            below: tuple[str, ...] = (
                (nested, subagent) if nested is not None and nested not in (session.id, subagent) else (subagent,)
            )
            lineage, lineage_ids = lineage + below, lineage_ids + below
        transcript = None
        if inside and profile is not None and profile.subagent_file and session.file:
            folder, name = os.path.split(session.file)
            transcript = os.path.join(folder, profile.subagent_file.format(stem=os.path.splitext(name)[0], id=subagent))
        return dataclasses.replace(
            session,
            subagent=subagent,
            subagent_kind=kind,
            subagent_file=transcript,
            parent=session.id if inside else node.parent,
            root=lineage_ids[0] if node.parent or subagent else None,
            lineage=lineage,
            lineage_ids=lineage_ids,
            kept=kept,
            kept_label=node.first_label if kept else None,
            kept_name=node.first_name if kept else None,
        )

    # -- the parts --------------------------------------------------------------------------

    def _node(self, session: Session, parent: str | None) -> Node:
        node = self._nodes.pop(session.id, None)  # re-inserted: in order of last use
        if node is None:
            if len(self._nodes) >= MAX_NODES:
                del self._nodes[next(iter(self._nodes))]
            node = Node(session.label, session.label, session.name)
        self._nodes[session.id] = node
        node.label = session.label
        if parent is not None and node.parent is None and not self._is_below(parent, session.id):
            node.parent = parent  # a parent, once known, stays
        return node

    def _is_below(self, candidate: str, session_id: str) -> bool:
        """Would `candidate` as the parent make a cycle (it is `session_id` or below it)?"""
        at: str | None = candidate
        for _ in range(MAX_DEPTH):
            if at is None:
                return False
            if at == session_id:
                return True
            node = self._nodes.get(at)
            at = node.parent if node else None
        return True  # deeper than a tree is kept: refused

    def _lineage(self, session_id: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        labels: list[str] = []
        ids: list[str] = []
        at: str | None = session_id
        while at is not None and len(ids) < MAX_DEPTH:
            node = self._nodes.get(at)
            labels.append(node.label if node else at)  # a parent never seen here: its id
            ids.append(at)
            at = node.parent if node else None
        return tuple(reversed(labels)), tuple(reversed(ids))

    def _hold(self, proc: Process, session_id: str) -> None:
        if self._holders.get(proc.pid) != (proc.start_ticks, session_id):
            if len(self._holders) >= MAX_PROCESSES:
                del self._holders[next(iter(self._holders))]
            self._holders[proc.pid] = (proc.start_ticks, session_id)

    def _by_process(self, proc: Process, session_id: str) -> str | None:
        """The session of the nearest ancestor process that holds another one (looked up once)."""
        if proc.key in self._parent_of_process:
            return self._parent_of_process[proc.key]
        found = None
        stat = self._stat_of(proc.pid)
        for _ in range(MAX_DEPTH):
            if stat is None or stat[0] <= 1:
                break
            ancestor = stat[0]
            stat = self._stat_of(ancestor)
            holder = self._holders.get(ancestor)
            if stat is not None and holder is not None and holder[0] == stat[1]:
                if holder[1] != session_id:
                    found = holder[1]
                break  # the nearest holder decides, even when it holds this same session
        if len(self._parent_of_process) >= MAX_PROCESSES:
            del self._parent_of_process[next(iter(self._parent_of_process))]
        self._parent_of_process[proc.key] = found
        return found


def _first(headers: Mapping[str, str], names: tuple[str, ...], any_text: bool = False) -> str | None:
    for name in names:
        value = headers.get(name)
        if value:
            if any_text:
                value = value.strip()
                return value[:64] if value.isprintable() else None
            value = safe_id(value)
            if value:
                return value
    return None
