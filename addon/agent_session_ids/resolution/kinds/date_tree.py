"""A date tree of JSONL session files, the cwd inside each file (Codex):

    <root>/YYYY/MM/DD/rollout-<time>-<id>.jsonl

Names kept outside the files: an append-only JSONL index beside the root (the latest wins).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass

from ..files import read_regular
from ..formats import RecordFormat
from ..jsonl_file import clean_name
from ..jsonl_store import ReadBudget
from ..model import Process, SessionFile
from .base import IdLayout, JsonlKind, Query, Root, Search, SessionFolder, StoreIO, query_ids, query_users

RELIST_S = 10.0  # how often a date tree's older day folders are listed again
RECENT_DAYS = 2  # the newest day folders are checked on every request


@dataclass(frozen=True)
class DateTree(JsonlKind):
    roots: tuple[Root, ...]
    format: RecordFormat
    file_names: str  # how a file's name holds the session id (id_index.FILE_IDS)
    name_index: str | None = None  # a JSONL file of names, its path relative to the root's parent
    name_index_fields: tuple[str, str] = ("id", "thread_name")

    @property
    def names_in_files(self) -> bool:
        return self.name_index is None

    def folders(self, process: Process) -> list[SessionFolder]:
        return [SessionFolder(root, process.cwd) for root in self.root_paths(process.environ)]

    def candidates(
        self, io: StoreIO, process: Process, folders: list[SessionFolder], query: Query, budget: ReadBudget
    ) -> list[SessionFile]:
        if query.found_by_id:  # a named session found by its file name: the tree is not read in full
            return []
        days = io.kept(_Days)
        out: list[SessionFile] = []
        for folder in folders:
            for i, day in enumerate(days.of(folder.path)):
                out.extend(
                    io.jsonl.candidates(
                        day,
                        self.format,
                        query_ids(query),
                        query_users(query),
                        query.paths,
                        folder.cwd_filter,
                        relist=i < RECENT_DAYS,
                        fresh=query.fresh,
                        budget=budget,
                    )
                )
        return self._named(io, out, self.root_paths(process.environ))

    def id_layout(self) -> IdLayout | None:
        return IdLayout(3, "", self.file_names)

    def by_id(
        self, io: StoreIO, folder: str, session_id: str, roots: list[str], budget: ReadBudget
    ) -> list[SessionFile]:
        return self._named(io, super().by_id(io, folder, session_id, roots, budget), roots)

    def by_conversation(
        self, io: StoreIO, roots: list[str], first_user: str, deadline: float, budget: ReadBudget
    ) -> Search:
        # what it read cannot tell a new session: a new day folder is not among them
        found = Search(searched=[])
        days = io.kept(_Days)
        for root in roots:
            folders = days.of(root)[: RECENT_DAYS * 4]
            if os.path.isdir(root):
                found.searched = None
            for folder in folders:
                found.files.extend(
                    io.jsonl.candidates(folder, self.format, first_users=[first_user], fresh=True, budget=budget)
                )
                if time.monotonic() > deadline:
                    return Search(found.files, None, done=False)
        return found

    def _named(self, io: StoreIO, files: list[SessionFile], roots: list[str]) -> list[SessionFile]:
        """The files, with the names the index beside each root gives them."""
        if not files or not self.name_index:
            return files
        names: dict[str, str] = {}
        index = io.kept(_NameIndexes)
        for root in roots:
            names.update(
                index.names(os.path.join(os.path.dirname(root.rstrip("/")), self.name_index), self.name_index_fields)
            )
        return [dataclasses.replace(f, name=names[f.id]) if names.get(f.id) else f for f in files]


class _Days:
    """The day folders of YYYY/MM/DD trees, newest first, listed again every few seconds."""

    def __init__(self) -> None:
        self._listed: dict[str, tuple[float, list[str]]] = {}  # root -> (listed at, day folders)

    def of(self, root: str) -> list[str]:
        now = time.monotonic()
        listed = self._listed.get(root)
        if listed is None or now - listed[0] > RELIST_S:
            days = []
            for level1 in _subdirs(root):
                for level2 in _subdirs(level1):
                    days.extend(_subdirs(level2))
            days.sort(reverse=True)
            listed = self._listed[root] = (now, days)
        return listed[1]


class _NameIndexes:
    """id -> latest name, from append-only JSONL indexes, reading only what was appended."""

    def __init__(self) -> None:
        self._read: dict[str, tuple[int, dict[str, str]]] = {}  # path -> (read up to, names)

    def names(self, path: str, fields: tuple[str, str]) -> dict[str, str]:
        offset, names = self._read.get(path, (0, {}))
        try:
            size = os.stat(path).st_size
        except OSError:
            return names
        if size < offset:
            offset, names = 0, {}
        if size > offset:
            try:
                data = read_regular(path, min(size - offset, 16 << 20), offset) or b""
            except OSError:
                return names
            end = data.rfind(b"\n") + 1
            for line in data[:end].splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and isinstance(record.get(fields[0]), str):
                    name = record.get(fields[1])
                    names[record[fields[0]]] = (clean_name(name) or "") if isinstance(name, str) else ""
            offset += end
            self._read[path] = (offset, names)
        return names


def _subdirs(path: str) -> list[str]:
    try:
        return [e.path for e in os.scandir(path) if e.is_dir(follow_symlinks=False) and e.name.isdigit()]
    except OSError:
        return []
