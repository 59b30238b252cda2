"""I/O adapter: snapshots of session folders of JSONL files, one file per session.

Built for folders of thousands of files and files of any size:
- a folder is listed again only when its mtime changes;
- a new file's head (header and first user turn) is read once;
- a file's tail is read only when the resolver needs that file, and only what was appended since;
- files are opened non-blocking and must be regular files, so a FIFO or device named *.jsonl
  cannot hang the proxy; lines longer than MAX_LINE are skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from ..jsontext import dotted
from .agents import ANY, RecordFormat
from .conversation import fingerprint, text_of
from .files import open_regular
from .ids import UUID_RE, is_safe_id, normal_id
from .model import SessionFile

_ID_AT_END = re.compile(rf"({UUID_RE})$")

MAX_LINE = 8 << 20  # a longer line is skipped, not parsed
HEAD_LIMIT = 16 << 20  # how far to look for the header and the first user turn
CHUNK = 1 << 20
INDEX_WAIT_S = 0.3  # a request that continues a session waits this long at most for the folder's index
INDEX_STEP_S = 0.01  # otherwise, indexing goes on in steps this long, between requests
TAIL_BUDGET = 4 << 20  # bytes of a file's tail read per request; the rest is read between requests
INLINE_TAIL_BUDGET = 256 << 10  # ... when the request is resolved on the event loop
NAME_SCAN_LIMIT = 64 << 20  # how far back from a large file's end to look for its latest name
WAIT_RECHECK_S = 1.0  # a folder's files that had no user turn yet are looked at again at most this often
WAIT_RECHECK_FILES = 16  # ... and only the newest of them (a session being written is a new one)
MAX_FOLDERS = 512  # folders kept in memory; the least recently used is forgotten first
MAX_KEPT_FDS = 32  # session files kept open for the memo's check (one pread per request)


@dataclass
class _FileState:
    path: str
    id: str
    size: int = -1  # size at the last tail scan
    mtime: float = 0.0
    head_size: int = -1  # size at the last head read
    head_done: bool = False
    created: float | None = None
    cwd: str | None = None
    parent: str | None = None
    first_user: str | None = None
    header_id: str | None = None
    offset: int = 0  # the tail has been scanned up to here (a line start)
    skipping: bool = False  # inside an over-long line
    n_assistant: int = 0
    name: str | None = None
    name_at: int = -1  # where the latest name record ends (names before it are older)
    ino: int = 0  # the inode the tail was read from (another one: the file was replaced)


@dataclass
class _DirState:
    mtime_ns: int = -1
    files: dict[str, _FileState] = field(default_factory=dict)  # path -> state
    by_id: dict[str, str] = field(default_factory=dict)  # session id -> path
    by_first_user: dict[str, set[str]] = field(default_factory=dict)  # fingerprint -> paths
    incomplete: set[str] = field(default_factory=set)  # paths whose head is not complete yet
    order: list[str] = field(default_factory=list)  # incomplete ones not read yet, newest first
    waiting: list[str] = field(default_factory=list)  # read, but no user turn yet (header-only), newest first
    waiting_checked: float = 0.0  # monotonic time of the last look at `waiting`


def _parse_time(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _lines(fd: int, offset: int, limit: int, skipping: bool):
    """Yield (line_bytes, end_offset) of complete lines from offset; lines over MAX_LINE are skipped.
    The last value yielded is (None, resume_offset, skipping) for the caller to keep."""
    buf = b""
    buf_start = offset
    pos = offset
    end = offset + limit
    while pos < end:
        chunk = os.pread(fd, min(CHUNK, end - pos), pos)
        if not chunk:
            break
        pos += len(chunk)
        buf += chunk
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            if skipping:
                skipping = False
            else:
                yield buf[start:nl], buf_start + nl + 1
            start = nl + 1
        buf = buf[start:]
        buf_start += start
        if len(buf) > MAX_LINE:
            skipping = True
            buf_start += len(buf)
            buf = b""
    yield None, buf_start, skipping


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def id_from_name(path: str) -> str:
    """The session id in a file name: a uuid at its end (`<time>_<uuid>`, `<uuid>`,
    `rollout-<time>-<uuid>`), else what follows the first '_', else the whole stem. A name that
    is no plain id gives a hash of the path, so no odd character reaches a header."""
    stem = os.path.basename(path)[: -len(".jsonl")]
    m = _ID_AT_END.search(stem)
    if m:
        return m.group(1).lower()
    sid = stem.partition("_")[2] or stem  # pi's time has no '_'; a chosen id may (`feature_x`)
    if is_safe_id(sid):
        return sid
    return "file-" + hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def clean_name(name: str) -> str | None:
    """A session name as a user meant it: no control chars or lone surrogates, 500 chars at most."""
    name = _CONTROL.sub(" ", name.encode("utf-8", "replace").decode("utf-8")).strip()
    return name[:500] or None


def _matches(record: dict, conditions) -> bool:
    for path, want in conditions.items():
        value = dotted(record, path)
        if want is ANY:
            if value is None:
                return False
        elif isinstance(want, tuple):
            if value not in want:
                return False
        elif value != want:
            return False
    return True


class JsonlStore:
    """Session folders of JSONL files, one file per session, read as a RecordFormat says."""

    def __init__(self) -> None:
        self._dirs: OrderedDict[str, _DirState] = OrderedDict()  # least recently used first
        self._kept: OrderedDict[str, tuple[int, int]] = OrderedDict()  # path -> (fd, inode): memo'd files
        self._behind: dict[str, tuple[_FileState, RecordFormat]] = {}  # files with more tail to read
        self._unindexed: dict[str, tuple[_DirState, RecordFormat]] = {}  # folders with heads to read
        # set while a request is resolved on the event loop: every read is then a small step,
        # and what is left (a long tail, a backward name scan) is done between requests
        self.inline = False

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
            missing = {fp for fp in first_users if fp not in d.by_first_user}
            if d.order:
                # a continued session's file may be any file: look for it (newest first) a while;
                # a new session's file is among the newest, which the first step reads
                wait = INDEX_WAIT_S if missing and not fresh and not self.inline else INDEX_STEP_S
                self._index(d, fmt, missing, wait)
                if d.order:
                    self._unindexed[folder] = (d, fmt)
            if missing and d.waiting:
                self._recheck_waiting(d, fmt)
        wanted: dict[str, bool] = {}  # path -> filter on cwd?
        for fp in first_users:
            for path in d.by_first_user.get(fp, ()):
                wanted[path] = cwd is not None
        for sid in ids:
            if sid in d.by_id:
                wanted[d.by_id[sid]] = False
        for p in paths:
            if p in d.files:
                wanted[p] = False
        out = []
        for path in sorted(wanted):
            f = d.files[path]
            if not self._refresh_tail(f, fmt):
                self._forget(d, path)
                continue
            if wanted[path] and f.cwd is not None and f.cwd != cwd:
                continue
            out.append(self._snapshot(f))
        return out

    def name_now(self, path: str, fmt: RecordFormat, st: os.stat_result | None = None) -> tuple[bool, str | None]:
        """A known file's latest name, after reading what was appended to it: (known, name).
        (False, None) when the file was never read or is gone. The memo's check, at every request
        whose session file grew: no listing, no snapshot. With `st`, the file's stat just taken by
        its path: the file is then read through an fd kept open for it (one pread)."""
        d = self._dirs.get(os.path.dirname(path))
        f = d.files.get(path) if d is not None else None
        if f is None:
            return False, None
        if st is None or not stat.S_ISREG(st.st_mode):
            known = self._refresh_tail(f, fmt)
        else:
            fd = self._kept_fd(path, st.st_ino)
            known = fd is not None and self._read_tail(fd, f, fmt, st)
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
            fd, st = open_regular(path)
            if fd is None:
                return None
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
            for path in [p for p in d.files if p not in entries]:
                self._forget(d, path)
            new = entries.keys() - d.files.keys()
            for path in new:
                f = d.files[path] = _FileState(path, id_from_name(path), mtime=entries[path])
                d.by_id[f.id] = path
                d.incomplete.add(path)
            if new:
                d.order = sorted(set(d.order) | new, key=lambda p: d.files[p].mtime, reverse=True)
        return d

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
            if not self._read_head(f, fmt):
                self._forget(d, path)
                continue
            if not self._head_read(d, f):
                # no user turn yet (a header-only file): out of the queue, so that the background
                # work ends; _recheck_waiting looks at it again when a request needs it
                d.waiting.append(path)
        # every file leaves `order` once read: the queue only shrinks
        d.order = d.order[done:]

    @staticmethod
    def _head_read(d: _DirState, f: _FileState) -> bool:
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
                if not self._read_head(f, fmt):
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

    def _read_head(self, f: _FileState, fmt: RecordFormat) -> bool:
        """Read the header and the first user turn; False if the file is gone or not regular."""
        fd, st = open_regular(f.path)
        if fd is None:
            return False
        try:
            if st.st_size == f.head_size:
                return True  # nothing new since the last try
            f.head_size = st.st_size
            for line, _end, *_ in _lines(fd, 0, HEAD_LIMIT, False):
                if line is None:
                    break
                record = _loads(line)
                if record is None:
                    continue
                if f.header_id is None and _matches(record, fmt.header):
                    sid = dotted(record, fmt.id)
                    if is_safe_id(sid):
                        f.header_id = normal_id(sid)
                    f.created = _parse_time(dotted(record, fmt.created)) if fmt.created else None
                    cwd = dotted(record, fmt.cwd) if fmt.cwd else None
                    f.cwd = cwd if isinstance(cwd, str) else None
                    parent = dotted(record, fmt.parent) if fmt.parent else None
                    f.parent = parent if isinstance(parent, str) else None
                if _matches(record, fmt.user):
                    f.first_user = fingerprint(text_of(dotted(record, fmt.user_content)))
                    f.head_done = True
                    break
            if not f.head_done and st.st_size >= HEAD_LIMIT:
                f.head_done = True  # give up: no first user turn near the start
            if f.created is None:
                f.created = st.st_mtime
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def _refresh_tail(self, f: _FileState, fmt: RecordFormat) -> bool:
        """Count answered turns and find the latest name in what was appended since the last look.

        At most TAIL_BUDGET bytes are read per call; a file with more to read is left `behind`, for
        catch_up() to finish between requests. The latest name of a large file is found at once by
        reading backwards from its end."""
        fd, st = open_regular(f.path)
        if fd is None:
            return False
        try:
            return self._read_tail(fd, f, fmt, st)
        finally:
            os.close(fd)

    def _read_tail(self, fd: int, f: _FileState, fmt: RecordFormat, st: os.stat_result) -> bool:
        try:
            if st.st_size < f.offset or (f.ino and st.st_ino != f.ino):
                # truncated or replaced: start over
                f.offset, f.n_assistant, f.name, f.skipping, f.size, f.name_at = 0, 0, None, False, -1, -1
            f.ino = st.st_ino
            f.mtime = st.st_mtime
            if st.st_size == f.size:
                return True
            if f.size < 0 and st.st_size - f.offset > TAIL_BUDGET and fmt.name is not None and not self.inline:
                self._latest_name(fd, f, fmt, st.st_size)
            f.size = st.st_size
            self._scan(fd, f, fmt)
            return True
        except OSError:
            return False

    def _scan(self, fd: int, f: _FileState, fmt: RecordFormat) -> None:
        """Count assistant turns and find name records from f.offset on, a chunk at a time: markers
        are counted with bytes.count, and only lines holding a name marker are parsed."""
        end = min(f.size, f.offset + (INLINE_TAIL_BUDGET if self.inline else TAIL_BUDGET))
        pos = f.offset
        at_end = False  # nothing more to read until the file grows: not behind
        while pos < end:
            data = os.pread(fd, min(CHUNK, end - pos), pos)
            if not data:
                at_end = True  # shorter than its stat said
                break
            nl = data.rfind(b"\n")
            if nl < 0:
                if len(data) < CHUNK:
                    # the last line is still being written (or was left so by a crash), or the
                    # budget ends mid-line: only the budget leaves the file behind
                    at_end = pos + len(data) >= f.size
                    break
                f.n_assistant += _count_turns(data, fmt)  # part of a line longer than a chunk
                f.skipping = True
                pos += len(data)
                continue
            block = data[: nl + 1]
            if f.skipping:  # the rest of an over-long line: count it, parse nothing in it
                cut = block.find(b"\n") + 1
                f.n_assistant += _count_turns(block[:cut], fmt)
                block, pos, f.skipping = block[cut:], pos + cut, False
            f.n_assistant += _count_turns(block, fmt)
            if fmt.name is not None and fmt.name_marker in block:
                self._names_in(f, fmt, block, pos)
            pos += len(block)
        f.offset = pos
        if f.offset < f.size and not at_end:
            self._behind[f.path] = (f, fmt)
        else:
            self._behind.pop(f.path, None)

    @staticmethod
    def _names_in(f: _FileState, fmt: RecordFormat, block: bytes, base: int) -> None:
        at = block.find(fmt.name_marker)
        while at >= 0:
            start = block.rfind(b"\n", 0, at) + 1
            stop = block.find(b"\n", at)
            if base + stop > f.name_at and stop - start <= MAX_LINE:
                record = _loads(block[start:stop])
                if record is not None and _matches(record, fmt.name):
                    name = dotted(record, fmt.name_field) if fmt.name_field else None
                    if isinstance(name, str):
                        f.name = clean_name(name)
            at = block.find(fmt.name_marker, stop)

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
        fd, _ = open_regular(path)
        if fd is None:
            self._behind.pop(path, None)
            return bool(self._behind)
        try:
            self._scan(fd, f, fmt)
        except OSError:
            self._behind.pop(path, None)
        finally:
            os.close(fd)
        return bool(self._behind)

    def _latest_name(self, fd: int, f: _FileState, fmt: RecordFormat, size: int) -> None:
        """Read backwards from the end for the last name record (at most NAME_SCAN_LIMIT bytes)."""
        pos = size
        carry = b""
        while pos > 0 and size - pos < NAME_SCAN_LIMIT:
            start = max(0, pos - CHUNK)
            data = os.pread(fd, pos - start, start) + carry
            lines = data.split(b"\n")
            # the first piece may be a partial line unless we are at the file's start
            carry = lines[0] if start > 0 else b""
            complete = lines[1:] if start > 0 else lines
            offset = start + len(lines[0]) + 1 if start > 0 else 0
            found = None
            for line in complete:
                if fmt.name_marker in line:
                    record = _loads(line)
                    if record is not None and _matches(record, fmt.name):
                        found = (record, offset)
                offset += len(line) + 1
            if found is not None:
                name = dotted(found[0], fmt.name_field) if fmt.name_field else None
                if isinstance(name, str):
                    f.name, f.name_at = clean_name(name), found[1]
                return
            if len(carry) > MAX_LINE:
                carry = b""
            pos = start

    @staticmethod
    def _snapshot(f: _FileState) -> SessionFile:
        return SessionFile(
            path=f.path,
            id=f.header_id or f.id,
            created=f.created if f.created is not None else f.mtime,
            mtime=f.mtime,
            first_user=f.first_user,
            n_assistant=f.n_assistant,
            name=f.name,
            cwd=f.cwd,
            parent=f.parent,
        )


def _count_turns(block: bytes, fmt: RecordFormat) -> int:
    """Answered assistant turns in whole lines: marker counts, less the lines also marked as
    failed (errors, aborts)."""
    n = sum(block.count(m) for m in fmt.assistant)
    if n:
        for bad in fmt.assistant_not:
            at = block.find(bad)
            while at >= 0:
                start = block.rfind(b"\n", 0, at) + 1
                stop = block.find(b"\n", at)
                line = block[start:stop if stop >= 0 else len(block)]
                if any(m in line for m in fmt.assistant):
                    n -= 1
                at = block.find(bad, stop if stop >= 0 else len(block))
    return n


def _loads(line: bytes) -> dict | None:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None
