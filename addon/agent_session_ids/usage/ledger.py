"""The usage ledger: one JSON line per answered request that a rule rewrote.

Writing is append-only, one ``write()`` of whole lines at a time (those queued in the last
``LINGER`` seconds), on a thread of its own: a slow or dead disk never holds up a flow, and a busy
proxy wakes the writer a few times a second, not once per answer. A ``kill -9`` therefore leaves
at most one partial last line; the next writer starts on a fresh line, and the reader skips any line that is not whole
JSON. Past ``max_bytes`` the file is rotated: ``usage.jsonl`` becomes ``usage.jsonl.1``, the older
ones move up, and the oldest beyond ``keep`` is removed. Files are created with mode 0600.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from ..shown import safe_text

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (the status line starts without it)
if TYPE_CHECKING:
    from .ledger_line import LedgerLine

MAX_BYTES = 32 << 20  # per file: about 90,000 turns
KEEP = 3  # rotated files kept beside the current one
MAX_PENDING = 10_000  # lines queued for the writer; past it, lines are dropped (and it is said)
MAX_BATCH = 1000  # whole lines written with one write()
LINGER = 0.2  # seconds the writer waits for more lines before it writes (a kill -9 loses at most these)


class Clock:
    """Writes the ledger's ``ts`` for one writer of many records (the recorder): strftime once a
    second, not once a request."""

    def __init__(self) -> None:
        self._second: tuple[float, str] = (-1.0, "")  # the last whole second formatted, and its text

    def timestamp(self, epoch: float) -> str:
        """``2026-11-21T10:00:00.123Z``: the ledger's ``ts``."""
        frac, whole = math.modf(epoch)  # rounded as datetime.fromtimestamp rounds
        us = round(frac * 1e6)
        if us >= 1_000_000:
            whole, us = whole + 1, us - 1_000_000
        if us < 0:  # before 1970: no cache
            moment = datetime.fromtimestamp(epoch, tz=UTC)
            return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
        if whole != self._second[0]:
            self._second = (whole, datetime.fromtimestamp(whole, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S."))
        return f"{self._second[1]}{us // 1000:03d}Z"


def timestamp(epoch: float) -> str:
    """``2026-11-21T10:00:00.123Z``: the ledger's ``ts``, for one record (a writer of many keeps a Clock)."""
    return Clock().timestamp(epoch)


# made once: json.dumps with any option builds a new encoder at every call
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "), allow_nan=False)


def encode(record: dict | LedgerLine) -> bytes:
    """One ledger line. JSON never holds a raw newline, so a line is always one record. A lone
    surrogate (a client's `"\\ud800"`, which UTF-8 cannot hold) becomes U+FFFD."""
    text = _ENCODER.encode(record if isinstance(record, dict) else record.as_dict()) + "\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return safe_text(text).encode("utf-8")


class Ledger:
    """Appends records to ``path`` from a writer thread. ``on_error(key, message)`` is told about
    any failure (the record is then lost; the flow never is)."""

    def __init__(
        self,
        path: str,
        max_bytes: int = MAX_BYTES,
        keep: int = KEEP,
        on_error: Callable[[str, str], None] | None = None,
    ) -> None:
        import queue  # here, not at the top: the readers (the status line) start without them
        import threading

        self._empty = queue.Empty
        self._thread_class = threading.Thread
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.on_error = on_error or (lambda key, message: None)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self.written = 0
        self.dropped = 0

    # -- the caller's side (the event loop) --------------------------------------------------------

    def append(self, record: dict | LedgerLine) -> bool:
        try:
            line = encode(record)
        except (TypeError, ValueError) as e:
            self.on_error("ledger-encode", f"a usage record could not be written as JSON: {e}")
            return False
        with self._lock:
            if self._pending >= MAX_PENDING:
                self.dropped += 1
                self.on_error("ledger-full", f"the usage ledger {self.path} falls behind; records are dropped")
                return False
            self._pending += 1
            if self._thread is None:
                self._thread = self._thread_class(target=self._run, name="session-ids-ledger", daemon=True)
                self._thread.start()
        self._queue.put(line)
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (waiting at most ``timeout``), then stop."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)
        else:
            self._close_fd()

    # -- the writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            lines = [self._queue.get()]
            if lines[0] is not None:
                time.sleep(LINGER)  # let a busy proxy's lines gather: one wake-up and write for many
            while len(lines) < MAX_BATCH:  # what queued meanwhile goes in the same write
                try:
                    lines.append(self._queue.get_nowait())
                except self._empty:
                    break
            if None in lines:
                stop = True
                lines = lines[: lines.index(None)]
            if lines:
                try:
                    self._write(lines)
                    self.written += len(lines)
                except OSError as e:
                    self.on_error(f"ledger-{e.errno}", f"cannot write the usage ledger {self.path}: {e}")
                    self._close_fd()
                finally:
                    with self._lock:
                        self._pending -= len(lines)
        self._close_fd()

    def _open(self) -> int:
        from ..private_files import folder_for, open_private

        folder_for(self.path)
        # 0600, never through a symlink, only a regular file: a FIFO at the path must not hang the writer
        fd = open_private(self.path)
        try:
            if os.fstat(fd).st_size > 0 and not _ends_with_newline(self.path):
                os.write(fd, b"\n")  # a partial last line (a kill -9) stays alone on its line
        except OSError:
            os.close(fd)
            raise
        return fd

    def _write(self, lines: list[bytes]) -> None:
        if self._fd is not None and _replaced(self._fd, self.path):
            self._close_fd()  # rotated or removed by someone else: follow the name
        if self._fd is None:
            self._fd = self._open()
        size = os.fstat(self._fd).st_size
        batch: list[bytes] = []
        for line in lines:
            if size and size + len(line) > self.max_bytes:  # the file is full: rotate between lines
                self._write_all(b"".join(batch))
                batch = []
                self._rotate()
                self._fd = self._open()
                size = os.fstat(self._fd).st_size
            batch.append(line)
            size += len(line)
        self._write_all(b"".join(batch))

    def _write_all(self, data: bytes) -> None:
        fd = self._fd
        assert fd is not None  # opened by _write
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]

    def _rotate(self) -> None:
        self._close_fd()
        for n in range(self.keep, 0, -1):
            older = f"{self.path}.{n}"
            if n == self.keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(older)
            newer = f"{self.path}.{n - 1}" if n > 1 else self.path
            with contextlib.suppress(FileNotFoundError):
                os.replace(newer, older)

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _replaced(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino)


# -- reading -------------------------------------------------------------------------------------

DEFAULT_PATH = os.path.join("~", ".mitmproxy", "agent-session-ids", "usage.jsonl")


def path_of(given: str | None) -> str:
    """The ledger a reader reads: the one given, else $AGENT_SESSION_IDS_USAGE, else the default."""
    return os.path.expanduser(given or os.environ.get("AGENT_SESSION_IDS_USAGE") or DEFAULT_PATH)


def files(path: str, keep: int = KEEP) -> list[str]:
    """The ledger's files that exist, oldest first."""
    names = [f"{path}.{n}" for n in range(max(keep, 9), 0, -1)] + [path]
    return [name for name in names if os.path.isfile(name)]


# -- the typed reader: each field against what the writer (recorder.py) writes, once, here ------------

MAX_COUNT = 10**12  # tokens: as parse.py reads them
MAX_COST = 1e6  # USD per request: as parse.py reads it
# a ts whose year (UTC) lies here converts to an epoch and back (`timestamp`), and to a date in every
# time zone: datetime holds years 1 to 9999, and some platforms convert no epoch before 1970
YEARS = (1970, 9998)


class Bad(Exception):
    """A field of the wrong type or range."""


def _text(value) -> str:
    if not isinstance(value, str):
        raise Bad
    return safe_text(value)  # a lone surrogate ("\ud800") cannot be printed or written as UTF-8


def _optional_text(value) -> str | None:
    return None if value is None else _text(value)


def _count(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_COUNT:
        raise Bad
    return value


def _cost(value) -> float:
    # compared before float(): 10**400 is an int that float() cannot hold
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < MAX_COST:
        raise Bad  # NaN fails the comparison too
    return float(value)


def _status(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1000:
        raise Bad
    return value


def _flag(value) -> bool:
    if not isinstance(value, bool):
        raise Bad
    return value


def _changes(value) -> list[dict]:
    """sent_changed: [{target, from, to}], `from` and `to` a text or null."""
    if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
        raise Bad
    return [
        {"target": _text(c.get("target")), "from": _optional_text(c.get("from")), "to": _optional_text(c.get("to"))}
        for c in value
    ]


# each field the writer writes -> its check, which returns the value as the views read it or raises Bad
FIELDS: dict[str, Callable] = {
    "label": _text,
    "agent": _text,
    "cwd": _text,
    "subagent": _text,
    "subagent_kind": _text,
    "parent": _text,
    "root": _text,
    "rule": _text,
    "host": _text,
    "model": _text,
    "served_model": _text,
    "provider": _text,
    "sent_changed": _changes,
    "status": _status,
    "stream": _flag,
    "input_tokens": _count,
    "cache_read_tokens": _count,
    "cache_write_tokens": _count,
    "output_tokens": _count,
    "cost": _cost,
}


def epoch_of(value) -> float | None:
    """Epoch seconds of a ledger ``ts`` that every view can show in any time zone; None if not one."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        if not YEARS[0] <= moment.astimezone(UTC).year <= YEARS[1]:
            return None
        return moment.timestamp()
    except (ValueError, OverflowError):
        return None


parse_ts = epoch_of


class Tally:
    """What a reader passed over: whole lines (not a record) and fields (of the wrong type, left out)."""

    def __init__(self) -> None:
        self.skipped = 0
        self.fields = 0

    def said(self) -> str:
        """`3 unreadable ledger lines skipped, 1 wrong-typed ledger fields skipped`, as every view says
        it; "" when nothing was."""
        parts = [f"{self.skipped} unreadable ledger lines skipped"] if self.skipped else []
        if self.fields:
            parts.append(f"{self.fields} wrong-typed ledger fields skipped")
        return ", ".join(parts)


def record_of(line: bytes, tally: Tally | None = None) -> dict | None:
    """One whole ledger line as its record, with ``_epoch``; None (counted in `tally`) if it is not
    one. A line is a record when it is a JSON object with a ``ts`` every view can place and a
    ``session`` that is text; any other field of the wrong type or range is left out (as if the
    answer had not given it: the views then show "-" or mark the cost "*"), and counted."""
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        data = None
    epoch = epoch_of(data.get("ts")) if isinstance(data, dict) else None
    session = data.get("session") if epoch is not None else None
    if not isinstance(session, str) or not session:
        if tally is not None:
            tally.skipped += 1
        return None
    data["session"], data["_epoch"] = safe_text(session), epoch
    for key in FIELDS.keys() & data.keys():  # a field no view reads (a newer writer's) is kept as it is
        try:
            data[key] = FIELDS[key](data[key])
        except Bad:
            if data.pop(key) is not None and tally is not None:  # null: not given, as the writer leaves it out
                tally.fields += 1
    return data


class Reading(Tally):
    """Records read from a ledger; `skipped` lines (partial or not a record) and wrong-typed `fields`."""

    def records(self, path: str, since: float | None = None, until: float | None = None) -> Iterator[dict]:
        for name in files(path):
            with open(name, "rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):  # the partial last line of a killed writer
                        if line.strip():
                            self.skipped += 1
                        continue
                    if not line.strip():
                        continue
                    record = record_of(line, self)
                    if record is None:
                        continue
                    ts = record["_epoch"]
                    if (since is not None and ts < since) or (until is not None and ts > until):
                        continue
                    yield record


def read(path: str, since: float | None = None, until: float | None = None) -> tuple[list[dict], int]:
    """(records in file order, number of lines skipped); `Reading` also counts wrong-typed fields."""
    reading = Reading()
    records = list(reading.records(path, since, until))
    return records, reading.skipped
