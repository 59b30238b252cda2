"""One JSONL session file: its head (header and first user turn), its tail read in budgets
(answered turns, the latest name), and what a line, a name and a file name mean. No folder here:
jsonl_store.py keeps the folders, the index and the background work."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime

from ..jsontext import dotted
from .conversation import fingerprint, text_of
from .files import open_regular
from .formats import ANY, RecordFormat
from .ids import UUID_RE, is_safe_id, normal_id
from .model import SessionFile

_ID_AT_END = re.compile(rf"({UUID_RE})$")

MAX_LINE = 8 << 20  # a longer line is skipped, not parsed
HEAD_LIMIT = 16 << 20  # how far to look for the header and the first user turn
CHUNK = 1 << 20
NAME_SCAN_LIMIT = 64 << 20  # how far back from a large file's end to look for its latest name


@dataclass
class FileState:
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


def parse_time(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def lines(fd: int, offset: int, limit: int, skipping: bool):
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


def matches(record: dict, conditions) -> bool:
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


def read_head(f: FileState, fmt: RecordFormat) -> bool:
    """Read the header and the first user turn; False if the file is gone or not regular."""
    opened = open_regular(f.path)
    if opened is None:
        return False
    fd, st = opened
    try:
        if st.st_size == f.head_size:
            return True  # nothing new since the last try
        f.head_size = st.st_size
        for line, _end, *_ in lines(fd, 0, HEAD_LIMIT, False):
            if line is None:
                break
            record = loads(line)
            if record is None:
                continue
            if f.header_id is None and matches(record, fmt.header):
                sid = dotted(record, fmt.id)
                if is_safe_id(sid):
                    f.header_id = normal_id(sid)
                f.created = parse_time(dotted(record, fmt.created)) if fmt.created else None
                cwd = dotted(record, fmt.cwd) if fmt.cwd else None
                f.cwd = cwd if isinstance(cwd, str) else None
                parent = dotted(record, fmt.parent) if fmt.parent else None
                f.parent = parent if isinstance(parent, str) else None
            if matches(record, fmt.user):
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


def scan(fd: int, f: FileState, fmt: RecordFormat, budget: int) -> bool:
    """Count assistant turns and find name records from f.offset on, a chunk at a time: markers
    are counted with bytes.count, and only lines holding a name marker are parsed. At most `budget`
    bytes are read; True when the file has more to read (it is "behind")."""
    end = min(f.size, f.offset + budget)
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
            f.n_assistant += count_turns(data, fmt)  # part of a line longer than a chunk
            f.skipping = True
            pos += len(data)
            continue
        block = data[: nl + 1]
        if f.skipping:  # the rest of an over-long line: count it, parse nothing in it
            cut = block.find(b"\n") + 1
            f.n_assistant += count_turns(block[:cut], fmt)
            block, pos, f.skipping = block[cut:], pos + cut, False
        f.n_assistant += count_turns(block, fmt)
        if fmt.name is not None and fmt.name_marker in block:
            names_in(f, fmt, block, pos)
        pos += len(block)
    f.offset = pos
    return f.offset < f.size and not at_end


def names_in(f: FileState, fmt: RecordFormat, block: bytes, base: int) -> None:
    at = block.find(fmt.name_marker)
    while at >= 0:
        start = block.rfind(b"\n", 0, at) + 1
        stop = block.find(b"\n", at)
        if base + stop > f.name_at and stop - start <= MAX_LINE:
            record = loads(block[start:stop])
            if record is not None and matches(record, fmt.name):
                name = dotted(record, fmt.name_field) if fmt.name_field else None
                if isinstance(name, str):
                    f.name = clean_name(name)
        at = block.find(fmt.name_marker, stop)


def latest_name(fd: int, f: FileState, fmt: RecordFormat, size: int) -> None:
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
                record = loads(line)
                if record is not None and matches(record, fmt.name):
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


def snapshot(f: FileState) -> SessionFile:
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


def count_turns(block: bytes, fmt: RecordFormat) -> int:
    """Answered assistant turns in whole lines: marker counts, less the lines also marked as
    failed (errors, aborts)."""
    n = sum(block.count(m) for m in fmt.assistant)
    if n:
        for bad in fmt.assistant_not:
            at = block.find(bad)
            while at >= 0:
                start = block.rfind(b"\n", 0, at) + 1
                stop = block.find(b"\n", at)
                line = block[start : stop if stop >= 0 else len(block)]
                if any(m in line for m in fmt.assistant):
                    n -= 1
                at = block.find(bad, stop if stop >= 0 else len(block))
    return n


def loads(line: bytes) -> dict | None:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None
