"""What every store kind is: a frozen spec in an agent's profile, whose class says how its sessions
lie below its roots and how they are read. The spec is chosen once, by the profile; nothing
branches on the kind. What a kind reads through and keeps between requests is a StoreIO, owned
by the caller (stores.Stores), never the spec: the profiles are shared, module-level data.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from ..formats import RecordFormat
from ..jsonl_store import JsonlStore, ReadBudget
from ..model import Process, SessionFile
from ..session_dirs import SessionDirs

Encoder = Callable[[str, Mapping[str, str]], str]  # a cwd, the agent's environment -> a folder name
T = TypeVar("T")


@dataclass(frozen=True)
class Root:
    """A store root: the first set env variable (its value, then `sub`), else `default`."""

    env: tuple[str, ...]
    default: str  # may start with ~ (the agent's HOME)
    sub: str = ""

    def path(self, environ: Mapping[str, str]) -> str:
        base = expand(next((environ[e] for e in self.env if environ.get(e)), None) or self.default, environ)
        return os.path.join(base, self.sub) if self.sub else base


def expand(path: str, environ: Mapping[str, str]) -> str:
    home = environ.get("HOME", "")
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    return path


@dataclass(frozen=True)
class SessionFolder:
    path: str
    cwd_filter: str | None  # a folder of every cwd's files: keep those whose header names this cwd


@dataclass(frozen=True)
class IdLayout:
    """How the id index (id_index.py) lists a store by file name."""

    depth: int  # folder levels between a root and its files
    subdir: str  # below each folder at that depth
    file_names: str  # how a file's name holds the session id (id_index.FILE_IDS)


@dataclass(frozen=True)
class Query:
    """What one request asks of a process's store."""

    hint: str | None  # the session id the request names
    first_user: str | None  # its first user turn's fingerprint
    paths: Sequence[str] = ()  # files the process is known to be on
    fresh: bool = False  # a new conversation's first request
    found_by_id: bool = False  # the hinted file was found by its name already


@dataclass
class Search:
    """What a search by conversation found, and what it read (for a memo: every folder where a
    new file would show; None when that cannot tell). done=False: out of time, stop there."""

    files: list[SessionFile] = field(default_factory=list)
    searched: list[str] | None = field(default_factory=list)
    done: bool = True


class StoreIO:
    """What the store kinds read through, and what each keeps between requests (by its type)."""

    def __init__(self) -> None:
        self.jsonl = JsonlStore()
        self.session_dirs = SessionDirs()
        self._kept: dict[type, object] = {}

    def kept(self, kind: type[T]) -> T:
        """A kind's own memory (made on first use): its listings and indexes."""
        state = self._kept.get(kind)
        if not isinstance(state, kind):
            state = kind()
            self._kept[kind] = state
        return state


class StoreKind:
    """The base of every store kind's spec (a frozen dataclass with `roots` and its own fields)."""

    roots: tuple[Root, ...]
    # a request that names no session is on the newest session of its cwd (a database, which
    # holds no conversation to match)
    newest_of_cwd_is_session: ClassVar[bool] = False
    # a new session is a new file in one of the process's folders, so their mtimes show it (a memo)
    folders_show_new_sessions: ClassVar[bool] = False

    def root_paths(self, environ: Mapping[str, str]) -> list[str]:
        return [root.path(environ) for root in self.roots]

    @property
    def names_in_files(self) -> bool:
        """Are the sessions' names kept in their own files (so a file's growth shows a new one)?"""
        return True

    def folders(self, process: Process) -> list[SessionFolder]:
        """Where this process keeps its sessions (a few small reads at most: kept per process)."""
        raise NotImplementedError

    def candidates(
        self, io: StoreIO, process: Process, folders: list[SessionFolder], query: Query, budget: ReadBudget
    ) -> list[SessionFile]:
        """The files with the hinted id, the request's first user turn, or one of its paths."""
        raise NotImplementedError

    def id_layout(self) -> IdLayout | None:
        """How the store is listed by file name; None: its file names do not hold the ids."""
        return None

    def by_id(
        self, io: StoreIO, folder: str, session_id: str, roots: list[str], budget: ReadBudget
    ) -> list[SessionFile]:
        """The file of this id in one folder the id index found (no process needed)."""
        return []

    def by_conversation(
        self, io: StoreIO, roots: list[str], first_user: str, deadline: float, budget: ReadBudget
    ) -> Search:
        """Files whose first user turn is this one, in every session folder below `roots`; a kind
        that cannot be searched so finds nothing and reads nothing."""
        return Search()

    def name_now(self, io: StoreIO, path: str, st: os.stat_result, budget: ReadBudget) -> tuple[bool, str | None]:
        """A known file's latest name, after reading what was appended: (known, name)."""
        return False, None


class JsonlKind(StoreKind):
    """A store of JSONL files, one per session, read as its `format` says."""

    format: RecordFormat

    def candidates(
        self, io: StoreIO, process: Process, folders: list[SessionFolder], query: Query, budget: ReadBudget
    ) -> list[SessionFile]:
        out: list[SessionFile] = []
        for folder in folders:
            out.extend(
                io.jsonl.candidates(
                    folder.path,
                    self.format,
                    query_ids(query),
                    query_users(query),
                    query.paths,
                    folder.cwd_filter,
                    fresh=query.fresh,
                    budget=budget,
                )
            )
        return out

    def by_id(
        self, io: StoreIO, folder: str, session_id: str, roots: list[str], budget: ReadBudget
    ) -> list[SessionFile]:
        return io.jsonl.candidates(folder, self.format, ids=[session_id], budget=budget)

    def name_now(self, io: StoreIO, path: str, st: os.stat_result, budget: ReadBudget) -> tuple[bool, str | None]:
        return io.jsonl.name_now(path, self.format, st, budget)


def query_ids(query: Query) -> list[str]:
    return [query.hint] if query.hint else []


def query_users(query: Query) -> list[str]:
    return [query.first_user] if query.first_user else []


def listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
