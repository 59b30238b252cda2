"""I/O adapter: from an agent process to snapshots of the session files the resolver needs.

Each agent's store is read as its kind says (kinds/: the profile holds the spec, chosen once);
here are what all kinds share: the folders found per process, what the kinds read through and
keep (a StoreIO), and the search by conversation across every store the proxy can read.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Mapping

from .agents import AgentProfile
from .jsonl_store import ON_WORKER, ReadBudget
from .kinds import Query, SessionFolder, StoreIO, StoreKind
from .model import Process, SessionFile
from .mounts import MountTable

CONVERSATION_BUDGET_S = 0.15  # a search across every cwd folder stops here; the rest is indexed later


class Stores:
    def __init__(self, mounts: MountTable | None = None) -> None:
        self.io = StoreIO()
        self.mounts = mounts if mounts is not None else MountTable()
        self._folders: dict[str, tuple[StoreKind, list[SessionFolder]]] = {}  # process key -> its folders

    def process_keys(self) -> list[str]:
        return list(self._folders)

    def warm_and_local(self, process_key: str) -> bool:
        """Were this process's folders found before, all on local filesystems?"""
        known = self._folders.get(process_key)
        return known is not None and all(self.mounts.is_local(f.path) for f in known[1])

    def memo_folders(self, process_key: str) -> list[str] | None:
        """The process's folders, where its new sessions appear; None: not known, or new sessions
        do not show in their mtimes (a date tree, a database, a folder per session)."""
        known = self._folders.get(process_key)
        if known is None or not known[0].folders_show_new_sessions:
            return None
        return [f.path for f in known[1]]

    def forget(self, process_keys: Iterable[str]) -> None:
        for key in process_keys:
            self._folders.pop(key, None)

    def folders(self, profile: AgentProfile, process: Process) -> list[SessionFolder]:
        known = self._folders.get(process.key)
        if known is None:
            if profile.store is None:
                return []
            known = self._folders[process.key] = (profile.store, profile.store.folders(process))
        return known[1]

    def candidates(
        self,
        profile: AgentProfile,
        process: Process,
        hint: str | None,
        first_user: str | None,
        paths: list[str],
        fresh: bool = False,
        found_by_id: bool = False,
        budget: ReadBudget = ON_WORKER,
    ) -> list[SessionFile]:
        """The files with the hinted id, the request's first user turn, or one of `paths`.
        found_by_id: the hinted file was found by its name already, so a date tree is not searched."""
        if profile.store is None:
            return []
        query = Query(hint, first_user, paths, fresh, found_by_id)
        return profile.store.candidates(self.io, process, self.folders(profile, process), query, budget)

    def by_id(
        self, profile: AgentProfile, folder: str, session_id: str, roots: list[str], budget: ReadBudget = ON_WORKER
    ) -> list[SessionFile]:
        """Snapshots of the file of this id in one folder the id index found (no process needed)."""
        if profile.store is None:
            return []
        found = profile.store.by_id(self.io, folder, session_id, roots, budget)
        return [dataclasses.replace(f, agent=profile.name) for f in found]

    def by_conversation(
        self,
        roots: Mapping[str, list[str]],
        profiles: Iterable[AgentProfile],
        first_user: str,
        budget: ReadBudget = ON_WORKER,
        budget_s: float = CONVERSATION_BUDGET_S,
    ) -> tuple[list[SessionFile], list[str] | None]:
        """Files whose first user turn is this one, in every session folder of the stores the proxy
        can read (`roots`: agent name -> store roots), newest folders first, within a time budget;
        the folders not read in time are indexed between requests. And what the search read, for a
        memo: every root and folder (a new file or folder changes its mtime); None when that cannot
        tell (out of time, or a date tree, whose new days it misses)."""
        deadline = time.monotonic() + budget_s
        out: list[SessionFile] = []
        searched: list[str] | None = []
        for profile in profiles:
            if profile.store is None:
                continue
            found = profile.store.by_conversation(self.io, roots.get(profile.name, []), first_user, deadline, budget)
            out.extend(dataclasses.replace(f, agent=profile.name) for f in found.files)
            if not found.done:
                return out, None
            searched = None if searched is None or found.searched is None else searched + found.searched
        return out, searched

    def name_now(
        self, profile: AgentProfile, path: str, st: os.stat_result, budget: ReadBudget = ON_WORKER
    ) -> tuple[bool, str | None]:
        """A known session file's latest name, after reading what was appended: (known, name)."""
        return profile.store.name_now(self.io, path, st, budget) if profile.store is not None else (False, None)
