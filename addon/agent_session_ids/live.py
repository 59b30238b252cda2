"""The sessions seen in this run, for the sessionids.sessions command: bounded, the least
recently active forgotten first."""

from __future__ import annotations

import time

from .resolution.model import Process, Session

MAX_LIVE_SESSIONS = 1000


class LiveSessions:
    def __init__(self, limit: int = MAX_LIVE_SESSIONS) -> None:
        self.limit = limit
        self.sessions: dict[str, dict] = {}  # session id -> what the table lists

    def count(self, session: Session, proc: Process | None, unreadable: str | None = None) -> None:
        live = self.sessions.get(session.id)
        if live is None:
            if len(self.sessions) >= self.limit:
                del self.sessions[min(self.sessions, key=lambda k: self.sessions[k]["last"])]
            live = self.sessions[session.id] = {"agent": session.agent, "id": session.id, "requests": 0}
        live.update(
            name=session.name,
            pid=proc.pid if proc else None,
            cwd=proc.cwd if proc else None,
            last=time.time(),
            source=session.source,
            unreadable=None if proc else unreadable,
        )
        live["requests"] += 1

    def table(self) -> list[str]:
        """Agent, requests, pid, ID, name, cwd, and what decided; newest first."""
        if not self.sessions:
            return ["no sessions yet"]
        lines = [f"{'AGENT':<8} {'REQS':>5}  {'PID':>7}  {'ID':<38} {'NAME':<24} CWD"]
        for s in sorted(self.sessions.values(), key=lambda s: -s["last"]):
            lines.append(
                f"{s['agent']:<8} {s['requests']:>5}  {s['pid'] or '-':>7}  {s['id']:<38} "
                f"{(s['name'] or '-')[:24]:<24} {s['cwd'] or '-'}"
            )
            lines.append(f"{'':<8} decided by {s.get('source') or '?'}")
            if s.get("unreadable") and s.get("unreadable") not in (s.get("source") or ""):
                lines.append(f"{'':<8} process not read: {s['unreadable']}")
        return lines
