"""A folder of JSONL session files per project, the projects named by a registry (Gemini CLI):

    <root>/<projects_dir>/<project>/<subdir>/<session>.jsonl

The project is the one a JSON registry in the first root names for the cwd ("<file>:<key>", the
key holding {cwd: project}), else the cwd's encoding. Its files' names hold only a prefix of the
id: not listed by the id index.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..files import read_regular
from ..formats import RecordFormat
from ..model import Process
from .base import Encoder, JsonlKind, Root, SessionFolder


@dataclass(frozen=True)
class PerProject(JsonlKind):
    roots: tuple[Root, ...]
    encode: Encoder  # the project's name when the registry does not name it
    format: RecordFormat
    projects_dir: str = ""
    project_registry: str | None = None
    subdir: str = ""

    folders_show_new_sessions = True

    def folders(self, process: Process) -> list[SessionFolder]:
        """The registered project's folder first, then the one named by the cwd's encoding."""
        project = self._registered(process) if self.project_registry else None
        out = []
        for root in self.root_paths(process.environ):
            for name in filter(None, (project, self.encode(process.cwd, process.environ))):
                parts = filter(None, (self.projects_dir, name, self.subdir))
                out.append(SessionFolder(os.path.join(root, *parts), None))
        return out

    def _registered(self, process: Process) -> str | None:
        """The project folder the registry in the first store root names for the cwd (Gemini CLI's
        ~/.gemini/projects.json {"projects": {path: slug}})."""
        file, _, key = (self.project_registry or "").partition(":")
        root = self.root_paths(process.environ)[0]
        try:
            data = json.loads(read_regular(os.path.join(root, file), 4 << 20) or b"null")
        except (OSError, ValueError):
            return None
        slug = data.get(key, {}).get(process.cwd) if isinstance(data, dict) else None
        return slug if isinstance(slug, str) and "/" not in slug else None
