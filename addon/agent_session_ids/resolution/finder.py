"""Which session a request belongs to: the order of evidence, as plain code over plain data.
This list is the one place the order is written; the resolver keeps the bindings it needs.

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

A process seen to belong to another user is never matched to the proxy user's own stores: its
conversation and the ids it names are looked up only in the session_store_homes, with bindings
of that user's own (a Scope); with none named, it gets an ID minted for its conversation.

No mitmproxy here. The file system and /proc are reached only through what it is given: the
store adapters, the process recheck and liveness test, and the memo's stat.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..jsontext import dotted
from . import agents, mounts
from .agents import AgentProfile, safe_id
from .id_index import IdIndex, store_roots
from .memo import Memo, memo_key
from .model import Evidence, Process, Seen, Session, SessionFile
from .proc import ProcessTable
from .resolver import Resolver
from .stores import Stores

PRUNE_EVERY_S = 60.0
MAX_OTHER_USERS = 256  # other users whose bindings are kept (the oldest dropped first)
OTHER_USER_HOMES = "; looked up only in session_store_homes, never in the proxy user's own stores"
OTHER_USER_NO_HOMES = "; not looked up in the proxy user's own stores (no session_store_homes)"


@dataclass(frozen=True)
class Scope:
    """Where a request without a readable process is looked up, and whose bindings it makes and
    reads: the proxy user's own (its stores, session_store_homes and agents' stores seen in their
    environments), or another user's (session_store_homes only, and bindings of its own)."""

    roots: Mapping[str, list[str]]  # agent name -> store roots searched by conversation
    more: Mapping[str, list[str]]  # agent name -> more roots searched by id (agents' own environments)
    ids: IdIndex  # the file names of roots + more
    resolver: Resolver
    why: str  # added to the reason the process was not read

    def roots_of(self, agent: str) -> list[str]:
        return self.roots.get(agent, []) + self.more.get(agent, [])


def requested_id(profile: AgentProfile | None, ev: Evidence) -> tuple[str | None, str]:
    """The session id the request names, and where: the agent's own fields first, then any known
    agent's, then any client's (agents.CLIENT_SESSION_FIELDS), then the fields the target gateway
    honours."""
    if profile is not None:
        hint, where = profile.hint(ev.headers, ev.body)
        if hint:
            return hint, where
    for other in agents.PROFILES:
        if other is not profile:
            hint, where = other.hint(ev.headers, ev.body)
            if hint:
                return hint, where
    for field in agents.CLIENT_SESSION_FIELDS:
        value = safe_id(ev.headers.get(field.name) if field.where == "header" else dotted(ev.body, field.name))
        if value:
            return value, f"{field.where} {field.name}"
    for target, key in ev.client_fields:
        if target == "header":
            value = safe_id(ev.headers.get(key))
        else:
            value = safe_id(dotted(ev.body, key))
        if value:
            return value, f"{target} {key}"
    return None, ""


class SessionFinder:
    """Finds the session of one request at a time, on one thread at a time (the caller's lock):
    the evidence in the order above, the stores, the memo, and the resolver's bindings."""

    def __init__(self, environ: Mapping[str, str] | None = None, extra_homes: Iterable[str] = (),
                 recheck: Callable[[Process], Process | None] | None = None,
                 alive: Callable[[str], bool] | None = None,
                 stat: Callable[[str], os.stat_result] = os.stat) -> None:
        if recheck is None or alive is None:  # the addon passes its table's; alone, a table of its own
            table = ProcessTable()
            recheck, alive = recheck or table.recheck, alive or table.alive
        self._recheck = recheck  # is the connection's process still the one looked up? (I/O)
        self._alive = alive  # is the process of this key still running? (I/O)
        self.memo = True  # off: every request is decided afresh (the tests compare both)
        self._memo = Memo(stat)
        # what the last decision by conversation alone rested on (the folders searched), when it
        # will be the same while they are: one fitting file, continued, nothing pending for it
        self._conversation_basis: tuple[str, ...] | None = None
        self.resolver = Resolver()
        self.stores = Stores()
        self._last_prune = 0.0
        self._others: dict[int, Scope] = {}  # another user's uid -> its scope
        self.set_roots(environ if environ is not None else os.environ, extra_homes)

    def set_roots(self, environ: Mapping[str, str], extra_homes: Iterable[str] = ()) -> None:
        """The stores searched without a process: the proxy user's own, plus extra homes; for
        another user's process, the extra homes alone."""
        homes = list(extra_homes)
        self.roots = store_roots(agents.PROFILES, environ, homes)
        self._process_roots: dict[str, list[str]] = {}  # stores seen from agents' own environments
        self.ids = IdIndex(agents.PROFILES, lambda p: self.roots.get(p.name, []) + self._process_roots.get(p.name, []))
        other_roots = store_roots(agents.PROFILES, {}, homes)  # no environment: the named homes only
        self._other_stores = (other_roots, IdIndex(agents.PROFILES, lambda p: other_roots.get(p.name, [])),
                              OTHER_USER_HOMES if any(other_roots.values()) else OTHER_USER_NO_HOMES)
        self._rescope()

    def _rescope(self) -> None:
        """The scopes again, after the stores or the bindings were replaced."""
        self._own = Scope(self.roots, self._process_roots, self.ids, self.resolver, "")
        roots, ids, why = self._other_stores
        self._others = {uid: Scope(roots, {}, ids, s.resolver, why) for uid, s in self._others.items()}

    def _scope(self, other_uid: int | None) -> Scope:
        """The proxy user's scope, or that of the other user whose process sent the request."""
        if other_uid is None:
            return self._own
        scope = self._others.get(other_uid)
        if scope is None:
            if len(self._others) >= MAX_OTHER_USERS:
                del self._others[next(iter(self._others))]
            roots, ids, why = self._other_stores
            scope = self._others[other_uid] = Scope(roots, {}, ids, Resolver(), why)
        return scope

    # -- the decision ------------------------------------------------------------------------

    def find(self, ev: Evidence, seen: Seen, now: float) -> tuple[Session, Process | None]:
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
        scope = self._own if proc is not None or seen.other_uid is None else self._scope(seen.other_uid)
        key = memo_key(ev, proc) if self.memo else None
        if key is not None:
            served = self._from_memo(ev, proc, key, scope)
            if served is not None:
                return served, proc
        self._conversation_basis = None
        session = self._decide(ev, proc, seen.unreadable if proc is None else None, scope, now)
        if key is not None:
            basis = self._conversation_basis if proc is None and not session.named_by_request else None
            stamp = self._stamp(session, proc, scope, basis) if self._settled(ev, proc, session) else None
            if stamp is not None:
                self._memo.remember(ev.connection_id, key, stamp, session, basis)
            else:
                self._memo.forget(ev.connection_id)
        return session, proc

    def unseen_from_memo(self, ev: Evidence, seen: Seen) -> Session | None:
        """For a request whose process cannot be read: its session from the memo, or None. A few
        stats: cheap enough for the event loop, where the rest of the resolution is not."""
        if seen.process is not None or not self.memo:
            return None
        memo = self._memo.get(ev.connection_id)
        if memo is None or not memo.session.file or not mounts.is_local(memo.session.file) \
                or not all(mounts.is_local(path) for path in memo.basis or ()):
            return None  # a network mount must never hang the event loop
        key = memo_key(ev, None)
        return self._from_memo(ev, None, key, self._scope(seen.other_uid)) if key is not None else None

    def _from_memo(self, ev: Evidence, proc: Process | None, key: tuple, scope: Scope) -> Session | None:
        memo = self._memo.get(ev.connection_id)
        # the common case: the same connection continues the same conversation, and nothing in
        # the store it was decided from changed: the decision would be the same again
        if memo is None or memo.key != key or not memo.confirmed:
            return None
        stamp = self._stamp(memo.session, proc, scope, memo.basis)
        if stamp == memo.stamp:
            return memo.session
        if stamp is not None and stamp[1:] == memo.stamp[1:] and self._same_name(memo.session):
            # only the session file grew (an answer appended): its name is still the same
            self._memo.grew(ev.connection_id, memo, stamp)
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
        self._memo.forget(connection_id)

    def _same_name(self, session: Session) -> bool:
        """Read what was appended to the session's file: is its name unchanged?"""
        profile = agents.by_name(session.agent)
        if profile is None or profile.store is None or profile.store.format is None or session.file is None:
            return False
        # the stat _stamp just took of the file by its path: read through the fd kept for it
        known, name = self.stores.jsonl.name_now(session.file, profile.store.format, self._memo.file_stat)
        return known and name == session.name

    def _stamp(self, session: Session, proc: Process | None, scope: Scope,
               memo_basis: tuple[str, ...] | None = None) -> tuple | None:
        """What of the store the decision came from: the session file's size and time (first),
        and the times of the folders where a new session file would appear. None: not worth a
        memo (no file yet, a fallback, names kept outside the file, a date tree)."""
        if session.file is None or session.fallback:
            return None
        if proc is not None:
            folders = self.stores.known_folders(proc.key)
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
        return self._memo.stamp(session.file, paths, scope.resolver.generation if memo_basis is not None else None)

    def prune_due(self, now: float) -> bool:
        """Is it time for prune()? (it opens /proc for every known process: the caller runs it
        off the event loop)"""
        if now - self._last_prune > PRUNE_EVERY_S:
            self._last_prune = now
            return True
        return False

    def _decide(self, ev: Evidence, proc: Process | None, unreadable: str | None, scope: Scope,
                now: float) -> Session:
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
                by_id = self.files_by_id(agent.name, hint, scope)
            files = self.stores.candidates(agent, proc, hint, first_user, self.resolver.files_of(proc.key),
                                           fresh=bool(conv and conv.fresh), found_by_id=bool(by_id))
            files = files + [f for f in by_id if f.path not in {g.path for g in files}]
            if not hint and agent.store is not None and agent.store.newest_of_cwd_is_session and files:
                # a database store without a session header: the newest session of this cwd
                hint, where = files[0].id, "the agent's database (newest session of this cwd)"
            return self.resolver.for_process(agent.name, proc, conv, files, now, hint, where)
        if proc is not None:
            why = ("the connection's socket is shared by several processes" if proc.shared
                   else f"'{proc.comm}' is not an agent with a known session store")
        else:
            why = f"process not readable: {unreadable or 'unknown reason'}{scope.why}"
        name = profile.name if profile else (proc.comm if proc is not None and proc.comm else "unknown")
        resolver = scope.resolver
        if hint:  # 1 + 2: the request names its session
            files = self.files_by_id(profile.name if profile else None, hint, scope)
            return resolver.by_request_id(name, None, conv, files, now, hint, f"{where}; {why}")
        if proc is not None:  # a readable program that is no agent: stable for its life
            return resolver.fallback(name, proc, None, why)
        if conv is not None and conv.first_user is not None:  # 4: the conversation, across the stores
            profiles = [profile] if profile is not None and profile.store is not None else agents.PROFILES
            files = self.stores.by_conversation(scope.roots, profiles, conv.first_user, conv.fresh)
            session = resolver.by_conversation_alone(name, conv, files, now, why, known_agent=profile is not None)
            fitting = [f for f in files if f.first_user == conv.first_user]
            if self.stores.searched is not None and not conv.fresh and len(fitting) == 1 \
                    and session.file == fitting[0].path and f"conv:{conv.first_user}" not in resolver.pending:
                self._conversation_basis = tuple(self.stores.searched)
            return session
        return resolver.fallback(name, None, ev.connection_id, f"the request names no session; {why}")

    def _add_process_roots(self, agent: AgentProfile, proc: Process) -> None:
        if agent.store is None:
            return
        known = self._process_roots.setdefault(agent.name, [])
        for root in agents.root_paths(agent.store, proc.environ):
            if root not in known and root not in self.roots.get(agent.name, ()):
                known.append(root)
                del known[:-16]  # a few distinct agent homes at most

    def files_by_id(self, agent_name: str | None, session_id: str, scope: Scope | None = None) -> list[SessionFile]:
        """The files of this id in the scope's stores (by default the proxy user's)."""
        scope = scope or self._own
        out: list[SessionFile] = []
        for hit in scope.ids.lookup(agent_name, session_id):
            profile = agents.by_name(hit.agent)
            if profile is not None:
                out.extend(self.stores.by_id(profile, hit.folder, session_id, scope.roots_of(hit.agent)))
        return out

    # -- upkeep ------------------------------------------------------------------------------

    def prune(self, now: float) -> None:
        """Forget processes that are gone (their minted sessions stay a while as orphans)."""
        keys = set(self.resolver.on) | set(self.resolver.pending) | set(self.stores.process_keys())
        alive = {k for k in keys if not k.startswith("conv:") and self._alive(k)}
        self.resolver.prune(alive, now)
        for other in self._others.values():  # no process of theirs is known: their mints age out
            other.resolver.prune((), now)
        self.stores.forget([k for k in self.stores.process_keys() if k not in alive])

    # -- for the runner: background work, the state, how reads are done ----------------------------

    def reading_inline(self, on: bool) -> None:
        """On the event loop, every read is a small step; what is left is done between requests."""
        self.stores.jsonl.inline = on

    def inline_ok(self, process_key: str) -> bool:
        """Is everything a resolution of this process reads known, on local filesystems, with no
        folder still being indexed?"""
        return not self.stores.jsonl.behind and self.stores.warm_and_local(process_key)

    @property
    def behind(self) -> bool:
        return self.stores.jsonl.behind

    def catch_up(self) -> bool:
        """One step of background reading; True while any is left."""
        return self.stores.jsonl.catch_up()

    def warm(self) -> None:
        """List the stores by file name, so that the first requests find their files by id."""
        self.ids.warm()
        if self._other_stores[2] == OTHER_USER_HOMES:
            self._other_stores[1].warm()

    @property
    def dirty(self) -> bool:
        # read on the event loop while the worker may add a user: a copy made in one step
        return self.resolver.dirty or any(s.resolver.dirty for s in tuple(self._others.values()))

    def export_state(self) -> dict:
        """The proxy user's bindings; other users' under "others", by uid."""
        data = self.resolver.export_state()
        others = {str(uid): s.resolver.export_state() for uid, s in self._others.items()}
        if others:
            data["others"] = others
        return data

    def load_state(self, data: dict) -> None:
        self.resolver.load_state(data)
        others = data.get("others") if isinstance(data, dict) else None
        for uid, state in others.items() if isinstance(others, dict) else ():
            if isinstance(uid, str) and uid.isascii() and uid.isdigit():
                self._scope(int(uid)).resolver.load_state(state)

    def reset_bindings(self) -> None:
        self.resolver = Resolver()
        self._others = {}
        self._rescope()
