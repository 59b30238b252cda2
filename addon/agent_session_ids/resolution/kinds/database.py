"""A SQLite database of sessions (opencode >= 1.2, and its fork Kilo), read-only:

    <root>/<database>     table session (id, title, time_created, time_updated, directory)

It holds no conversation to match: a request that names no session is on the newest session of
its cwd. Older opencode kept storage/session/<project>/<session>.json files instead.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass

from ..files import read_regular
from ..jsonl_file import parse_time
from ..jsonl_store import ReadBudget
from ..model import Process, SessionFile
from .base import Query, Root, SessionFolder, StoreIO, StoreKind, listdir


@dataclass(frozen=True)
class Database(StoreKind):
    roots: tuple[Root, ...]
    database: str = "opencode.db"  # the database's file in the root
    database_env: str | None = "OPENCODE_DB"  # an env variable that may name another

    newest_of_cwd_is_session = True

    def folders(self, process: Process) -> list[SessionFolder]:
        return [SessionFolder(root, process.cwd) for root in self.root_paths(process.environ)]

    def candidates(
        self, io: StoreIO, process: Process, folders: list[SessionFolder], query: Query, budget: ReadBudget
    ) -> list[SessionFile]:
        # the session the request names, else the newest of this cwd
        out = []
        for folder in folders:
            row = newest_session(folder.path, process, budget.db_wait_s, self.database, self.database_env, query.hint)
            if row is not None:
                out.append(row)
        return out


def newest_session(
    data_dir: str,
    process: Process,
    wait_s: float = 0.05,
    database: str = "opencode.db",
    database_env: str | None = "OPENCODE_DB",
    session_id: str | None = None,
) -> SessionFile | None:
    """The session of this id, else the newest session of this cwd, in the database."""
    env = process.environ
    db = (env.get(database_env) if database_env else None) or database
    db = db if os.path.isabs(db) else os.path.join(data_dir, db)
    if not os.path.isfile(db):
        if wait_s <= 0 or session_id:
            return None  # the legacy JSON files are many small files: never on the event loop
        return _newest_json_session(data_dir, process)
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=wait_s)
        try:
            if session_id:
                row = conn.execute(
                    "SELECT id, title, time_created, time_updated, directory FROM session WHERE id = ?", (session_id,)
                ).fetchone()
            else:
                # opencode records $PWD, which can differ from the real cwd (a symlinked path)
                dirs = tuple(dict.fromkeys(d for d in (process.cwd, env.get("PWD")) if d))
                row = conn.execute(
                    f"SELECT id, title, time_created, time_updated, directory FROM session WHERE directory IN "
                    f"({', '.join('?' * len(dirs))}) ORDER BY time_updated DESC LIMIT 1",
                    dirs,
                ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    if not row or not isinstance(row[0], str):
        return None
    sid, title, created, updated, directory = row
    # opencode titles every session itself: not a name the user chose, so not used for the label
    return SessionFile(
        path=f"{db}#{sid}",
        id=sid,
        created=_ms(created),
        mtime=_ms(updated),
        first_user=None,
        n_assistant=0,
        cwd=directory if isinstance(directory, str) and directory else process.cwd,
    )


def _newest_json_session(data_dir: str, process: Process) -> SessionFile | None:
    """opencode < 1.2: storage/session/<project>/<session>.json files."""
    best = None
    root = os.path.join(data_dir, "storage", "session")
    for project in listdir(root):
        folder = os.path.join(root, project)
        for name in listdir(folder):
            if not name.endswith(".json"):
                continue
            try:
                data = json.loads(read_regular(os.path.join(folder, name), 1 << 20) or b"null")
            except (OSError, ValueError):
                continue
            if not isinstance(data, dict) or data.get("directory") != process.cwd:
                continue
            t = data.get("time")
            t = t if isinstance(t, dict) else {}
            updated = _ms(t.get("updated"))
            if best is None or updated > best.mtime:
                best = SessionFile(
                    path=os.path.join(folder, name),
                    id=str(data.get("id")),
                    created=_ms(t.get("created")),
                    mtime=updated,
                    first_user=None,
                    n_assistant=0,
                    cwd=process.cwd,
                )
    return best


def _ms(value: object) -> float:
    if isinstance(value, (int, float)):
        return value / 1000.0 if value > 1e11 else float(value)
    return parse_time(value) or 0.0
