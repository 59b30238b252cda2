"""I/O adapter: the resolver's bindings, persisted small and atomically (write, fsync, rename)."""

from __future__ import annotations

import json
import os
import tempfile
import time


def load(path: str) -> dict:
    """The saved state, or {} if there is none or it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(64 << 20))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
