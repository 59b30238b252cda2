"""A folder of JSONL session files per cwd (pi, Oh My Pi, Claude Code, Qwen Code):

    <root>/<the cwd, encoded>/<subdir>/<session>.jsonl

A session folder the user chose (pi's --session-dir, its env variable, its settings file) holds
every cwd's files instead. Claude Code shortens a long cwd's folder name with a hash.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

from ..files import read_regular
from ..formats import RecordFormat
from ..jsonl_store import ReadBudget
from ..model import Process
from .base import Encoder, IdLayout, JsonlKind, Root, Search, SessionFolder, StoreIO, expand, listdir


@dataclass(frozen=True)
class PerCwd(JsonlKind):
    roots: tuple[Root, ...]  # each root is tried; all that exist are searched
    encode: Encoder  # how a cwd maps to a folder name
    format: RecordFormat
    subdir: str = ""  # below each cwd's folder (Qwen: "chats")
    file_names: str | None = None  # how a file's name holds the session id (id_index.FILE_IDS); None: not
    hashed_long_names: bool = False  # a folder name the encoder shortened is found by its prefix
    # a session folder the user chose instead of the per-cwd ones, strongest first: a command-line
    # flag (when the command line shows it), an env variable, a settings file's key (a JSON file
    # beside the store root: "<file>:<key>")
    custom_dir_flag: str | None = None
    custom_dir_env: str | None = None
    custom_dir_setting: str | None = None

    folders_show_new_sessions = True

    def folders(self, process: Process) -> list[SessionFolder]:
        setting = self._setting(process.environ) if self.custom_dir_setting else None
        folders = self.folders_from(process, setting)
        if self.hashed_long_names:
            folders = [_by_hashed_prefix(f, self.subdir) for f in folders]
        return folders

    def folders_from(self, process: Process, settings_session_dir: str | None = None) -> list[SessionFolder]:
        """Pure: --session-dir (when the command line shows it), the env variable and the
        settings file's session folder come first; else the cwd's folder in each root."""
        env = process.environ
        for custom in (
            _flag(process.cmdline, self.custom_dir_flag) if self.custom_dir_flag else None,
            env.get(self.custom_dir_env) if self.custom_dir_env else None,
            settings_session_dir,
        ):
            if custom:
                custom = expand(custom, env)
                if not os.path.isabs(custom):
                    custom = os.path.join(process.cwd, custom)
                return [SessionFolder(os.path.normpath(custom), process.cwd)]
        name = self.encode(process.cwd, env)
        folders = [os.path.join(root, name) for root in self.root_paths(env)]
        return [SessionFolder(os.path.join(f, self.subdir) if self.subdir else f, None) for f in folders]

    def id_layout(self) -> IdLayout | None:
        return IdLayout(1, self.subdir, self.file_names) if self.file_names else None

    def by_conversation(
        self, io: StoreIO, roots: list[str], first_user: str, deadline: float, budget: ReadBudget
    ) -> Search:
        found = Search()
        assert found.searched is not None
        cwds = io.kept(_CwdFolders)
        for root in roots:
            folders = [os.path.join(f, self.subdir) if self.subdir else f for f in cwds.of(root)]
            found.searched.append(root)
            found.searched.extend(folders)
            for folder in folders:
                found.files.extend(
                    io.jsonl.candidates(folder, self.format, first_users=[first_user], fresh=True, budget=budget)
                )
                if time.monotonic() > deadline:
                    return Search(found.files, None, done=False)
        return found

    def _setting(self, environ: Mapping[str, str]) -> str | None:
        """A session folder set in a settings file beside the store root (pi's settings.json
        `sessionDir`; small file, read once per process)."""
        file, _, key = (self.custom_dir_setting or "").partition(":")
        agent_dir = os.path.dirname(self.root_paths(environ)[0].rstrip("/"))
        try:
            data = json.loads(read_regular(os.path.join(agent_dir, file), 1 << 20) or b"null")
        except (OSError, ValueError):
            return None
        value = data.get(key) if isinstance(data, dict) else None
        return value if isinstance(value, str) and value else None


class _CwdFolders:
    """Store roots' cwd folders, newest first, listed again when a root changes."""

    def __init__(self) -> None:
        self._listed: dict[str, tuple[int, list[str]]] = {}  # store root -> (its mtime, cwd folders)

    def of(self, root: str) -> list[str]:
        try:
            mtime = os.stat(root).st_mtime_ns
        except OSError:
            return []
        listed = self._listed.get(root)
        if listed is None or listed[0] != mtime:
            try:
                entries = [(e.stat().st_mtime, e.path) for e in os.scandir(root) if e.is_dir(follow_symlinks=False)]
            except OSError:
                entries = []
            listed = self._listed[root] = (mtime, [p for _, p in sorted(entries, reverse=True)])
        return listed[1]


def _flag(cmdline: tuple[str, ...], flag: str) -> str | None:
    for i, arg in enumerate(cmdline):
        if arg == flag and i + 1 < len(cmdline):
            return cmdline[i + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1 :]
    return None


def _by_hashed_prefix(folder: SessionFolder, subdir: str) -> SessionFolder:
    """Claude Code shortens a folder name past 200 chars with a hash that differs between its
    Node and Bun builds: find the folder by its 200-char prefix instead. subdir: what lies below
    the cwd's folder (Qwen's "chats")."""
    path = folder.path.rstrip("/")
    sub = subdir if subdir and path.endswith("/" + subdir) else ""
    if sub:
        path = path[: -len(sub) - 1]
    parent, name = os.path.split(path)
    if len(name) <= 200 or os.path.isdir(folder.path):
        return folder
    prefix = name[:201]
    for entry in listdir(parent):
        if entry.startswith(prefix):
            return SessionFolder(
                os.path.join(parent, entry, sub) if sub else os.path.join(parent, entry), folder.cwd_filter
            )
    return folder
