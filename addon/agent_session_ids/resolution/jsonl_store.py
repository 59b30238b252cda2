"""I/O adapter: snapshots of session folders of JSONL files, one file per session.

Built for folders of thousands of files and files of any size:
- a folder is listed again only when its mtime changes;
- a new file's head (header and first user turn) is read once;
- a file's tail is read only when the resolver needs that file, and only what was appended since;
- files are opened non-blocking and must be regular files, so a FIFO or device named *.jsonl
  cannot hang the proxy; lines longer than MAX_LINE are skipped.
"""

from __future__ import annotations

import os
import stat
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from .files import open_regular
from .formats import RecordFormat
from .jsonl_file import (  # noqa: F401 - the limits, re-exported for the tests and the docs
    CHUNK,
    HEAD_LIMIT,
    MAX_LINE,
    FileState,
    clean_name,
    id_from_name,
    latest_name,
    read_head,
    scan,
    snapshot,
)
from .model import SessionFile

INDEX_WAIT_S = 0.3  # a request that continues a session waits this long at most for the folder's index
INDEX_STEP_S = 0.01  # otherwise, indexing goes on in steps this long, between requests
TAIL_BUDGET = 4 << 20  # bytes of a file's tail read per request; the rest is read between requests
INLINE_TAIL_BUDGET = 256 << 10  # ... when the request is resolved on the event loop
WAIT_RECHECK_S = 1.0  # a folder's files that had no user turn yet are looked at again at most this often
WAIT_RECHECK_FILES = 16  # ... and only the newest of them (a session being written is a new one)
MAX_FOLDERS = 512  # folders kept in memory; the least recently used is forgotten first
MAX_KEPT_FDS = 32  # session files kept open for the memo's check (one pread per request)
DB_WAIT_S = 0.05  # how long a database's lock is waited for, off the event loop


@dataclass(frozen=True)
class ReadBudget:
    """How much one resolution may read now. On the event loop every read is a small step, and
    what is left (a long tail, a backward name scan, a folder's index) is done between requests.
    The limits are read when used, from this module's constants."""

    inline: bool  # resolved on the event loop

    @property
    def index_wait_s(self) -> float:  # how long a continued session waits for its folder's index
        return INDEX_STEP_S if self.inline else INDEX_WAIT_S

    @property
    def tail_bytes(self) -> int:
        return INLINE_TAIL_BUDGET if self.inline else TAIL_BUDGET

    @property
    def backward_names(self) -> bool:  # a large file's latest name read backwards from its end
        return not self.inline

    @property
    def db_wait_s(self) -> float:
        return 0.0 if self.inline else DB_WAIT_S


ON_WORKER = ReadBudget(inline=False)
INLINE = ReadBudget(inline=True)


@dataclass
class _DirState:
    mtime_ns: int = -1
    files: dict[str, FileState] = field(default_factory=dict)  # path -> state
    by_id: dict[str, str] = field(default_factory=dict)  # session id -> path
    by_first_user: dict[str, set[str]] = field(default_factory=dict)  # fingerprint -> paths
    incomplete: set[str] = field(default_factory=set)  # paths whose head is not complete yet
    order: list[str] = field(default_factory=list)  # incomplete ones not read yet, newest first
    waiting: list[str] = field(default_factory=list)  # read, but no user turn yet (header-only), newest first
    waiting_checked: float = 0.0  # monotonic time of the last look at `waiting`


def _listing(folder: str) -> dict[str, float]:
    """The folder's *.jsonl files and their mtimes; what cannot be listed or stat'ed is left out."""
    entries = {}
    try:
        for e in os.scandir(folder):
            if e.name.endswith(".jsonl"):
                try:
                    entries[e.path] = e.stat().st_mtime
                except OSError:
                    continue
    except OSError:
        pass
    return entries


class JsonlStore:
    """Session folders of JSONL files, one file per session, read as a RecordFormat says."""

    def __init__(self) -> None:
        self._dirs: OrderedDict[str, _DirState] = OrderedDict()  # least recently used first
        self._kept: OrderedDict[str, tuple[int, int]] = OrderedDict()  # path -> (fd, inode): memo'd files
        self._behind: dict[str, tuple[FileState, RecordFormat]] = {}  # files with more tail to read
        self._unindexed: dict[str, tuple[_DirState, RecordFormat]] = {}  # folders with heads to read

    def candidates(
        self,
        folder: str,
        fmt: RecordFormat,
        ids: Iterable[str] = (),
        first_users: Iterable[str] = (),
        paths: Iterable[str] = (),
        cwd: str | None = None,
        relist: bool = True,
        fresh: bool = False,
        budget: ReadBudget = ON_WORKER,
    ) -> list[SessionFile]:
        """Fresh snapshots of the folder's files with one of these ids, first user turns or paths.
        With `cwd`, files found by their first user turn must name that cwd in their header (for
        folders that hold every cwd's files). relist=False trusts an earlier listing of the folder."""
        d = self._dirs.get(folder) if not relist else None
        if d is None:
            d = self._refresh_dir(folder, fmt)
        if d is None:
            return []
        first_users = list(first_users)
        if d.incomplete:
            self._read_heads(folder, d, fmt, first_users, fresh, budget)
        wanted = self._wanted(d, first_users, ids, paths, cwd)
        out = []
        for path in sorted(wanted):
            f = d.files[path]
            if not self._refresh_tail(f, fmt, budget):
                self._forget(d, path)
                continue
            if wanted[path] and f.cwd is not None and f.cwd != cwd:
                continue
            out.append(snapshot(f))
        return out

    def _read_heads(
        self, folder: str, d: _DirState, fmt: RecordFormat, first_users: list[str], fresh: bool, budget: ReadBudget
    ) -> None:
        """Index the folder's unread heads until the first user turns sought are found, as long
        as the budget allows; what is left goes to the background work."""
        missing = {fp for fp in first_users if fp not in d.by_first_user}
        if d.order:
            # a continued session's file may be any file: look for it (newest first) a while;
            # a new session's file is among the newest, which the first step reads
            wait = budget.index_wait_s if missing and not fresh else INDEX_STEP_S
            self._index(d, fmt, missing, wait)
            if d.order:
                self._unindexed[folder] = (d, fmt)
        if missing and d.waiting:
            self._recheck_waiting(d, fmt)

    @staticmethod
    def _wanted(
        d: _DirState, first_users: list[str], ids: Iterable[str], paths: Iterable[str], cwd: str | None
    ) -> dict[str, bool]:
        """The known files sought, path -> whether the file must name `cwd` (found by first turn)."""
        wanted: dict[str, bool] = {}
        for fp in first_users:
            for path in d.by_first_user.get(fp, ()):
                wanted[path] = cwd is not None
        for sid in ids:
            if sid in d.by_id:
                wanted[d.by_id[sid]] = False
        for p in paths:
            if p in d.files:
                wanted[p] = False
        return wanted

    def name_now(
        self, path: str, fmt: RecordFormat, st: os.stat_result | None = None, budget: ReadBudget = ON_WORKER
    ) -> tuple[bool, str | None]:
        """A known file's latest name, after reading what was appended to it: (known, name).
        (False, None) when the file was never read or is gone. The memo's check, at every request
        whose session file grew: no listing, no snapshot. With `st`, the file's stat just taken by
        its path: the file is then read through an fd kept open for it (one pread)."""
        d = self._dirs.get(os.path.dirname(path))
        f = d.files.get(path) if d is not None else None
        if d is None or f is None:
            return False, None
        if st is None or not stat.S_ISREG(st.st_mode):
            known = self._refresh_tail(f, fmt, budget)
        else:
            fd = self._kept_fd(path, st.st_ino)
            known = fd is not None and self._read_tail(fd, f, fmt, st, budget)
        if not known:
            self._forget(d, path)
            self._close_kept(path)
            return False, None
        return True, f.name

    def _kept_fd(self, path: str, ino: int) -> int | None:
        """An fd of the file that is at `path` now (inode `ino`), kept open for the next time."""
        kept = self._kept.pop(path, None)
        if kept is not None and kept[1] != ino:  # replaced since: the old one is no longer the file
            os.close(kept[0])
            kept = None
        if kept is None:
            opened = open_regular(path)
            if opened is None:
                return None
            fd, st = opened
            if st.st_ino != ino:  # replaced just now
                os.close(fd)
                return None
            kept = (fd, ino)
        self._kept[path] = kept
        while len(self._kept) > MAX_KEPT_FDS:
            os.close(self._kept.popitem(last=False)[1][0])
        return kept[0]

    def _close_kept(self, path: str) -> None:
        kept = self._kept.pop(path, None)
        if kept is not None:
            os.close(kept[0])

    # -- folder ------------------------------------------------------------------------------

    def _refresh_dir(self, folder: str, fmt: RecordFormat) -> _DirState | None:
        try:
            st = os.stat(folder)
        except OSError:
            self._drop_folder(folder)
            return None
        if not stat.S_ISDIR(st.st_mode):
            self._drop_folder(folder)
            return None
        d = self._dirs.get(folder)
        if d is None:
            d = self._dirs[folder] = _DirState()
            while len(self._dirs) > MAX_FOLDERS:
                self._drop_folder(next(iter(self._dirs)))
        else:
            self._dirs.move_to_end(folder)
        if st.st_mtime_ns != d.mtime_ns:
            d.mtime_ns = st.st_mtime_ns
            self._relist(d, _listing(folder))
        return d

    def _relist(self, d: _DirState, entries: dict[str, float]) -> None:
        """Forget the files gone from the folder's listing, add the new ones (heads not read yet)."""
        for path in [p for p in d.files if p not in entries]:
            self._forget(d, path)
        new = entries.keys() - d.files.keys()
        for path in new:
            f = d.files[path] = FileState(path, id_from_name(path), mtime=entries[path])
            d.by_id[f.id] = path
            d.incomplete.add(path)
        if new:
            d.order = sorted(set(d.order) | new, key=lambda p: d.files[p].mtime, reverse=True)

    def _index(self, d: _DirState, fmt: RecordFormat, until: set[str], budget_s: float) -> None:
        """Read heads of not yet indexed files, newest first, for at most budget_s, or until the
        first user turns in `until` are all found."""
        deadline = time.monotonic() + budget_s
        done = len(d.order)
        for i, path in enumerate(d.order):
            # at least one file per call, so that steps always make progress
            if i and (time.monotonic() > deadline or (until and all(fp in d.by_first_user for fp in until))):
                done = i
                break
            f = d.files.get(path)
            if f is None or path not in d.incomplete:
                continue
            if not read_head(f, fmt):
                self._forget(d, path)
                continue
            if not self._head_read(d, f):
                # no user turn yet (a header-only file): out of the queue, so that the background
                # work ends; _recheck_waiting looks at it again when a request needs it
                d.waiting.append(path)
        # every file leaves `order` once read: the queue only shrinks
        d.order = d.order[done:]

    @staticmethod
    def _head_read(d: _DirState, f: FileState) -> bool:
        """Index what a head read found; True if the head is complete."""
        if f.header_id and f.header_id != f.id:
            d.by_id.setdefault(f.header_id, f.path)
        if not f.head_done:
            return False
        d.incomplete.discard(f.path)
        if f.first_user:
            d.by_first_user.setdefault(f.first_user, set()).add(f.path)
        return True

    def _recheck_waiting(self, d: _DirState, fmt: RecordFormat) -> None:
        """Read again the newest header-only files that grew since (Codex writes its header first,
        the user turn later). Bounded: a few files, at most once a second per folder."""
        now = time.monotonic()
        if now - d.waiting_checked < WAIT_RECHECK_S:
            return
        d.waiting_checked = now
        kept = []
        for i, path in enumerate(d.waiting):
            f = d.files.get(path)
            if f is None or path not in d.incomplete:
                continue
            if i < WAIT_RECHECK_FILES:
                if not read_head(f, fmt):
                    self._forget(d, path)
                    continue
                if self._head_read(d, f):
                    continue
            kept.append(path)
        d.waiting = kept

    def _drop_folder(self, folder: str) -> None:
        d = self._dirs.pop(folder, None)
        if d is None:
            return
        self._unindexed.pop(folder, None)
        for path in d.files:
            self._behind.pop(path, None)
            self._close_kept(path)

    @staticmethod
    def _forget(d: _DirState, path: str) -> None:
        f = d.files.pop(path, None)
        d.incomplete.discard(path)
        if f is None:
            return
        for sid in (f.id, f.header_id):
            if sid and d.by_id.get(sid) == path:
                del d.by_id[sid]
        if f.first_user and f.first_user in d.by_first_user:
            d.by_first_user[f.first_user].discard(path)
            if not d.by_first_user[f.first_user]:
                del d.by_first_user[f.first_user]

    # -- one file ------------------------------------------------------------------------------

    def _refresh_tail(self, f: FileState, fmt: RecordFormat, budget: ReadBudget) -> bool:
        """Count answered turns and find the latest name in what was appended since the last look.

        At most TAIL_BUDGET bytes are read per call; a file with more to read is left `behind`, for
        catch_up() to finish between requests. The latest name of a large file is found at once by
        reading backwards from its end."""
        opened = open_regular(f.path)
        if opened is None:
            return False
        fd, st = opened
        try:
            return self._read_tail(fd, f, fmt, st, budget)
        finally:
            os.close(fd)

    def _read_tail(self, fd: int, f: FileState, fmt: RecordFormat, st: os.stat_result, budget: ReadBudget) -> bool:
        try:
            if st.st_size < f.offset or (f.ino and st.st_ino != f.ino):
                # truncated or replaced: start over
                f.offset, f.n_assistant, f.name, f.skipping, f.size, f.name_at = 0, 0, None, False, -1, -1
            f.ino = st.st_ino
            f.mtime = st.st_mtime
            if st.st_size == f.size:
                return True
            if f.size < 0 and st.st_size - f.offset > TAIL_BUDGET and fmt.name is not None and budget.backward_names:
                latest_name(fd, f, fmt, st.st_size)
            f.size = st.st_size
            self._scan(fd, f, fmt, budget.tail_bytes)
            return True
        except OSError:
            return False

    def _scan(self, fd: int, f: FileState, fmt: RecordFormat, tail_bytes: int) -> None:
        """One budget of the file's tail; a file with more to read is left `behind`."""
        if scan(fd, f, fmt, tail_bytes):
            self._behind[f.path] = (f, fmt)
        else:
            self._behind.pop(f.path, None)

    @property
    def behind(self) -> bool:
        return bool(self._behind) or bool(self._unindexed)

    def catch_up(self) -> bool:
        """One more step of background work: index a folder, or read one budget of a file that
        is behind; True while any is left."""
        if self._unindexed:
            folder, (d, fmt) = next(iter(self._unindexed.items()))
            if self._dirs.get(folder) is d:
                self._index(d, fmt, set(), INDEX_STEP_S * 2)
            if not d.order or self._dirs.get(folder) is not d:
                del self._unindexed[folder]
            return True
        if not self._behind:
            return False
        path, (f, fmt) = next(iter(self._behind.items()))
        opened = open_regular(path)
        if opened is None:
            self._behind.pop(path, None)
            return bool(self._behind)
        fd, _ = opened
        try:
            self._scan(fd, f, fmt, TAIL_BUDGET)
        except OSError:
            self._behind.pop(path, None)
        finally:
            os.close(fd)
        return bool(self._behind)
