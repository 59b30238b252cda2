"""The memo: a connection's last answer, served again while nothing it was decided from changed.

The common case is the same connection continuing the same conversation, with nothing new in
the store it was decided from but the session file's own growth (an answer appended): the
decision would be the same again, so it is not made again. What it was decided from is a key
(everything of the request and the process the decision reads) and a stamp (the session file's
size, time and inode, and the times of the folders where a new file would appear), taken with
the `stat` this memo is given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..jsontext import dotted
from . import agents
from .model import Evidence, Process, Session

MAX_MEMOS = 4096  # connections whose last answer is remembered (dropped when they close)
# top-level body members that can name a session: a memo must see them unchanged
_BODY_HINT_KEYS = tuple(sorted({k for p in agents.PROFILES for k in p.hint_body_fields}
                               | {f.name.split(".")[0] for f in agents.CLIENT_SESSION_FIELDS if f.where == "body"}))


def _typed(value: object) -> tuple:
    return type(value), value


def memo_key(ev: Evidence, proc: Process | None) -> tuple | None:
    """Everything of the request and the process that the decision reads, but the store."""
    conv = ev.conversation
    if conv is None or conv.first_user is None:
        return None
    body = ev.body or {}
    # compared with ==, never hashed: the headers dict as it is; a value with its type (True != 1)
    return (proc.key if proc else None, proc.cwd if proc else None, proc.exe if proc else None,
            proc.shared if proc else None, ev.headers, conv.first_user, conv.fresh, ev.client_fields,
            tuple(_typed(body.get(k)) for k in _BODY_HINT_KEYS),
            tuple(_typed(dotted(body, key)) for target, key in ev.client_fields if target == "body"))


@dataclass(frozen=True)
class Entry:
    """A connection's last answer, and what it was decided from."""

    key: tuple
    stamp: tuple
    session: Session
    # decided twice in a row from the same request and store: the resolver is at a fixed point
    # (the first decision of a process may still move, e.g. to a fork, at its next request)
    confirmed: bool = False
    basis: tuple[str, ...] | None = None  # decided by the conversation alone: the folders searched


class Memo:
    def __init__(self, stat: Callable[[str], os.stat_result] = os.stat) -> None:
        self._stat = stat
        self._entries: dict[str, Entry] = {}  # connection id -> its last answer
        self.file_stat: os.stat_result | None = None  # the session file's, as the last stamp saw it

    def get(self, connection_id: str) -> Entry | None:
        return self._entries.get(connection_id)

    def remember(self, connection_id: str, key: tuple, stamp: tuple, session: Session,
                 basis: tuple[str, ...] | None) -> None:
        last = self._entries.pop(connection_id, None)
        if len(self._entries) >= MAX_MEMOS:
            del self._entries[next(iter(self._entries))]
        confirmed = last is not None and last.key == key and last.session == session
        self._entries[connection_id] = Entry(key, stamp, session, confirmed, basis)

    def grew(self, connection_id: str, entry: Entry, stamp: tuple) -> None:
        """Only the session file grew, and its name is the same: the entry holds, at the new stamp."""
        self._entries[connection_id] = Entry(entry.key, stamp, entry.session, True, entry.basis)

    def forget(self, connection_id: str) -> None:
        self._entries.pop(connection_id, None)

    def stamp(self, file: str, folders: Iterable[str], generation: int | None = None) -> tuple | None:
        """The session file's (size, mtime, inode) first, then each folder's mtime (None: gone),
        then the bindings' generation when the decision read them; None when the file is gone."""
        try:
            st = self.file_stat = self._stat(file)
            stamp: list = [(st.st_size, st.st_mtime_ns, st.st_ino)]
        except OSError:
            return None
        for path in folders:
            try:
                stamp.append(self._stat(path).st_mtime_ns)
            except OSError:
                stamp.append(None)
        if generation is not None:
            stamp.append(generation)
        return tuple(stamp)
