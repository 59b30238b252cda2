"""`top`'s sessions: the ledger followed as it grows (follow.py), each session with its figures
since its first turn. A session active in the window had its earlier turns searched once
(lookup.py), when it was first seen; nothing is read twice.
"""

from __future__ import annotations

from . import ledger
from .follow import Follower
from .lookup import records_naming
from .totals import SessionTable, Totals

MAX_DORMANT = 10_000  # sessions


class LiveLedger:
    def __init__(self, path: str, window: float) -> None:
        self.path = path
        self.window = window
        self.follower = Follower(path)
        self.table = SessionTable()
        self.polled = False
        # turns the first poll read before the window (it starts a little early): a session that
        # is not active yet keeps them here, counted if it comes back
        self.dormant: dict[str, list[dict]] = {}

    @property
    def skipped(self) -> int:
        return self.follower.skipped

    def said(self) -> str:
        """What the reading passed over (ledger.Tally.said)."""
        return self.follower.said()

    def exists(self) -> bool:
        return bool(ledger.files(self.path))

    def refresh(self, now: float) -> None:
        first = not self.polled
        records = self.follower.poll(now - self.window if first else None)
        self.polled = True
        if not records:
            return
        known = set(self.table.sessions)
        new = {str(r.get("session") or "?") for r in records} - known
        if first:  # only the sessions active in the window are shown: only theirs are looked up
            new = {str(r.get("session") or "?") for r in records if r["_epoch"] >= now - self.window}
        earlier = records_naming(new, self.follower.history, self.follower) if new and self.follower.history else []
        for session in new:
            earlier += self.dormant.pop(session, [])
        for record in sorted(earlier + records, key=lambda r: r["_epoch"]):
            session = str(record.get("session") or "?")
            if first and session not in new:  # read while finding the window's start, not active in it
                if len(self.dormant) < MAX_DORMANT:
                    self.dormant.setdefault(session, []).append(record)
                continue
            self.table.add(record, record["_epoch"])

    def sessions(self, now: float) -> list[Totals]:
        return self.table.active(now - self.window)

    def close(self) -> None:
        self.follower.close()
