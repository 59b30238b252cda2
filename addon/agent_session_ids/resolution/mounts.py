"""I/O adapter: is a path on a local filesystem? (A stat on a dead network mount can hang.)"""

from __future__ import annotations

import time
from collections.abc import Callable

NETWORK_TYPES = {
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "9p",
    "ceph",
    "glusterfs",
    "lustre",
    "afs",
    "davfs",
    "sshfs",
    "virtiofs",
    "gfs2",
    "ocfs2",
    "beegfs",
    "gpfs",
    "orangefs",
}
REREAD_S = 30.0
MAX_FOLDERS = 4096  # folders whose fs type is remembered (asked for the same few at every request)


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def read_mountinfo() -> list[tuple[str, str]]:
    """This process's mounts: (mount point, fs type)."""
    mounts = []
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f.read().decode("utf-8", "replace").splitlines():
                left, _, right = line.partition(" - ")
                fields, rest = left.split(), right.split()
                if len(fields) >= 5 and rest:
                    mounts.append((_unescape(fields[4]), rest[0]))
    except OSError:
        mounts = []
    return mounts


class MountTable:
    """The mounts, read again every REREAD_S, and the fs type of each folder asked for."""

    def __init__(
        self, read: Callable[[], list[tuple[str, str]]] = read_mountinfo, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._read, self._clock = read, clock
        self._mounts: list[tuple[str, str]] = []  # (mount point, fs type), longest first
        self._read_at: float | None = None
        self._folder_types: dict[str, str | None] = {}  # folder -> its fs type, in the table read at _read_at

    def fs_type(self, path: str) -> str | None:
        now = self._clock()
        if self._read_at is None or now - self._read_at > REREAD_S:
            self._mounts = sorted(self._read(), key=lambda m: len(m[0]), reverse=True)
            self._read_at = now
            self._folder_types.clear()
        try:
            return self._folder_types[path]
        except KeyError:
            pass
        if len(self._folder_types) >= MAX_FOLDERS:
            self._folder_types.clear()
        kind = self._folder_types[path] = self._mount_type(path)
        return kind

    def is_local(self, path: str) -> bool:
        kind = self.fs_type(path)
        return kind is not None and kind not in NETWORK_TYPES and not kind.startswith("fuse")

    def _mount_type(self, path: str) -> str | None:
        for point, kind in self._mounts:
            if path == point or path.startswith(point.rstrip("/") + "/"):
                return kind
        return None
