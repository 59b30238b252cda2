"""A folder per session, each with a JSON manifest (Cline):

    <root>/<id>/<id>.json

Every session of the store belongs to every process, whatever its cwd: a hub daemon serves them
all, told apart by their first user turn. The reading is session_dirs.py's.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..formats import ManifestFormat
from ..jsonl_store import ReadBudget
from ..model import Process, SessionFile
from .base import Query, Root, Search, SessionFolder, StoreIO, StoreKind, query_ids, query_users


@dataclass(frozen=True)
class PerSession(StoreKind):
    roots: tuple[Root, ...]
    manifest: ManifestFormat

    def folders(self, process: Process) -> list[SessionFolder]:
        return [SessionFolder(root, None) for root in dict.fromkeys(self.root_paths(process.environ))]

    def candidates(
        self, io: StoreIO, process: Process, folders: list[SessionFolder], query: Query, budget: ReadBudget
    ) -> list[SessionFile]:
        out: list[SessionFile] = []
        for folder in folders:
            out.extend(
                io.session_dirs.candidates(
                    folder.path, self.manifest, query_ids(query), query_users(query), query.paths
                )
            )
        return out

    def by_conversation(
        self, io: StoreIO, roots: list[str], first_user: str, deadline: float, budget: ReadBudget
    ) -> Search:
        found = Search()
        assert found.searched is not None
        for root in dict.fromkeys(roots):
            found.files.extend(io.session_dirs.candidates(root, self.manifest, first_users=[first_user]))
            # a new session changes the root; a manifest not read yet, only its folder
            found.searched.append(root)
            found.searched.extend(io.session_dirs.unread(root))
        return found
