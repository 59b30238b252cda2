"""Which processes hold a socket: found by their fd links in /proc/<pid>/fd.

There is no index from a socket to its processes, so the search is ordered to end early: the
processes that owned client sockets lately first, then from the newest pid down. A client is
usually either an agent already seen or a process that just started.
"""

from __future__ import annotations

import threading

from . import procfs

RECENT_MAX = 64


class RecentOwners:
    """The processes that owned client sockets lately, the latest first. Lookups run on several
    executor threads: the list is only changed under the lock."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.lock = threading.Lock()

    def listed(self) -> list[int]:
        with self.lock:
            return list(self.pids)

    def remember(self, pid: int) -> None:
        with self.lock:
            if pid in self.pids:
                self.pids.remove(pid)
            self.pids.insert(0, pid)
            del self.pids[RECENT_MAX:]


def holders(inode: int, uid: int, recent: RecentOwners) -> dict[int, int]:
    """{pid: fd} of the processes of user `uid` that hold socket `inode`: the first one found, its
    parent if the parent holds it too, and its children that hold it (a fork that shares the
    connection, before or after the holder was found)."""
    target = f"socket:[{inode}]"
    first = _first_holder(target, uid, recent)
    if first is None:
        return {}
    holder, fd = first
    recent.remember(holder)
    return _with_sharers(holder, fd, target)


def _first_holder(target: str, uid: int, recent: RecentOwners) -> tuple[int, int] | None:
    """(pid, fd) of the first process found holding `target`: the recent owners first, then the
    processes of `uid` from the newest pid down."""
    looked_at = recent.listed()
    for pid in looked_at:
        fd = procfs.fd_of(pid, target)
        if fd is not None:
            return pid, fd
    seen = set(looked_at)
    try:
        pids = sorted(procfs.pids(), reverse=True)
    except OSError:
        return None
    for pid in pids:
        if pid in seen:
            continue
        fd = procfs.fd_if_owned(pid, uid, target)
        if fd is not None:
            return pid, fd
    return None


def _with_sharers(holder: int, fd: int, target: str) -> dict[int, int]:
    """{pid: fd} of the holder, its parent if the parent holds `target` too, and its children
    that share it."""
    found = {holder: fd}
    parent = procfs.ppid(holder)
    if parent and parent > 1:
        parent_fd = procfs.fd_of(parent, target)
        if parent_fd is not None:
            found[parent] = parent_fd
    for child in procfs.children(holder):
        # a fork copies the descriptor table: a child sharing the socket has it at the same number
        if child not in found and procfs.holds_at(child, fd, target):
            found[child] = fd
    return found
