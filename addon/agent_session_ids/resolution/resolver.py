"""The bindings, and the decisions made from them: pure, over plain snapshots (no I/O here).

The order of evidence is written once, in finder.py; the resolver decides the steps that need
its memory: which session each live process is on (followed across /new, /resume and /fork),
and the IDs minted for new sessions whose file is not written yet, bound to their file for good
when it appears (persisted by the caller through export_state/load_state).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from . import ids, keys
from .bindings import MAX_BOUND, MAX_PENDING, NO_PROCESS_WINDOW_S, ORPHAN_TTL_S, SLACK_S, Bound, OnProcess, Pending
from .conversation import Conversation
from .model import Process, Session, SessionFile


class Resolver:
    def __init__(self) -> None:
        self.bound: dict[str, Bound] = {}  # keys.agent_session / keys.named -> Bound
        self.pending: dict[str, Pending] = {}  # process key, keys.orphan / keys.conversation -> Pending
        self.on: dict[str, OnProcess] = {}  # process key -> OnProcess
        self._by_first_user: dict[str | None, set[str]] = {}  # first-turn fingerprint (or None) -> pending keys
        self.generation = 0  # counts the changes to bound and pending (a memo's check)
        self.dirty = False  # bound/pending changed since the last export

    @property
    def dirty(self) -> bool:
        return self._dirty

    @dirty.setter
    def dirty(self, value: bool) -> None:
        if value:
            self.generation += 1
        self._dirty = value

    # -- what the caller should snapshot -------------------------------------------------------

    def files_of(self, process_key: str) -> list[str]:
        on = self.on.get(process_key)
        return [on.file] if on and on.file else []

    # -- the decision ----------------------------------------------------------------------------

    def for_process(
        self,
        agent: str,
        process: Process,
        conversation: Conversation | None,
        files: Sequence[SessionFile],
        now: float,
        hint: str | None = None,
        hint_source: str = "",
    ) -> Session:
        """The session of one request from `process`, an `agent` with a file store.

        `files` must hold the store's files whose id is `hint`, whose first user turn is the
        conversation's, and the file the process is on (files_of).
        """
        if hint:
            return self.by_request_id(agent, process, conversation, files, now, hint, hint_source)
        if conversation is None or conversation.first_user is None:
            on = self._on(process.key)
            if on is not None:
                return self._current(agent, on, files, "process binding (request has no conversation)")
            return self.fallback(agent, process, None, "agent request without a conversation")
        return self._by_conversation(agent, process, conversation, files, now)

    def fallback(self, agent: str, process: Process | None, connection_id: str | None, reason: str) -> Session:
        if process is not None:
            sid = ids.process_fallback(process.pid, process.start_ticks, process.boot_id)
        else:
            sid = ids.connection_fallback(connection_id or "?")
        return Session(sid, sid, ids.trace_uuid(sid), agent, f"fallback: {reason}", fallback=True)

    def by_request_id(
        self,
        agent: str,
        process: Process | None,
        conversation: Conversation | None,
        files: Sequence[SessionFile],
        now: float,
        hint: str,
        hint_source: str,
    ) -> Session:
        """The request names its session: that id is the session, process seen or not. `files`
        holds the store's files of that id, if any."""
        f = next((f for f in files if f.id == hint), None)
        # the client's own id, never a minted one; the binding only keeps the trace UUID stable
        # from a first request that came before the file (keyed by the id: the agent may be
        # unknown then)
        key = keys.named(hint)
        b = self.bound.get(key) or self.bound.get(keys.agent_session(agent, hint))
        if f is None and b is None:
            b = self._bind(key, hint, ids.trace_uuid(key), now)
        if process is not None:
            first_user = conversation.first_user if conversation else None
            self.on[process.key] = OnProcess(hint, f.path if f else None, first_user, now)
        source = f"request {hint_source}"
        if f is not None:
            trace = b.trace_uuid if b else ids.trace_uuid(f.path)
            return Session(
                hint,
                ids.label(f.name, hint),
                trace,
                f.agent or agent,
                source,
                f.name,
                f.path,
                named_by_request=True,
                cwd=f.cwd,
            )
        assert b is not None  # bound above when the request's id has no file
        return Session(hint, hint, b.trace_uuid, agent, source + " (no session file found yet)", named_by_request=True)

    def by_conversation_alone(
        self,
        agent: str,
        conversation: Conversation,
        files: Sequence[SessionFile],
        now: float,
        why: str,
        known_agent: bool = True,
    ) -> Session:
        """No process and no id in the request: the conversation's first user turn, across the
        stores the proxy can read. A new session mints an ID per first turn, bound to the file
        that shows up later with that turn. Two new sessions with the same first turn at the same
        moment cannot be told apart this way. A minted ID of a client that is no known agent
        counts as a fallback (rules may refuse those)."""
        fp = conversation.first_user
        key = keys.conversation(fp)
        fitting = [f for f in files if f.first_user is not None and f.first_user == fp]
        p = self.pending.get(key)
        if p is not None and conversation.fresh and now - p.since > NO_PROCESS_WINDOW_S:
            self._drop_pending(key)  # the same first turn much later: another session
            p = None
        if p is not None:
            mine = [
                f for f in fitting if f.created >= p.since - NO_PROCESS_WINDOW_S and self._bound_id(f) in (None, p.id)
            ]
            if mine:
                f = min(mine, key=lambda f: (f.created, f.path))
                self._bind(keys.agent_session(f.agent or agent, f.id), p.id, p.trace_uuid, now)
                self._drop_pending(key)
                return self._file_session(
                    f.agent or agent,
                    f,
                    f"session file with this first turn, bound to the ID of its first request ({why})",
                )
            return self._pending_session(
                p, f"minted for this first user turn; no session file yet ({why})", fallback=not known_agent
            )
        if not conversation.fresh:
            continued = self._pick_continued(fitting, conversation, None)
            if continued is not None:
                return self._file_session(
                    continued.agent or agent,
                    continued,
                    f"session file whose conversation the request continues ({why})",
                )
        else:
            # a file already holding just this first turn, unanswered (written before the request)
            new = [
                f
                for f in fitting
                if f.n_assistant == 0 and f.created >= now - NO_PROCESS_WINDOW_S and self._bound_id(f) is None
            ]
            if new:
                f = max(new, key=lambda f: (f.created, f.path))
                return self._file_session(
                    f.agent or agent, f, f"session file just created with this first turn ({why})"
                )
        sid = ids.mint_ephemeral(now)
        p = Pending(sid, ids.trace_uuid(sid), fp, now, agent, now, "", ended=True)
        self._add_pending(key, p)
        return self._pending_session(
            p, f"minted for this first user turn; no session file yet ({why})", fallback=not known_agent
        )

    def _bound_id(self, f: SessionFile) -> str | None:
        b = self.bound.get(keys.agent_session(f.agent, f.id)) if f.agent else None
        return b.id if b else None

    def _by_conversation(self, agent, process, conv: Conversation, files, now) -> Session:
        fitting = [f for f in files if f.first_user is not None and f.first_user == conv.first_user]
        on = self._on(process.key)
        if on is not None:
            if conv.first_user == on.first_user:
                if on.pending is not None:
                    f = self._pick_new(agent, fitting, process, on.pending)
                    if f is not None:
                        self._attach(agent, process.key, on, f, now)
                        return self._file_session(agent, f, "session file, bound to the ID of its first request")
                    return self._pending_session(on.pending, "minted at the first request; no session file yet")
                forks = [
                    f
                    for f in fitting
                    if f.parent and on.file and _same_path(f.parent, on.file) and f.created >= on.since - SLACK_S
                ]
                if forks:
                    f = max(forks, key=lambda f: f.created)
                    self.on[process.key] = OnProcess(f.id, f.path, conv.first_user, now)
                    return self._file_session(agent, f, "session file forked by this process")
                return self._current(agent, on, files, "process binding")
            if not conv.fresh:
                f = self._pick_continued([f for f in fitting if f.path != on.file], conv, process)
                if f is not None:
                    self.on[process.key] = OnProcess(f.id, f.path, conv.first_user, now)
                    return self._file_session(agent, f, "session file whose conversation the request continues")
                # e.g. after a compaction the first user turn is a summary: stay.
                return self._current(agent, on, files, "process binding")
            # A fresh conversation with another first turn: this process started a new session.
        return self._start(agent, process, conv, fitting, now)

    def _start(self, agent, process, conv: Conversation, fitting, now) -> Session:
        if conv.fresh:
            f = self._pick_new(agent, fitting, process, None)
            source = "session file created by this process"
        else:
            f = self._pick_continued(fitting, conv, process)
            source = "session file whose conversation the request continues"
        if f is not None:
            self.on[process.key] = OnProcess(f.id, f.path, conv.first_user, now)
            return self._file_session(agent, f, source)
        sid = ids.mint_ephemeral(now)
        pending = Pending(sid, ids.trace_uuid(sid), conv.first_user, now, agent, process.started_at, process.cwd)
        previous = self.pending.get(process.key)
        if previous is not None:
            # the process moved on (/new) before its file showed up: keep it as an orphan
            self._drop_pending(process.key)
            previous.ended = True
            self._add_pending(keys.orphan(process.key, previous.id), previous)
        self._add_pending(process.key, pending)
        self.on[process.key] = OnProcess(None, None, conv.first_user, now, pending)
        return self._pending_session(pending, "minted at the first request; no session file yet")

    # -- choosing files ------------------------------------------------------------------------------

    def _owned_by_others(self, process_key: str) -> set[str]:
        return {on.file for key, on in self.on.items() if key != process_key and on.file}

    def _pick_new(self, agent, fitting, process: Process, pending: Pending | None) -> SessionFile | None:
        """The file a new session of this process wrote: created after the process started, with
        the same first user turn, and not another session's."""
        others = self._owned_by_others(process.key)
        mine = pending.id if pending else None
        candidates = []
        for f in fitting:
            if f.created < process.started_at - SLACK_S or f.path in others:
                continue
            b = self.bound.get(keys.agent_session(agent, f.id))
            if b is not None and b.id != mine:
                continue
            candidates.append(f)
        # The earliest created after the process started: a sub-agent started later writes later.
        return min(candidates, key=lambda f: (f.created, f.path), default=None)

    def _pick_continued(self, fitting, conv: Conversation, process: Process | None) -> SessionFile | None:
        """The file a continued conversation belongs to, as `pi -c` picks it: the newest one."""
        if not fitting:
            return None
        others = self._owned_by_others(process.key if process else "")
        return max(
            fitting,
            key=lambda f: (f.n_assistant <= conv.n_assistant, f.path not in others, f.mtime, f.path),
        )

    # -- building sessions ------------------------------------------------------------------------------

    def _file_session(self, agent, f: SessionFile, source: str) -> Session:
        b = self.bound.get(keys.agent_session(agent, f.id))
        if b is None and f.first_user in self._by_first_user:
            b = self._adopt(agent, f)
            if b is not None:
                source += ", bound to the ID its first request got"
        sid = b.id if b else f.id
        if b is None:
            b = self.bound.get(keys.named(f.id))  # named by the request before its file was written
        trace = b.trace_uuid if b else ids.trace_uuid(f.path)
        return Session(sid, ids.label(f.name, sid), trace, agent, source, f.name, f.path, cwd=f.cwd)

    def _pending_session(self, p: Pending, source: str, fallback: bool = False) -> Session:
        return Session(p.id, p.id, p.trace_uuid, p.agent, source, fallback=fallback, cwd=p.cwd or None)

    def _current(self, agent, on: OnProcess, files, source: str) -> Session:
        if on.pending is not None:
            return self._pending_session(on.pending, source)
        f = next((f for f in files if f.path == on.file), None)
        if f is not None:
            return self._file_session(agent, f, source)
        sid = on.agent_session or "?"
        key = keys.agent_session(agent, sid)
        b = self.bound.get(key)
        return Session(
            b.id if b else sid,
            b.id if b else sid,
            b.trace_uuid if b else ids.trace_uuid(on.file or key),
            agent,
            source,
            file=on.file,
        )

    def _on(self, process_key: str) -> OnProcess | None:
        on = self.on.get(process_key)
        if on is None and process_key in self.pending:
            # The proxy restarted while this process's session had no file yet.
            p = self.pending[process_key]
            on = self.on[process_key] = OnProcess(None, None, p.first_user, p.since, p)
        return on

    def _attach(self, agent, process_key: str, on: OnProcess, f: SessionFile, now: float) -> None:
        p = on.pending
        assert p is not None
        self._bind(keys.agent_session(agent, f.id), p.id, p.trace_uuid, now)
        self._drop_pending(process_key)
        self.on[process_key] = OnProcess(f.id, f.path, on.first_user, on.since)

    def _adopt(self, agent, f: SessionFile) -> Bound | None:
        """A file nobody bound yet may be the file of an ended process's minted session: same
        agent, cwd and first user turn, created between that process's start and its first request."""
        best = None
        for key in self._by_first_user.get(f.first_user, ()):
            p = self.pending[key]
            if not p.ended or p.agent != agent or (f.cwd is not None and f.cwd != p.cwd):
                continue
            in_window = p.started_at - SLACK_S <= f.created <= p.since + SLACK_S
            if in_window and (best is None or p.since < self.pending[best].since):
                best = key
        if best is None:
            return None
        p = self.pending[best]
        self._drop_pending(best)
        return self._bind(keys.agent_session(agent, f.id), p.id, p.trace_uuid, p.since)

    def _add_pending(self, key: str, p: Pending) -> None:
        self.pending[key] = p
        self._by_first_user.setdefault(p.first_user, set()).add(key)
        self.dirty = True

    def _drop_pending(self, key: str) -> None:
        p = self.pending.pop(key, None)
        if p is not None:
            keys = self._by_first_user.get(p.first_user)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_first_user[p.first_user]
            self.dirty = True

    def _bind(self, key: str, sid: str, trace: str, now: float) -> Bound:
        self.bound.pop(key, None)  # re-inserted last: the dict's order is the age order
        b = self.bound[key] = Bound(sid, trace, now)
        self.dirty = True
        while len(self.bound) > MAX_BOUND:
            del self.bound[next(iter(self.bound))]  # the oldest, in O(1)
        return b

    # -- lifecycle and persistence -----------------------------------------------------------------

    def forget(self, process_key: str) -> None:
        """The process turned into another program: what it was on is no longer its session."""
        self.on.pop(process_key, None)
        p = self.pending.get(process_key)
        if p is not None:
            self._drop_pending(process_key)
            p.ended = True
            self._add_pending(keys.orphan(process_key, p.id), p)

    def prune(self, alive: Iterable[str], now: float) -> None:
        """Forget processes that are gone. Their minted sessions stay a while as orphans."""
        alive = set(alive)
        for key in [k for k in self.on if k not in alive]:
            del self.on[key]
        for key, p in list(self.pending.items()):
            if key in alive:
                continue
            if not p.ended:
                p.ended = True
                self.dirty = True
            if now - p.since > ORPHAN_TTL_S:
                self._drop_pending(key)
        if len(self.pending) > MAX_PENDING:
            for key in sorted(self.pending, key=lambda k: self.pending[k].since)[: len(self.pending) - MAX_PENDING]:
                self._drop_pending(key)

    def export_state(self) -> dict:
        self.dirty = False
        return {
            "version": 1,
            "bound": {k: [b.id, b.trace_uuid, b.seen] for k, b in self.bound.items()},
            "pending": {
                k: [p.id, p.trace_uuid, p.first_user, p.since, p.agent, p.started_at, p.cwd, p.ended]
                for k, p in self.pending.items()
            },
        }

    def load_state(self, data: dict) -> None:
        """Load exported state; entries of the wrong shape are dropped one by one."""
        if not isinstance(data, dict) or data.get("version") != 1:
            return
        bound, pending = data.get("bound"), data.get("pending")
        for k, v in sorted(bound.items(), key=_seen_of) if isinstance(bound, dict) else ():
            try:
                sid, trace, seen = v
                self.bound[str(k)] = Bound(str(sid), str(trace), float(seen))
            except (TypeError, ValueError):
                continue
        for k, v in pending.items() if isinstance(pending, dict) else ():
            try:
                sid, trace, first_user, since, agent, started_at, cwd, ended = v
                if not isinstance(first_user, str):
                    continue
                p = Pending(
                    str(sid), str(trace), first_user, float(since), str(agent), float(started_at), str(cwd), bool(ended)
                )
            except (TypeError, ValueError):
                continue
            self._add_pending(str(k), p)
        self.generation += 1
        self._dirty = False


def _seen_of(item) -> float:
    try:
        return float(item[1][2])
    except (TypeError, ValueError, IndexError, KeyError):
        return 0.0


def _same_path(a: str, b: str) -> bool:
    return a == b or a.rstrip("/") == b.rstrip("/")
