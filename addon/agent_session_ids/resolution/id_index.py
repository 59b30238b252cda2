"""I/O adapter: find an agent's session file by the session id alone, with no process.

A request that names its session (a header, a body field) can be tied to its file without seeing
the agent's process. Every store layout keeps the id in the file name, so this index holds file
names only and never opens a file:
- pi, Oh My Pi: `<root>/<cwd folder>/<time>_<id>.jsonl` (any id: pi 1.x `--session-id feature-x`);
- Claude Code:  `<root>/<project folder>/<uuid>.jsonl` (subagents' files are deeper: not indexed);
- Qwen Code:    `<root>/<project folder>/chats/<uuid>.jsonl`;
- Codex:        `<root>/YYYY/MM/DD/rollout-<time>-<uuid>.jsonl`.

Cheap with 10,000 files, and bounded per lookup:
- a folder is listed again only when its mtime changed;
- a hit costs one stat (is the file still there?);
- a miss stats each root (and a date tree's newest year and month) and the HOT folders that
  changed last. Every other folder is stat'ed once per RECHECK_S at most, within BUDGET stats and
  listings per lookup, so a large store is swept over a few lookups. A new file in a folder not
  used lately is found within about RECHECK_S; a new cwd folder at once.
"""

from __future__ import annotations

import heapq
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from .agents import AgentProfile
from .ids import is_safe_id, is_uuid, normal_id
from .kinds import StoreKind

RECHECK_S = 1.0  # a miss re-stats every folder of a store this often at most
HOT = 8  # the folders changed last, stat'ed on every miss: where new sessions appear
BUDGET = 2048  # stats and listings per lookup, beyond the roots and the hot folders
RACY_NS = 2_000_000_000  # a folder changed this recently may change again within its mtime's tick


@dataclass(frozen=True)
class IdHit:
    agent: str
    path: str
    folder: str  # the cwd, project or day folder that holds the file
    mtime: float


# -- which names hold which id ---------------------------------------------------------------------


def _time_then_id(stem: str) -> str | None:  # pi: `<ISO time with [:.] -> ->_<id>`: no '_' in the time
    when, sep, sid = stem.partition("_")
    return sid if when and sep else None


def _uuid_only(stem: str) -> str | None:  # Claude Code, Qwen Code (older flat `agent-*` files are not)
    return stem if is_uuid(stem) else None


def _rollout(stem: str) -> str | None:  # Codex: `rollout-<time>-<uuid>`
    return stem[-36:] if stem.startswith("rollout-") and is_uuid(stem[-36:]) else None


# a store kind's IdLayout.file_names -> the id a file's name (without .jsonl) holds
FILE_IDS: dict[str, Callable[[str], str | None]] = {
    "time_id": _time_then_id,
    "uuid": _uuid_only,
    "rollout": _rollout,
}


def _number(name: str) -> bool:
    return name.isascii() and name.isdigit()


@dataclass(frozen=True)
class _Layout:
    depth: int  # folder levels between the root and the files: a cwd folder (1) or YYYY/MM/DD (3)
    subdir: str  # below each cwd folder (Qwen's "chats")
    file_id: Callable[[str], str | None]


def _layout(spec: StoreKind | None) -> _Layout | None:
    layout = spec.id_layout() if spec is not None else None
    if layout is None:
        return None  # Gemini names files by a prefix of the id; opencode keeps a database
    return _Layout(layout.depth, layout.subdir, FILE_IDS[layout.file_names])


# -- where the proxy's user (and extra HOMEs) keep their stores ------------------------------------


def store_roots(
    profiles: Iterable[AgentProfile], environ: Mapping[str, str], extra_homes: Iterable[str] = ()
) -> dict[str, list[str]]:
    """Each agent's store roots: with the proxy's environment, then with each extra HOME alone
    (a container's bind-mounted home). A root that needs a HOME that is not set is left out."""
    envs = [environ, *({"HOME": home} for home in extra_homes if home)]
    out: dict[str, list[str]] = {}
    for profile in profiles:
        spec = profile.store
        if spec is None:
            continue
        roots: list[str] = []
        for env in envs:
            for root in spec.roots:
                if not any(env.get(e) for e in root.env) and root.default.startswith("~") and not env.get("HOME"):
                    continue
                path = os.path.normpath(root.path(env))
                if os.path.isabs(path) and path not in roots:
                    roots.append(path)
        out[profile.name] = roots
    return out


# -- one store root --------------------------------------------------------------------------------


@dataclass
class _Folder:
    path: str
    depth: int  # 0: the root
    mtime_ns: int = -1  # as last listed; -1: not listed
    racy: bool = False  # changed just before it was listed: list it again at the next check
    children: dict[str, str] = field(default_factory=dict)  # inner folders: name -> path
    files: dict[str, str] = field(default_factory=dict)  # leaf folders: file path -> id key


class _Tree:
    """The file names of one store root, listed folder by folder as their mtimes change."""

    def __init__(self, root: str, layout: _Layout, now: float) -> None:
        self.root, self.layout = root, layout
        self.folders: dict[str, _Folder] = {root: _Folder(root, 0)}
        self.by_id: dict[str, dict[str, str]] = {}  # id key -> {file path: folder path}
        self.hot: list[str] = []  # leaf folders, changed last first
        self.pending: deque[str] = deque()  # folders still to check in this sweep (the root is hot)
        self.swept_at = now
        self.sweeping = True

    def check_hot(self, budget: int) -> int:
        for path in self._hot_inner() + self.hot:
            budget = self._check(path, budget)
        return budget

    def sweep(self, now: float, recheck_s: float, budget: int) -> int:
        if not self.pending and now - self.swept_at >= recheck_s:
            self.swept_at, self.sweeping = now, True
            self.pending.extend(sorted(self.folders, key=lambda p: self.folders[p].depth))
        while self.pending and budget > 0:
            budget = self._check(self.pending.popleft(), budget)
        if self.sweeping and not self.pending:
            self.sweeping = False
            leaves = [f for f in self.folders.values() if f.depth == self.layout.depth]
            self.hot = [f.path for f in heapq.nlargest(HOT, leaves, key=lambda f: f.mtime_ns)]
        return budget

    # -- internals

    def _hot_inner(self) -> list[str]:
        """The root, and in a date tree the newest year and month (where a new day appears)."""
        out, folder = [self.root], self.folders[self.root]
        while folder.children and folder.depth < self.layout.depth - 1:
            folder = self.folders[folder.children[max(folder.children)]]
            out.append(folder.path)
        return out

    def _check(self, path: str, budget: int) -> int:
        folder = self.folders.get(path)
        if folder is None:  # gone with its parent since it was queued
            return budget
        budget -= 1
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):
            self._set(folder, {}, -1)
            return budget
        if st.st_mtime_ns == folder.mtime_ns and not folder.racy:
            return budget
        budget -= 1
        leaf = folder.depth == self.layout.depth
        entries: dict[str, str] = {}
        try:
            with os.scandir(path) as it:
                for e in it:
                    if leaf:
                        if e.name.endswith(".jsonl") and e.name.isprintable() and e.is_file():
                            sid = self.layout.file_id(e.name[:-6])
                            if sid is not None and is_safe_id(sid):
                                entries[e.path] = normal_id(sid)
                    elif e.name.isprintable() and e.is_dir() and (self.layout.depth == 1 or _number(e.name)):
                        entries[e.name] = e.path  # any cwd folder; in a date tree, YYYY, MM and DD only
        except (OSError, ValueError):
            self._set(folder, {}, -1)
            return budget
        folder.racy = time.time_ns() - st.st_mtime_ns < RACY_NS
        self._set(folder, entries, st.st_mtime_ns)
        if leaf:
            self.hot = [path, *(p for p in self.hot if p != path)][:HOT]
        return budget

    def _set(self, folder: _Folder, entries: dict[str, str], mtime_ns: int) -> None:
        folder.mtime_ns = mtime_ns
        if folder.depth == self.layout.depth:
            for path in folder.files.keys() - entries.keys():
                self.drop_file(path, folder.files[path])
            for path in entries.keys() - folder.files.keys():
                self.by_id.setdefault(entries[path], {})[path] = folder.path
            folder.files = entries
            return
        for name in folder.children.keys() - entries.keys():
            self._drop_folder(folder.children[name])
        for name in entries.keys() - folder.children.keys():
            depth = folder.depth + 1
            child = entries[name]
            if depth == self.layout.depth and self.layout.subdir:
                child = os.path.join(child, self.layout.subdir)
            entries[name] = child
            self.folders[child] = _Folder(child, depth)
            self.pending.appendleft(child)  # a new folder is listed in this lookup, budget permitting
        for name in entries.keys() & folder.children.keys():
            entries[name] = folder.children[name]
        folder.children = entries

    def _drop_folder(self, path: str) -> None:
        folder = self.folders.pop(path, None)
        if folder is None:
            return
        for child in folder.children.values():
            self._drop_folder(child)
        for file_path, key in list(folder.files.items()):
            self.drop_file(file_path, key)
        if path in self.hot:
            self.hot.remove(path)

    def drop_file(self, path: str, key: str) -> None:
        paths = self.by_id.get(key)
        if paths is not None:
            folder = self.folders.get(paths.pop(path, ""))
            if folder is not None:
                folder.files.pop(path, None)
            if not paths:
                del self.by_id[key]


# -- the index -------------------------------------------------------------------------------------


class IdIndex:
    """Session files by id across the agents' stores. Thread-safe; never raises on odd stores."""

    def __init__(
        self,
        profiles: Iterable[AgentProfile],
        roots_for: Callable[[AgentProfile], list[str]],
        *,
        clock: Callable[[], float] = time.monotonic,
        recheck_s: float = RECHECK_S,
        budget: int = BUDGET,
    ) -> None:
        self.profiles = tuple(profiles)
        self.roots_for = roots_for
        self._clock, self._recheck_s, self._budget = clock, recheck_s, budget
        self._trees: dict[tuple[str, _Layout], _Tree] = {}
        self._turn = 0  # which store sweeps first, so that none waits behind a large one for ever
        self._lock = threading.Lock()

    def lookup(self, agent_name: str | None, session_id: str) -> list[IdHit]:
        """The files of this session id (of this agent, or of any agent with None), newest first."""
        if not is_safe_id(session_id):
            return []
        key = normal_id(session_id)
        with self._lock:
            trees = self._trees_of(agent_name)
            hits = self._hits(trees, key)
            if hits:
                return hits
            unique = list({id(t): t for _, t in trees}.values())
            budget = self._budget
            for tree in unique:
                budget = tree.check_hot(budget)
            if unique:
                self._turn = (self._turn + 1) % len(unique)
                now = self._clock()
                for tree in unique[self._turn :] + unique[: self._turn]:
                    budget = tree.sweep(now, self._recheck_s, budget)
            return self._hits(trees, key)

    def warm(self) -> None:
        """List every store in full now (off the event loop), so that the first lookups find all."""
        with self._lock:
            for _, tree in self._trees_of(None):
                tree.check_hot(1 << 62)
                tree.sweep(self._clock(), self._recheck_s, 1 << 62)

    def _trees_of(self, agent_name: str | None) -> list[tuple[str, _Tree]]:
        out = []
        for profile in self.profiles:
            if agent_name is not None and profile.name != agent_name:
                continue
            layout = _layout(profile.store)
            if layout is None:
                continue
            for root in self.roots_for(profile) or ():
                if not isinstance(root, str) or not os.path.isabs(root) or "\0" in root:
                    continue
                root = os.path.normpath(root)
                tree = self._trees.get((root, layout))
                if tree is None:
                    tree = self._trees[(root, layout)] = _Tree(root, layout, self._clock())
                out.append((profile.name, tree))
        return out

    def _hits(self, trees: list[tuple[str, _Tree]], key: str) -> list[IdHit]:
        out: list[IdHit] = []
        seen: dict[str, float | None] = {}  # path -> its mtime, None when it is no regular file now
        for agent, tree in trees:
            for path, folder in list(tree.by_id.get(key, {}).items()):
                if path not in seen:
                    try:
                        st = os.stat(path)
                        seen[path] = st.st_mtime if stat.S_ISREG(st.st_mode) else None
                    except (OSError, ValueError):
                        seen[path] = None
                mtime = seen[path]
                if mtime is None:
                    tree.drop_file(path, key)
                else:
                    out.append(IdHit(agent, path, folder, mtime))
        return sorted(out, key=lambda h: (-h.mtime, h.agent, h.path))
