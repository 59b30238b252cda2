"""Whose stores a request is looked up in, and whose bindings it makes and reads.

The proxy user's own scope: its stores, the session_store_homes and the agents' stores seen in
their environments, with the bindings of the proxy's state file. Another user's process (seen,
but not readable): the session_store_homes only, with bindings of that user's own, kept in
memory for a bounded number of users.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from . import agents
from .agents import AgentProfile
from .id_index import IdIndex, store_roots
from .jsonl_store import ON_WORKER, ReadBudget
from .model import Process, SessionFile
from .resolver import Resolver
from .stores import Stores

MAX_OTHER_USERS = 256  # other users whose bindings are kept (the oldest dropped first)
OTHER_USER_HOMES = "; looked up only in session_store_homes, never in the proxy user's own stores"
OTHER_USER_NO_HOMES = "; not looked up in the proxy user's own stores (no session_store_homes)"
MAX_PROCESS_ROOTS = 16  # agent homes seen in agents' environments, per agent


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


class Scopes:
    def __init__(self, stores: Stores, environ: Mapping[str, str], extra_homes: Iterable[str] = ()) -> None:
        self._stores = stores
        self.resolver = Resolver()  # the proxy user's bindings
        self._others: dict[int, Scope] = {}  # another user's uid -> its scope
        self.set_roots(environ, extra_homes)

    def set_roots(self, environ: Mapping[str, str], extra_homes: Iterable[str] = ()) -> None:
        """The stores searched without a process: the proxy user's own, plus extra homes; for
        another user's process, the extra homes alone."""
        homes = list(extra_homes)
        roots = store_roots(agents.PROFILES, environ, homes)
        self._process_roots: dict[str, list[str]] = {}  # stores seen from agents' own environments
        self._roots = (
            roots,
            IdIndex(agents.PROFILES, lambda p: roots.get(p.name, []) + self._process_roots.get(p.name, [])),
        )
        other_roots = store_roots(agents.PROFILES, {}, homes)  # no environment: the named homes only
        self._other_stores = (
            other_roots,
            IdIndex(agents.PROFILES, lambda p: other_roots.get(p.name, [])),
            OTHER_USER_HOMES if any(other_roots.values()) else OTHER_USER_NO_HOMES,
        )
        self._rescope()

    def _rescope(self) -> None:
        """The scopes again, after the stores or the bindings were replaced."""
        self.own = Scope(self._roots[0], self._process_roots, self._roots[1], self.resolver, "")
        roots, ids, why = self._other_stores
        self._others = {uid: Scope(roots, {}, ids, s.resolver, why) for uid, s in self._others.items()}

    def of(self, other_uid: int | None) -> Scope:
        """The proxy user's scope, or that of the other user whose process sent the request."""
        if other_uid is None:
            return self.own
        scope = self._others.get(other_uid)
        if scope is None:
            if len(self._others) >= MAX_OTHER_USERS:
                del self._others[next(iter(self._others))]
            roots, ids, why = self._other_stores
            scope = self._others[other_uid] = Scope(roots, {}, ids, Resolver(), why)
        return scope

    def add_process_roots(self, agent: AgentProfile, proc: Process) -> None:
        """The store roots an agent's own environment names, searched by id from now on."""
        if agent.store is None:
            return
        known = self._process_roots.setdefault(agent.name, [])
        for root in agent.store.root_paths(proc.environ):
            if root not in known and root not in self._roots[0].get(agent.name, ()):
                known.append(root)
                del known[:-MAX_PROCESS_ROOTS]

    def files_by_id(
        self, agent_name: str | None, session_id: str, scope: Scope | None = None, budget: ReadBudget = ON_WORKER
    ) -> list[SessionFile]:
        """The files of this id in the scope's stores (by default the proxy user's)."""
        scope = scope or self.own
        out: list[SessionFile] = []
        for hit in scope.ids.lookup(agent_name, session_id):
            profile = agents.by_name(hit.agent)
            if profile is not None:
                out.extend(self._stores.by_id(profile, hit.folder, session_id, scope.roots_of(hit.agent), budget))
        return out

    def prune(self, alive: Iterable[str], now: float) -> None:
        self.resolver.prune(alive, now)
        for other in self._others.values():  # no process of theirs is known: their mints age out
            other.resolver.prune((), now)

    def warm(self) -> None:
        """List the stores by file name, so that the first requests find their files by id."""
        self._roots[1].warm()
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
                self.of(int(uid)).resolver.load_state(state)

    def reset_bindings(self) -> None:
        self.resolver = Resolver()
        self._others = {}
        self._rescope()
