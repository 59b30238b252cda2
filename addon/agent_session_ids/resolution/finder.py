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

from ..jsontext import dotted
from . import agents, keys
from .agents import AgentProfile, safe_id
from .jsonl_store import ON_WORKER, ReadBudget
from .memo import Memo, memo_key
from .model import Evidence, Process, Seen, Session, SessionFile
from .mounts import MountTable
from .proc import ProcessTable
from .resolver import Resolver
from .scopes import Scope, Scopes
from .stores import Stores

PRUNE_EVERY_S = 60.0


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
        value = safe_id(ev.headers.get(key) if target == "header" else dotted(ev.body, key))
        if value:
            return value, f"{target} {key}"
    return None, ""


class SessionFinder:
    """Finds the session of one request at a time, on one thread at a time (the caller's lock):
    the evidence in the order above, the stores, the memo, and the resolver's bindings. `budget`:
    how much one resolution may read now (jsonl_store.INLINE on the event loop)."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        extra_homes: Iterable[str] = (),
        recheck: Callable[[Process], Process | None] | None = None,
        alive: Callable[[str], bool] | None = None,
        stat: Callable[[str], os.stat_result] = os.stat,
        mounts: MountTable | None = None,
    ) -> None:
        if recheck is None or alive is None:  # the addon passes its table's; alone, a table of its own
            table = ProcessTable()
            recheck, alive = recheck or table.recheck, alive or table.alive
        self._recheck = recheck  # is the connection's process still the one looked up? (I/O)
        self._alive = alive  # is the process of this key still running? (I/O)
        self.mounts = mounts if mounts is not None else MountTable()
        self.stores = Stores(self.mounts)
        self.memo = True  # off: every request is decided afresh (the tests compare both)
        self._memo = Memo(self.stores, stat)
        self.scopes = Scopes(self.stores, environ if environ is not None else os.environ, extra_homes)
        self._last_prune = 0.0

    @property
    def resolver(self) -> Resolver:
        """The proxy user's bindings."""
        return self.scopes.resolver

    def set_roots(self, environ: Mapping[str, str], extra_homes: Iterable[str] = ()) -> None:
        self.scopes.set_roots(environ, extra_homes)

    # -- the decision ------------------------------------------------------------------------

    def find(
        self, ev: Evidence, seen: Seen, now: float, budget: ReadBudget = ON_WORKER
    ) -> tuple[Session, Process | None]:
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
        scope = self.scopes.own if proc is not None or seen.other_uid is None else self.scopes.of(seen.other_uid)
        key = memo_key(ev, proc) if self.memo else None
        if key is not None:
            served = self._memo.serve(ev, proc, key, scope.resolver, budget)
            if served is not None:
                return served, proc
        session, basis = self._decide(ev, proc, seen.unreadable if proc is None else None, scope, now, budget)
        if key is not None:
            basis = basis if proc is None and not session.named_by_request else None
            self._memo.keep(
                ev.connection_id, key, session, proc, scope.resolver, basis, self._settled(ev, proc, session, basis)
            )
        return session, proc

    def unseen_from_memo(self, ev: Evidence, seen: Seen, budget: ReadBudget = ON_WORKER) -> Session | None:
        """For a request whose process cannot be read: its session from the memo, or None. A few
        stats: cheap enough for the event loop, where the rest of the resolution is not."""
        if seen.process is not None or not self.memo:
            return None
        memo = self._memo.get(ev.connection_id)
        if (
            memo is None
            or not memo.session.file
            or not self.mounts.is_local(memo.session.file)
            or not all(self.mounts.is_local(path) for path in memo.basis or ())
        ):
            return None  # a network mount must never hang the event loop
        key = memo_key(ev, None)
        return (
            self._memo.serve(ev, None, key, self.scopes.of(seen.other_uid).resolver, budget)
            if key is not None
            else None
        )

    def _settled(self, ev: Evidence, proc: Process | None, session: Session, basis: tuple[str, ...] | None) -> bool:
        """Does the decision rest on the request, the session file and folders whose mtimes show
        any change? So it does when the request names the session, when the process is on the
        session of this very conversation, and when the conversation alone found one file that
        it continues (its basis: every folder searched); not when other files' turn counts take
        part."""
        if proc is None:
            return session.named_by_request or basis is not None
        on = self.resolver.on.get(proc.key)
        return (
            on is not None
            and on.pending is None
            and ev.conversation is not None
            and on.first_user == ev.conversation.first_user
        )

    def forget_connection(self, connection_id: str) -> None:
        self._memo.forget(connection_id)

    def _decide(
        self, ev: Evidence, proc: Process | None, unreadable: str | None, scope: Scope, now: float, budget: ReadBudget
    ) -> tuple[Session, tuple[str, ...] | None]:
        """The session, and for one decided by the conversation alone what it rested on (the
        folders searched), when it will be the same while they are."""
        agent = agents.recognise(proc) if proc is not None and not proc.shared else None
        profile = agent or agents.recognise_request(ev.headers)
        hint, where = requested_id(profile, ev)
        conv = ev.conversation
        if agent is not None:  # 3: the process is seen and is an agent
            assert proc is not None
            return self._for_agent(agent, proc, ev, hint, where, now, budget), None
        if proc is not None:
            why = (
                "the connection's socket is shared by several processes"
                if proc.shared
                else f"'{proc.comm}' is not an agent with a known session store"
            )
        else:
            why = f"process not readable: {unreadable or 'unknown reason'}{scope.why}"
        name = profile.name if profile else (proc.comm if proc is not None and proc.comm else "unknown")
        resolver = scope.resolver
        if hint:  # 1 + 2: the request names its session
            files = self.scopes.files_by_id(profile.name if profile else None, hint, scope, budget)
            return resolver.by_request_id(name, None, conv, files, now, hint, f"{where}; {why}"), None
        if proc is not None:  # a readable program that is no agent: stable for its life
            return resolver.fallback(name, proc, None, why), None
        if conv is not None and conv.first_user is not None:  # 4: the conversation, across the stores
            profiles = [profile] if profile is not None and profile.store is not None else agents.PROFILES
            files, searched = self.stores.by_conversation(scope.roots, profiles, conv.first_user, budget)
            session = resolver.by_conversation_alone(name, conv, files, now, why, known_agent=profile is not None)
            fitting = [f for f in files if f.first_user == conv.first_user]
            # the same while the folders searched are: one fitting file, continued, nothing pending for it
            settled = (
                searched is not None
                and not conv.fresh
                and len(fitting) == 1
                and session.file == fitting[0].path
                and keys.conversation(conv.first_user) not in resolver.pending
            )
            return session, tuple(searched) if settled and searched is not None else None
        return resolver.fallback(name, None, ev.connection_id, f"the request names no session; {why}"), None

    def _for_agent(
        self,
        agent: AgentProfile,
        proc: Process,
        ev: Evidence,
        hint: str | None,
        where: str,
        now: float,
        budget: ReadBudget,
    ) -> Session:
        """3: the process is seen and is an agent: its store, by the id named, the conversation,
        and the file it is on."""
        conv = ev.conversation
        by_id: list[SessionFile] = []
        if hint:
            # by file name first: a date tree (Codex) is then never read in full for a named session
            self.scopes.add_process_roots(agent, proc)
            by_id = self.scopes.files_by_id(agent.name, hint, budget=budget)
        files = self.stores.candidates(
            agent,
            proc,
            hint,
            conv.first_user if conv else None,
            self.resolver.files_of(proc.key),
            fresh=bool(conv and conv.fresh),
            found_by_id=bool(by_id),
            budget=budget,
        )
        files = files + [f for f in by_id if f.path not in {g.path for g in files}]
        if not hint and agent.store is not None and agent.store.newest_of_cwd_is_session and files:
            # a database store without a session header: the newest session of this cwd
            hint, where = files[0].id, "the agent's database (newest session of this cwd)"
        return self.resolver.for_process(agent.name, proc, conv, files, now, hint, where)

    # -- upkeep ------------------------------------------------------------------------------

    def prune_due(self, now: float) -> bool:
        """Is it time for prune()? (it opens /proc for every known process: the caller runs it
        off the event loop)"""
        if now - self._last_prune > PRUNE_EVERY_S:
            self._last_prune = now
            return True
        return False

    def prune(self, now: float) -> None:
        """Forget processes that are gone (their minted sessions stay a while as orphans)."""
        keys_now = set(self.resolver.on) | set(self.resolver.pending) | set(self.stores.process_keys())
        alive = {k for k in keys_now if not keys.is_conversation(k) and self._alive(k)}
        self.scopes.prune(alive, now)
        self.stores.forget([k for k in self.stores.process_keys() if k not in alive])

    def export_state(self) -> dict:
        return self.scopes.export_state()

    def load_state(self, data: dict) -> None:
        self.scopes.load_state(data)
