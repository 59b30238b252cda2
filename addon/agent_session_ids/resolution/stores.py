"""I/O adapter: from an agent process to snapshots of the session files the resolver needs.

The store kinds that differ are here: folders per cwd (JsonlStore), a date tree (Codex), a project
registry (Gemini CLI), a SQLite database (opencode), a folder per session with a manifest
(Cline, SessionDirs), long cwd names shortened with a hash (Claude
Code, Qwen Code), and a settings file's session folder (pi).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import time
from collections.abc import Mapping

from . import mounts
from .agents import AgentProfile, SessionFolder, StoreSpec, root_paths, session_folders
from .files import read_regular
from .jsonl_file import clean_name, parse_time
from .jsonl_store import JsonlStore
from .model import Process, SessionFile
from .session_dirs import SessionDirs

DATE_TREE_RELIST_S = 10.0  # how often a date tree's older day folders are listed again
RECENT_DAYS = 2  # the newest day folders are checked on every request
CONVERSATION_BUDGET_S = 0.15  # a search across every cwd folder stops here; the rest is indexed later


class Stores:
    def __init__(self) -> None:
        self.jsonl = JsonlStore()
        self.session_dirs = SessionDirs()
        self._folders: dict[str, list[SessionFolder]] = {}  # process key -> folders
        self._days: dict[str, tuple[float, list[str]]] = {}  # date-tree root -> (listed at, day dirs)
        self._name_indexes: dict[str, tuple[int, dict[str, str]]] = {}  # path -> (read up to, names)
        self._cwds: dict[str, tuple[int, list[str]]] = {}  # store root -> (its mtime, cwd folders)

    def known_folders(self, process_key: str) -> list[SessionFolder] | None:
        """The session folders found for a process, or None before its first resolution."""
        return self._folders.get(process_key)

    def process_keys(self) -> list[str]:
        return list(self._folders)

    def warm_and_local(self, process_key: str) -> bool:
        """Were this process's folders found before, all on local filesystems?"""
        folders = self._folders.get(process_key)
        return folders is not None and all(mounts.is_local(f.path) for f in folders)

    def forget(self, process_keys) -> None:
        for key in process_keys:
            self._folders.pop(key, None)

    def folders(self, profile: AgentProfile, process: Process) -> list[SessionFolder]:
        folders = self._folders.get(process.key)
        if folders is None:
            spec = profile.store
            settings = read_setting_session_dir(spec, process.environ) if spec and spec.custom_dir_setting else None
            project = read_project_registry(spec, process) if spec and spec.project_registry else None
            folders = session_folders(profile, process, settings, project)
            if spec and spec.long_cwd:
                find = LONG_CWD[spec.long_cwd]
                folders = [find(f, spec.subdir) for f in folders]
            self._folders[process.key] = folders
        return folders

    def candidates(self, profile: AgentProfile, process: Process, hint: str | None, first_user: str | None,
                   paths: list[str], fresh: bool = False, found_by_id: bool = False) -> list[SessionFile]:
        """The files with the hinted id, the request's first user turn, or one of `paths`.
        found_by_id: the hinted file was found by its name already, so a date tree is not searched."""
        fmt = profile.store.format if profile.store else None
        out: list[SessionFile] = []
        ids = [hint] if hint else []
        fps = [first_user] if first_user else []
        for folder in self.folders(profile, process):
            if folder.kind == "per_cwd":
                out.extend(self.jsonl.candidates(folder.path, fmt, ids, fps, paths, folder.cwd_filter, fresh=fresh))
            elif folder.kind == "date_tree" and not found_by_id:
                for i, day in enumerate(self._day_dirs(folder.path)):
                    out.extend(self.jsonl.candidates(day, fmt, ids, fps, paths, folder.cwd_filter,
                                                     relist=i < RECENT_DAYS, fresh=fresh))
            elif folder.kind == "session_dirs" and spec_manifest(profile) is not None:
                out.extend(self.session_dirs.candidates(folder.path, spec_manifest(profile), ids, fps, paths))
            elif folder.kind == "sqlite":
                # the session the request names, else the newest of this cwd
                row = newest_opencode_session(folder.path, process, wait_s=0.0 if self.jsonl.inline else 0.05,
                                              database=profile.store.database, database_env=profile.store.database_env,
                                              session_id=hint)
                if row is not None:
                    out.append(row)
        spec = profile.store
        if out and spec is not None and spec.name_index:
            names = {}
            for root in root_paths(spec, process.environ):
                names.update(self._names(os.path.join(os.path.dirname(root.rstrip("/")), spec.name_index),
                                         spec.name_index_fields))
            out = [dataclasses.replace(f, name=names[f.id]) if names.get(f.id) else f for f in out]
        return out

    def by_id(self, profile: AgentProfile, folder: str, session_id: str, roots: list[str]) -> list[SessionFile]:
        """Snapshots of the file of this id in one folder the id index found (no process needed)."""
        spec = profile.store
        if spec is None or spec.format is None:
            return []
        out = [dataclasses.replace(f, agent=profile.name)
               for f in self.jsonl.candidates(folder, spec.format, ids=[session_id])]
        if out and spec.name_index:
            names = {}
            for root in roots:
                names.update(self._names(os.path.join(os.path.dirname(root.rstrip("/")), spec.name_index),
                                         spec.name_index_fields))
            out = [dataclasses.replace(f, name=names[f.id]) if names.get(f.id) else f for f in out]
        return out

    searched: list[str] | None = None  # what the last by_conversation read (see there)

    def by_conversation(self, roots: Mapping[str, list[str]], profiles, first_user: str, fresh: bool,
                        budget_s: float = CONVERSATION_BUDGET_S) -> list[SessionFile]:
        """Files whose first user turn is this one, in every cwd folder of the stores the proxy can
        read (`roots`: agent name -> store roots), newest folders first, within a time budget; the
        folders not read in time are indexed between requests."""
        deadline = time.monotonic() + budget_s
        out: list[SessionFile] = []
        # what the search read, for a memo: every root and folder (a new file or folder changes its
        # mtime); None when that cannot tell (out of time, or a date tree, whose new days it misses)
        searched: list[str] | None = []
        self.searched = None
        for profile in profiles:
            spec = profile.store
            if spec is not None and spec.manifest is not None:
                for root in dict.fromkeys(roots.get(profile.name, ())):
                    found = self.session_dirs.candidates(root, spec.manifest, first_users=[first_user])
                    out.extend(dataclasses.replace(f, agent=profile.name) for f in found)
                    if searched is not None:
                        # a new session changes the root; a manifest not read yet, only its folder
                        searched.append(root)
                        searched.extend(self.session_dirs.unread(root))
                continue
            if spec is None or spec.format is None or spec.kind not in ("per_cwd", "date_tree"):
                continue
            for root in roots.get(profile.name, ()):
                if spec.kind == "date_tree":
                    folders = self._day_dirs(root)[:RECENT_DAYS * 4]
                    if os.path.isdir(root):
                        searched = None
                else:
                    folders = [os.path.join(f, spec.subdir) if spec.subdir else f for f in self._cwd_dirs(root)]
                    if searched is not None:
                        searched.append(root)
                        searched.extend(folders)
                for folder in folders:
                    found = self.jsonl.candidates(folder, spec.format, first_users=[first_user], fresh=True)
                    out.extend(dataclasses.replace(f, agent=profile.name) for f in found)
                    if time.monotonic() > deadline:
                        return out
        self.searched = searched
        return out

    def _cwd_dirs(self, root: str) -> list[str]:
        """A store root's cwd folders, newest first, listed again when the root changes."""
        try:
            mtime = os.stat(root).st_mtime_ns
        except OSError:
            return []
        listed = self._cwds.get(root)
        if listed is None or listed[0] != mtime:
            try:
                entries = [(e.stat().st_mtime, e.path) for e in os.scandir(root) if e.is_dir(follow_symlinks=False)]
            except OSError:
                entries = []
            listed = self._cwds[root] = (mtime, [p for _, p in sorted(entries, reverse=True)])
        return listed[1]

    def _names(self, path: str, fields: tuple[str, str]) -> dict[str, str]:
        """id -> latest name from an append-only JSONL index, reading only what was appended."""
        offset, names = self._name_indexes.get(path, (0, {}))
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
            self._name_indexes[path] = (offset, names)
        return names

    def _day_dirs(self, root: str) -> list[str]:
        """The day folders of a YYYY/MM/DD tree, newest first, listed again every few seconds."""
        now = time.monotonic()
        listed = self._days.get(root)
        if listed is None or now - listed[0] > DATE_TREE_RELIST_S:
            days = []
            for level1 in _subdirs(root):
                for level2 in _subdirs(level1):
                    days.extend(_subdirs(level2))
            days.sort(reverse=True)
            listed = self._days[root] = (now, days)
        return listed[1]


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
    for entry in _listdir(parent):
        if entry.startswith(prefix):
            return SessionFolder(os.path.join(parent, entry, sub) if sub else os.path.join(parent, entry),
                                 folder.cwd_filter, folder.kind)
    return folder


# StoreSpec.long_cwd -> how the folder of a cwd whose encoded name was shortened is found
LONG_CWD = {"hashed": _by_hashed_prefix}


def _subdirs(path: str) -> list[str]:
    try:
        return [e.path for e in os.scandir(path) if e.is_dir(follow_symlinks=False) and e.name.isdigit()]
    except OSError:
        return []


def read_setting_session_dir(spec, environ) -> str | None:
    """A session folder set in a settings file beside the store root (pi's settings.json
    `sessionDir`; small file, read once per process)."""
    file, _, key = spec.custom_dir_setting.partition(":")
    agent_dir = os.path.dirname(root_paths(spec, environ)[0].rstrip("/"))
    try:
        data = json.loads(read_regular(os.path.join(agent_dir, file), 1 << 20) or b"null")
    except (OSError, ValueError):
        return None
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None


def read_project_registry(spec: StoreSpec, process: Process) -> str | None:
    """The project folder a registry in the first store root names for the cwd (Gemini CLI's
    ~/.gemini/projects.json {"projects": {path: slug}})."""
    file, _, key = spec.project_registry.partition(":")
    root = root_paths(spec, process.environ)[0]
    try:
        data = json.loads(read_regular(os.path.join(root, file), 4 << 20) or b"null")
    except (OSError, ValueError):
        return None
    slug = data.get(key, {}).get(process.cwd) if isinstance(data, dict) else None
    return slug if isinstance(slug, str) and "/" not in slug else None


def newest_opencode_session(
    data_dir: str, process: Process, wait_s: float = 0.05, database: str = "opencode.db",
    database_env: str | None = "OPENCODE_DB", session_id: str | None = None,
) -> SessionFile | None:
    """opencode >= 1.2 (and its fork Kilo): the session of this id, else the newest session of
    this cwd, in its SQLite database (read-only)."""
    env = process.environ
    db = (env.get(database_env) if database_env else None) or database
    db = db if os.path.isabs(db) else os.path.join(data_dir, db)
    if not os.path.isfile(db):
        if wait_s <= 0 or session_id:
            return None  # the legacy JSON files are many small files: never on the event loop
        return _newest_opencode_json_session(data_dir, process)
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=wait_s)
        try:
            if session_id:
                row = conn.execute("SELECT id, title, time_created, time_updated, directory FROM session WHERE id = ?",
                                   (session_id,)).fetchone()
            else:
                # opencode records $PWD, which can differ from the real cwd (a symlinked path)
                dirs = tuple(dict.fromkeys(d for d in (process.cwd, env.get("PWD")) if d))
                row = conn.execute(
                    f"SELECT id, title, time_created, time_updated, directory FROM session WHERE directory IN "
                    f"({', '.join('?' * len(dirs))}) ORDER BY time_updated DESC LIMIT 1", dirs
                ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    if not row or not isinstance(row[0], str):
        return None
    sid, title, created, updated, directory = row
    # opencode titles every session itself: not a name the user chose, so not used for the label
    return SessionFile(path=f"{db}#{sid}", id=sid, created=_ms(created), mtime=_ms(updated), first_user=None,
                       n_assistant=0, cwd=directory if isinstance(directory, str) and directory else process.cwd)


def _newest_opencode_json_session(data_dir: str, process: Process) -> SessionFile | None:
    """opencode < 1.2: storage/session/<project>/<session>.json files."""
    best = None
    root = os.path.join(data_dir, "storage", "session")
    for project in _listdir(root):
        folder = os.path.join(root, project)
        for name in _listdir(folder):
            if not name.endswith(".json"):
                continue
            try:
                data = json.loads(read_regular(os.path.join(folder, name), 1 << 20) or b"null")
            except (OSError, ValueError):
                continue
            if not isinstance(data, dict) or data.get("directory") != process.cwd:
                continue
            t = data.get("time") if isinstance(data.get("time"), dict) else {}
            updated = _ms(t.get("updated"))
            if best is None or updated > best.mtime:
                best = SessionFile(path=os.path.join(folder, name), id=str(data.get("id")),
                                   created=_ms(t.get("created")), mtime=updated, first_user=None, n_assistant=0,
                                   cwd=process.cwd)
    return best


def spec_manifest(profile: AgentProfile):
    return profile.store.manifest if profile.store else None


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _ms(value) -> float:
    if isinstance(value, (int, float)):
        return value / 1000.0 if value > 1e11 else float(value)
    return parse_time(value) or 0.0
