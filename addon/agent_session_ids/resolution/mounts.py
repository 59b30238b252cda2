"""I/O adapter: is a path on a local filesystem? (A stat on a dead network mount can hang.)"""

from __future__ import annotations

import time

NETWORK_TYPES = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "afs", "davfs",
                 "sshfs", "virtiofs", "gfs2", "ocfs2", "beegfs", "gpfs", "orangefs"}
REREAD_S = 30.0

_mounts: list[tuple[str, str]] = []  # (mount point, fs type), longest first
_read_at = -REREAD_S
_folder_types: dict[str, str | None] = {}  # folder -> its fs type, for the mount table read at _read_at


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _load() -> None:
    global _mounts, _read_at
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
    mounts.sort(key=lambda m: len(m[0]), reverse=True)
    _mounts, _read_at = mounts, time.monotonic()
    _folder_types.clear()


def fs_type(path: str) -> str | None:
    if time.monotonic() - _read_at > REREAD_S:
        _load()
    try:
        return _folder_types[path]  # asked for the same few folders at every request
    except KeyError:
        pass
    if len(_folder_types) >= 4096:
        _folder_types.clear()
    kind = _folder_types[path] = _mount_type(path)
    return kind


def _mount_type(path: str) -> str | None:
    for point, kind in _mounts:
        if path == point or path.startswith(point.rstrip("/") + "/"):
            return kind
    return None


def is_local(path: str) -> bool:
    kind = fs_type(path)
    return kind is not None and kind not in NETWORK_TYPES and not kind.startswith("fuse")
