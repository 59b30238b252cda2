"""I/O adapter: the resolver's bindings, persisted small and atomically (write, fsync, rename)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time

from ..private_files import folder_for
from .files import read_regular


class StateError(ValueError):
    """The state file exists but cannot be used (truncated, another version, the wrong shape)."""


def load(path: str) -> dict:
    """The saved state; {} if there is none. Raises StateError if there is one that is unusable."""
    try:  # non-blocking and regular files only: a FIFO at the path must not hang the proxy
        raw = read_regular(path, 64 << 20)
    except OSError as e:
        raise StateError(f"cannot read it: {e.strerror or e}") from None
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise StateError("it is not JSON (truncated?)") from None
    if not isinstance(data, dict):
        raise StateError(f"it holds a JSON {type(data).__name__}, not an object")
    if data.get("version") != 1:
        raise StateError(f"it is of version {data.get('version')!r}; this release reads version 1")
    for part in ("bound", "pending"):
        if not isinstance(data.get(part, {}), dict):
            raise StateError(f"its '{part}' is a {type(data[part]).__name__}, not an object")
    return data


def set_aside(path: str) -> str | None:
    """Move an unusable state file out of the way (kept for a look), so a fresh one replaces it."""
    aside = f"{path}.bad"
    try:
        os.replace(path, aside)
    except OSError:
        return None
    return aside


def remove_stale_temp_files(path: str, older_than_s: float = 60.0) -> None:
    """Temp files of writes cut short (a kill -9 between write and rename)."""
    folder = os.path.dirname(path) or "."
    try:
        names = [n for n in os.listdir(folder) if n.startswith(".state-")]
    except OSError:
        return
    now = time.time()
    for name in names:
        try:
            if now - os.stat(os.path.join(folder, name)).st_mtime > older_than_s:
                os.unlink(os.path.join(folder, name))
        except OSError:
            continue


def save(path: str, data: dict) -> None:
    """Replace the state file atomically; readable by the proxy's user only (0600)."""
    folder = os.path.dirname(path) or "."
    folder_for(path)  # 0700 when it is the addon's own folder, whoever made it first
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
