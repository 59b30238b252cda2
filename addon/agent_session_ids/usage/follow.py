"""Following the ledger as the proxy appends to it, for `top`: each poll reads only the bytes
appended since the last one, and follows a rotation (the file it had open is read to its end,
then the new one from its start), and a truncation in place: the bytes just before where the
last poll ended are read again (one small pread), so a file emptied and written again to the same
size or more is read from its start, not from the middle of its new lines. A first poll with a
window starts where the window does: the ledger is in time order, so the start is found by
bisection, not by reading what lies before it.
"""

from __future__ import annotations

import os
import stat

from . import ledger

CHUNK = 1 << 20  # bytes read per call
# a line's ts is its request's start, written when the answer ends: a long stream lands late
LATE_S = 15 * 60
PROBE = 4096  # bytes read to find one whole line while bisecting
MARK = 1024  # bytes before the offset kept to notice a rewrite in place (two lines or more: a ts among them)


class Follower(ledger.Tally):
    """`skipped`: lines that were not records; `fields`: wrong-typed fields left out."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._fd: int | None = None
        self._id: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._partial = b""
        self._mark = b""  # the bytes just before the offset, as read
        self._started = False
        # after the first poll: each file's part before where that poll began, (name, end): what a
        # reader of whole sessions still has to search (lookup.records_naming)
        self.history: list[tuple[str, int | None]] = []

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd, self._id = None, None

    def poll(self, since: float | None = None) -> list[dict]:
        """The records appended since the last poll (on the first, those since `since`)."""
        out: list[dict] = []
        if not self._started:
            self._started = True
            for name in ledger.files(self.path)[:-1]:  # the rotated files, oldest first
                if since is None or _mtime(name) >= since:
                    out += self._read_whole(name, since)
                else:
                    self.history.append((name, None))
            if not self._open(since):
                return out
        elif self._fd is None and not self._open(None):
            return out
        out += self._read_new()
        current = _file_id(self.path)
        if current != self._id:  # rotated or removed: the rest of the old file was read above
            self.close()
            self._partial, self._mark = b"", b""
            self.history = [(self._older(name), end) for name, end in self.history]
            if current is not None and self._open(None):
                out += self._read_new()
        return out

    def _older(self, name: str) -> str:
        """What a file of the ledger is called after one rotation."""
        if name == self.path:
            return f"{self.path}.1"
        number = name[len(self.path) + 1 :]
        return f"{self.path}.{int(number) + 1}" if number.isdigit() else name

    # -- reading ----------------------------------------------------------------------------------

    def _open(self, since: float | None) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return False
        self._fd, self._id = fd, (st.st_dev, st.st_ino)
        if since is not None:
            start = _start_of(fd, st.st_size, since - LATE_S)
            os.lseek(fd, start, os.SEEK_SET)
            self.history.append((self.path, start))
        return True

    def _read_new(self) -> list[dict]:
        fd = self._fd
        if fd is None:
            return []
        if self._rewritten(fd):  # truncated in place: what is there now is new, from its start
            os.lseek(fd, 0, os.SEEK_SET)
            self._partial, self._mark = b"", b""
            self.history = [(name, end) for name, end in self.history if name != self.path]
        out: list[dict] = []
        while True:
            data = os.read(fd, CHUNK)
            if not data:
                return out
            self._mark = (self._mark + data)[-MARK:]
            data, self._partial = self._partial + data, b""
            end = data.rfind(b"\n")
            if end < 0:
                self._partial = data
                continue
            self._partial = data[end + 1 :]
            out += self._records(data[: end + 1].splitlines())

    def _rewritten(self, fd: int) -> bool:
        """Shorter than where the last poll ended, or other bytes just before it."""
        offset = os.lseek(fd, 0, os.SEEK_CUR)
        if os.fstat(fd).st_size < offset:
            return True
        return bool(self._mark) and os.pread(fd, len(self._mark), offset - len(self._mark)) != self._mark

    def _read_whole(self, name: str, since: float | None) -> list[dict]:
        try:
            with open(name, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                start = _start_of(f.fileno(), size, since - LATE_S) if since is not None else 0
                self.history.append((name, start))
                f.seek(start)
                data = f.read()
        except OSError:
            return []
        if not data.endswith(b"\n"):  # a killed writer's partial last line
            data, tail = data.rsplit(b"\n", 1) if b"\n" in data else (b"", data)
            self.skipped += bool(tail.strip())
        return self._records(data.splitlines())

    def _records(self, lines: list[bytes]) -> list[dict]:
        out = []
        for line in lines:
            if not line.strip():
                continue
            record = ledger.record_of(line, self)
            if record is not None:
                out.append(record)
        return out


def _start_of(fd: int, size: int, since: float) -> int:
    """An offset at a line's start before which every line is older than `since` (bisection over
    the file's lines; a line that cannot be read counts as old)."""
    low, high = 0, size
    while high - low > PROBE:
        middle = (low + high) // 2
        at, epoch = _line_at(fd, middle)
        if at is None or at >= high:
            high = middle
        elif epoch is None or epoch < since:
            low = at
        else:
            high = middle
    return low


def _line_at(fd: int, offset: int) -> tuple[int | None, float | None]:
    """The first whole line starting after `offset`: (its offset, its epoch)."""
    data = os.pread(fd, PROBE * 4, offset)
    start = data.find(b"\n") + 1
    if start == 0:
        return None, None
    end = data.find(b"\n", start)
    if end < 0:
        return None, None
    record = ledger.record_of(data[start:end])
    return offset + start, record["_epoch"] if record else None


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0
