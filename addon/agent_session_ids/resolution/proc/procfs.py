"""Thin readers of /proc/<pid>: its stat line, its descriptors, its parent and its children.

No state: each call reads /proc once and answers None (or nothing) when the process is gone or
not readable. The other modules of the package build on these.
"""

from __future__ import annotations

import os

PPID = 1  # fields of stat_fields(): field 4 of the stat line, the parent's pid
START_TICKS = 19  # field 22, starttime: with the boot id, tells a reused pid apart


def stat_fields(stat: bytes) -> list[bytes]:
    """The fields of a /proc/<pid>/stat line after the command name (from field 3, the state).
    The name may hold spaces and parentheses: the line is split after its last ')'.
    Raises ValueError if there is none."""
    return stat[stat.rindex(b")") + 2 :].split()


def read_stat(pid: int) -> list[bytes]:
    """stat_fields of the process now. Raises OSError, ValueError."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return stat_fields(f.read())


def pids() -> list[int]:
    """The pids in /proc (processes, not threads). Raises OSError."""
    return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]


def fd_of(pid: int, target: str) -> int | None:
    """The number of a descriptor of process `pid` that is `target` (socket:[inode]), or None."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"{fd_dir}/{fd}") == target:
                return int(fd)
        except (OSError, ValueError):
            continue
    return None


def fd_if_owned(pid: int, uid: int, target: str) -> int | None:
    """The fd by which process `pid`, if it is user `uid`'s, holds `target`."""
    try:
        if os.stat(f"/proc/{pid}").st_uid != uid:
            return None
    except OSError:
        return None
    return fd_of(pid, target)


def holds_at(pid: int, fd: int, target: str) -> bool:
    """Is descriptor `fd` of process `pid` still `target`? One readlink."""
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}") == target
    except OSError:
        return False


def ppid(pid: int) -> int | None:
    try:
        return int(read_stat(pid)[PPID])
    except (OSError, ValueError, IndexError):
        return None


def children(pid: int) -> list[int]:
    """The children of a process, from each of its threads (the one that forked is the parent)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return out
