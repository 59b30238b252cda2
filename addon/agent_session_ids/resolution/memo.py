"""The memo: a connection's last answer, served again while nothing it was decided from changed.

The common case is the same connection continuing the same conversation, with nothing new in
the store it was decided from but the session file's own growth (an answer appended): the
decision would be the same again, so it is not made again. What it was decided from is a key
(everything of the request and the process the decision reads) and a stamp (the session file's
size, time and inode, and the times of the folders where a new file would appear), taken with
the `stat` this memo is given. When only the file grew, what was appended is read for a new
name (through the stores), and the entry holds at the new stamp.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..jsontext import dotted
from . import agents
from .jsonl_store import ReadBudget
from .model import Evidence, Process, Session
from .resolver import Resolver
from .stores import Stores

MAX_MEMOS = 4096  # connections whose last answer is remembered (dropped when they close)
# top-level body members that can name a session: a memo must see them unchanged
_BODY_HINT_KEYS = tuple(
    sorted(
        {k for p in agents.PROFILES for k in p.hint_body_fields}
        | {f.name.split(".")[0] for f in agents.CLIENT_SESSION_FIELDS if f.where == "body"}
    )
)


def _typed(value: object) -> tuple:
    return type(value), value


def memo_key(ev: Evidence, proc: Process | None) -> tuple | None:
    """Everything of the request and the process that the decision reads, but the store."""
    conv = ev.conversation
    if conv is None or conv.first_user is None:
        return None
    body = ev.body or {}
    # compared with ==, never hashed: the headers dict as it is; a value with its type (True != 1)
    return (
        proc.key if proc else None,
        proc.cwd if proc else None,
        proc.exe if proc else None,
        proc.shared if proc else None,
        ev.headers,
        conv.first_user,
        conv.fresh,
        ev.client_fields,
        tuple(_typed(body.get(k)) for k in _BODY_HINT_KEYS),
        tuple(_typed(dotted(body, key)) for target, key in ev.client_fields if target == "body"),
    )


@dataclass(slots=True)  # not frozen: made at every request, and a frozen one is slower to make
class Stamp:
    """What of the store a decision came from, as one look saw it (never changed once made)."""

    file: tuple[int, int, int]  # the session file's size, mtime and inode
    rest: tuple  # each folder's mtime (None: gone), then the bindings' generation when the decision read them
    st: os.stat_result = field(compare=False)  # the session file's stat: its growth is read through it


@dataclass(frozen=True)
class Entry:
    """A connection's last answer, and what it was decided from."""

    key: tuple
    stamp: Stamp
    session: Session
    # decided twice in a row from the same request and store: the resolver is at a fixed point
    # (the first decision of a process may still move, e.g. to a fork, at its next request)
    confirmed: bool = False
    basis: tuple[str, ...] | None = None  # decided by the conversation alone: the folders searched


class Memo:
    def __init__(self, stores: Stores, stat: Callable[[str], os.stat_result] = os.stat) -> None:
        self._stores = stores
        self._stat = stat
        self._entries: dict[str, Entry] = {}  # connection id -> its last answer

    def get(self, connection_id: str) -> Entry | None:
        return self._entries.get(connection_id)

    def serve(
        self, ev: Evidence, proc: Process | None, key: tuple, resolver: Resolver, budget: ReadBudget
    ) -> Session | None:
        """The connection's last answer, if it holds for this request; else None."""
        memo = self._entries.get(ev.connection_id)
        # the common case: the same connection continues the same conversation, and nothing in
        # the store it was decided from changed: the decision would be the same again
        if memo is None or memo.key != key or not memo.confirmed:
            return None
        stamp = self.stamp_of(memo.session, proc, resolver, memo.basis)
        if stamp == memo.stamp:
            return memo.session
        if stamp is not None and stamp.rest == memo.stamp.rest and self._same_name(memo.session, stamp.st, budget):
            # only the session file grew (an answer appended): its name is still the same
            self._entries[ev.connection_id] = Entry(memo.key, stamp, memo.session, True, memo.basis)
            return memo.session
        return None

    def keep(
        self,
        connection_id: str,
        key: tuple,
        session: Session,
        proc: Process | None,
        resolver: Resolver,
        basis: tuple[str, ...] | None,
        settled: bool,
    ) -> None:
        """Remember a decision that rests on what a stamp shows (settled); else forget the last."""
        stamp = self.stamp_of(session, proc, resolver, basis) if settled else None
        if stamp is None:
            self._entries.pop(connection_id, None)
            return
        last = self._entries.pop(connection_id, None)
        if len(self._entries) >= MAX_MEMOS:
            del self._entries[next(iter(self._entries))]
        confirmed = last is not None and last.key == key and last.session == session
        self._entries[connection_id] = Entry(key, stamp, session, confirmed, basis)

    def forget(self, connection_id: str) -> None:
        self._entries.pop(connection_id, None)

    def stamp_of(
        self, session: Session, proc: Process | None, resolver: Resolver, basis: tuple[str, ...] | None = None
    ) -> Stamp | None:
        """What of the store the decision came from: the session file's size and time (first),
        and the times of the folders where a new session file would appear. None: not worth a
        memo (no file yet, a fallback, names kept outside the file, a date tree)."""
        if session.file is None or session.fallback:
            return None
        if proc is not None:
            folders = self._stores.memo_folders(proc.key)
            if folders is None:
                return None
            paths = folders
        elif basis is not None:
            # decided by the conversation across the stores: every folder it searched, and the
            # bindings (another connection's new session with the same first turn changes them)
            paths = list(basis) + [os.path.dirname(session.file)]
        else:
            paths = [os.path.dirname(session.file)]
        profile = agents.by_name(session.agent)
        if profile is not None and profile.store is not None and not profile.store.names_in_files:
            return None
        return self.stamp(session.file, paths, resolver.generation if basis is not None else None)

    def stamp(self, file: str, folders: Iterable[str], generation: int | None = None) -> Stamp | None:
        """The session file's (size, mtime, inode) first, then each folder's mtime (None: gone),
        then the bindings' generation when the decision read them; None when the file is gone."""
        try:
            st = self._stat(file)
        except OSError:
            return None
        rest: list = []
        for path in folders:
            try:
                rest.append(self._stat(path).st_mtime_ns)
            except OSError:
                rest.append(None)
        if generation is not None:
            rest.append(generation)
        return Stamp((st.st_size, st.st_mtime_ns, st.st_ino), tuple(rest), st)

    def _same_name(self, session: Session, st: os.stat_result, budget: ReadBudget) -> bool:
        """Read what was appended to the session's file (through the fd kept for it, at the stat
        just taken by its path): is its name unchanged?"""
        profile = agents.by_name(session.agent)
        if profile is None or session.file is None:
            return False
        known, name = self._stores.name_now(profile, session.file, st, budget)
        return known and name == session.name
