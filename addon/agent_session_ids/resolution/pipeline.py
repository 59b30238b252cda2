"""Which session a request belongs to: the order of evidence, as plain code over plain data.

1. The request names its session (an agent's own header or body field, or a field the target
   gateway honours). That id is the session, whether or not the process can be seen.
2. The store by that id: the agent stores of the proxy's user (and extra homes) are searched by
   file name, so the same session gets the same label and trace UUID with or without its process.
3. The process, when it can be read (Linux, same user): it confirms the agent and adds the cwd
   and the environment; the resolver follows it across /new, /resume and /fork.
4. The conversation, when the process cannot be read: the request's first user turn, searched
   across the stores; a new session mints an ID that binds to its file when it shows up.
5. The fallback: per process (a program that is no agent), or per connection, only when the
   request names no session and no process can be read.

No mitmproxy here; the file system is reached through the store adapters it is given.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from . import agents, mounts, proc as process_io
from .agents import AgentProfile, safe_id
from .conversation import Conversation
from .id_index import IdIndex, store_roots
from .jsonl_store import dotted
from .model import Process, Session, SessionFile
from .resolver import Resolver
from .stores import Stores

PRUNE_EVERY_S = 60.0
MAX_MEMOS = 4096  # connections whose last answer is remembered (dropped when they close)
# top-level body members that can name a session: a memo must see them unchanged
_BODY_HINT_KEYS = tuple(sorted({k for p in agents.PROFILES for k in p.hint_body_fields}))


def _typed(value: object) -> tuple:
    return type(value), value


@dataclass(frozen=True)
class _Memo:
    """A connection's last answer, and what it was decided from."""

    key: tuple
    stamp: tuple
    session: Session
    # decided twice in a row from the same request and store: the resolver is at a fixed point
    # (the first decision of a process may still move, e.g. to a fork, at its next request)
    confirmed: bool = False
    basis: tuple[str, ...] | None = None  # decided by the conversation alone: the folders searched


@dataclass(frozen=True)
class Evidence:
    """What the request itself says. Headers: lower-case names, only those the resolution reads."""

    headers: Mapping[str, str]
    body: Mapping[str, object] | None  # the JSON body's top-level members
    conversation: Conversation | None
    connection_id: str
    client_fields: tuple[tuple[str, str], ...] = ()  # where the target gateway honours a client's id


@dataclass(frozen=True)
class Seen:
    """The process behind the connection, or why it cannot be read."""

    process: Process | None
    unreadable: str | None = None


def requested_id(profile: AgentProfile | None, ev: Evidence) -> tuple[str | None, str]:
    """The session id the request names, and where: the agent's own fields first, then any known
    agent's, then the fields the target gateway honours."""
    if profile is not None:
        hint, where = profile.hint(ev.headers, ev.body)
        if hint:
            return hint, where
    for other in agents.PROFILES:
        if other is not profile:
            hint, where = other.hint(ev.headers, ev.body)
            if hint:
                return hint, where
    for target, key in ev.client_fields:
        if target == "header":
            value = safe_id(ev.headers.get(key))
        else:
            value = safe_id(dotted(ev.body, key))
        if value:
            return value, f"{target} {key}"
    return None, ""


class Pipeline:
    """Holds the resolver (bindings) and the store adapters; `resolve` is called with one request's
    evidence at a time, on one thread at a time (the caller's lock)."""

    def __init__(self, environ: Mapping[str, str] | None = None, extra_homes: Iterable[str] = (),
                 recheck=process_io.recheck) -> None:
        self._recheck = recheck  # is the connection's process still the one looked up? (I/O)
        self.memo = True  # off: every request is decided afresh (the tests compare both)
        self._memos: dict[str, _Memo] = {}  # connection id -> its last answer
        # what the last decision by conversation alone rested on (the folders searched), when it
        # will be the same while they are: one fitting file, continued, nothing pending for it
        self._conversation_basis: tuple[str, ...] | None = None
        self._file_stat: os.stat_result | None = None  # the session file's, as _stamp last saw it
        self.resolver = Resolver()
        self.stores = Stores()
        self._last_prune = 0.0
        self.set_roots(environ if environ is not None else os.environ, extra_homes)

    def set_roots(self, environ: Mapping[str, str], extra_homes: Iterable[str] = ()) -> None:
        """The stores searched without a process: the proxy user's own, plus extra homes."""
        self.roots = store_roots(agents.PROFILES, environ, extra_homes)
        self._process_roots: dict[str, list[str]] = {}  # stores seen from agents' own environments
        self.ids = IdIndex(agents.PROFILES, lambda p: self.roots.get(p.name, []) + self._process_roots.get(p.name, []))

    # -- the decision ------------------------------------------------------------------------

    def resolve(self, ev: Evidence, seen: Seen, now: float) -> tuple[Session, Process | None]:
        proc = seen.process
        if proc is not None:
            current = self._recheck(proc)
            if current is not proc:
                if current is None or dataclasses.replace(current, shared=proc.shared) != proc:
                    # the program changed on this connection (exec, chdir): forget what it was on;
                    # a fork that only shares the socket for a while keeps the parent's session
                    self.resolver.forget(proc.key)
                    self.stores.forget([proc.key])
                proc = current
        key = self._memo_key(ev, proc) if self.memo else None
        if key is not None:
            served = self._from_memo(ev, proc, key)
            if served is not None:
                return served, proc
        self._conversation_basis = None
        session = self._decide(ev, proc, seen.unreadable if proc is None else None, now)
        if key is not None:
            basis = self._conversation_basis if proc is None and not session.named_by_request else None
            stamp = self._stamp(session, proc, basis) if self._settled(ev, proc, session) else None
            if stamp is not None:
                last = self._memos.pop(ev.connection_id, None)
                if len(self._memos) >= MAX_MEMOS:
                    del self._memos[next(iter(self._memos))]
                confirmed = last is not None and last.key == key and last.session == session
                self._memos[ev.connection_id] = _Memo(key, stamp, session, confirmed, basis)
            else:
                self._memos.pop(ev.connection_id, None)
        return session, proc

    def unseen_from_memo(self, ev: Evidence, seen: Seen) -> Session | None:
        """For a request whose process cannot be read: its session from the memo, or None. A few
        stats: cheap enough for the event loop, where the rest of the resolution is not."""
        if seen.process is not None or not self.memo:
            return None
        memo = self._memos.get(ev.connection_id)
        if memo is None or not memo.session.file or not mounts.is_local(memo.session.file) \
                or not all(mounts.is_local(path) for path in memo.basis or ()):
            return None  # a network mount must never hang the event loop
        key = self._memo_key(ev, None)
        return self._from_memo(ev, None, key) if key is not None else None

    def _from_memo(self, ev: Evidence, proc: Process | None, key: tuple) -> Session | None:
        memo = self._memos.get(ev.connection_id)
        # the common case: the same connection continues the same conversation, and nothing in
        # the store it was decided from changed: the decision would be the same again
        if memo is None or memo.key != key or not memo.confirmed:
            return None
        stamp = self._stamp(memo.session, proc, memo.basis)
        if stamp == memo.stamp:
            return memo.session
        if stamp is not None and stamp[1:] == memo.stamp[1:] and self._same_name(memo.session):
            # only the session file grew (an answer appended): its name is still the same
            self._memos[ev.connection_id] = _Memo(key, stamp, memo.session, True, memo.basis)
            return memo.session
        return None

    def _settled(self, ev: Evidence, proc: Process | None, session: Session) -> bool:
        """Does the decision rest on the request, the session file and folders whose mtimes show
        any change? So it does when the request names the session, when the process is on the
        session of this very conversation, and when the conversation alone found one file that
        it continues (its basis: every folder searched); not when other files' turn counts take
        part."""
        if proc is None:
            return session.named_by_request or self._conversation_basis is not None
        on = self.resolver.on.get(proc.key)
        return on is not None and on.pending is None and ev.conversation is not None \
            and on.first_user == ev.conversation.first_user

    def forget_connection(self, connection_id: str) -> None:
        self._memos.pop(connection_id, None)

    @staticmethod
    def _memo_key(ev: Evidence, proc: Process | None) -> tuple | None:
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

    def _same_name(self, session: Session) -> bool:
        """Read what was appended to the session's file: is its name unchanged?"""
        profile = agents.by_name(session.agent)
        if profile is None or profile.store is None or profile.store.format is None or session.file is None:
            return False
        # the stat _stamp just took of the file by its path: read through the fd kept for it
        known, name = self.stores.jsonl.name_now(session.file, profile.store.format, self._file_stat)
        return known and name == session.name

    def _stamp(self, session: Session, proc: Process | None, memo_basis: tuple[str, ...] | None = None) -> tuple | None:
        """What of the store the decision came from: the session file's size and time (first),
        and the times of the folders where a new session file would appear. None: not worth a
        memo (no file yet, a fallback, names kept outside the file, a date tree)."""
        if session.file is None or session.fallback:
            return None
        if proc is not None:
            folders = self.stores._folders.get(proc.key)
            if folders is None or any(f.kind != "per_cwd" for f in folders):
                return None
            paths = [f.path for f in folders]
        elif memo_basis is not None:
            # decided by the conversation across the stores: every folder it searched, and the
            # bindings (another connection's new session with the same first turn changes them)
            paths = list(memo_basis) + [os.path.dirname(session.file)]
        else:
            paths = [os.path.dirname(session.file)]
        profile = agents.by_name(session.agent)
        if profile is not None and profile.store is not None and profile.store.name_index:
            return None
        try:
            st = self._file_stat = os.stat(session.file)
            stamp: list = [(st.st_size, st.st_mtime_ns, st.st_ino)]
        except OSError:
            return None
        for path in paths:
            try:
                stamp.append(os.stat(path).st_mtime_ns)
            except OSError:
                stamp.append(None)
        if memo_basis is not None:
            stamp.append(self.resolver.generation)
        return tuple(stamp)

    def prune_due(self, now: float) -> bool:
        """Is it time for prune()? (it opens /proc for every known process: the caller runs it
        off the event loop)"""
        if now - self._last_prune > PRUNE_EVERY_S:
            self._last_prune = now
            return True
        return False

    def _decide(self, ev: Evidence, proc: Process | None, unreadable: str | None, now: float) -> Session:
        agent = agents.recognise(proc) if proc is not None and not proc.shared else None
        profile = agent or agents.recognise_request(ev.headers)
        hint, where = requested_id(profile, ev)
        conv = ev.conversation
        if agent is not None:  # 3: the process is seen and is an agent
            assert proc is not None
            first_user = conv.first_user if conv else None
            by_id: list[SessionFile] = []
            if hint:
                # by file name first: a date tree (Codex) is then never read in full for a named session
                self._add_process_roots(agent, proc)
                by_id = self.files_by_id(agent.name, hint)
            files = self.stores.candidates(agent, proc, hint, first_user, self.resolver.files_of(proc.key),
                                           fresh=bool(conv and conv.fresh), found_by_id=bool(by_id))
            files = files + [f for f in by_id if f.path not in {g.path for g in files}]
            if not hint and agent.store is not None and agent.store.kind == "sqlite" and files:
                # a database store without a session header: the newest session of this cwd
                hint, where = files[0].id, "the agent's database (newest session of this cwd)"
            return self.resolver.resolve(agent.name, proc, conv, files, now, hint, where)
        if proc is not None:
            why = ("the connection's socket is shared by several processes" if proc.shared
                   else f"'{proc.comm}' is not an agent with a known session store")
        else:
            why = f"process not readable: {unreadable or 'unknown reason'}"
        name = profile.name if profile else (proc.comm if proc is not None and proc.comm else "unknown")
        if hint:  # 1 + 2: the request names its session
            files = self.files_by_id(profile.name if profile else None, hint)
            return self.resolver.by_request_id(name, None, conv, files, now, hint, f"{where}; {why}")
        if proc is not None:  # a readable program that is no agent: stable for its life
            return self.resolver.fallback(name, proc, None, why)
        if conv is not None and conv.first_user is not None:  # 4: the conversation, across the stores
            profiles = [profile] if profile is not None and profile.store is not None else agents.PROFILES
            files = self.stores.by_conversation(self.roots, profiles, conv.first_user, conv.fresh)
            session = self.resolver.by_conversation_alone(name, conv, files, now, why, known_agent=profile is not None)
            fitting = [f for f in files if f.first_user == conv.first_user]
            if self.stores.searched is not None and not conv.fresh and len(fitting) == 1 \
                    and session.file == fitting[0].path and f"conv:{conv.first_user}" not in self.resolver.pending:
                self._conversation_basis = tuple(self.stores.searched)
            return session
        return self.resolver.fallback(name, None, ev.connection_id, f"the request names no session; {why}")

    def _add_process_roots(self, agent: AgentProfile, proc: Process) -> None:
        if agent.store is None:
            return
        known = self._process_roots.setdefault(agent.name, [])
        for root in agents.root_paths(agent.store, proc.environ):
            if root not in known and root not in self.roots.get(agent.name, ()):
                known.append(root)
                del known[:-16]  # a few distinct agent homes at most

    def files_by_id(self, agent_name: str | None, session_id: str) -> list[SessionFile]:
        out: list[SessionFile] = []
        for hit in self.ids.lookup(agent_name, session_id):
            profile = agents.by_name(hit.agent)
            if profile is not None:
                roots = self.roots.get(hit.agent, []) + self._process_roots.get(hit.agent, [])
                out.extend(self.stores.by_id(profile, hit.folder, session_id, roots))
        return out

    # -- upkeep ------------------------------------------------------------------------------

    def prune(self, now: float) -> None:
        """Forget processes that are gone (their minted sessions stay a while as orphans)."""
        keys = set(self.resolver.on) | set(self.resolver.pending) | set(self.stores._folders)
        alive = {k for k in keys if not k.startswith("conv:") and process_io.alive(k)}
        self.resolver.prune(alive, now)
        self.stores.forget([k for k in self.stores._folders if k not in alive])
