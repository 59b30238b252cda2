"""Forks after the lookup: who holds a socket now, cheaply, on every request.

A process that forks while it holds a client socket shares the socket with its child; the
child may then send on the connection from another folder, as another program, or alone once
the parent closed its copy or exited. A fork makes a new process, and every new process takes a
new pid: the newest pid, /proc/loadavg's last field, moves. So each socket that a lookup found
is watched by the newest pid at the time its holders were counted. While that stays the same,
no process was made since, nothing can have joined the holders, and the recheck of a request
is that of one process. When it moved, only the processes made since (their pids lie between
the two, in the cyclic pid order) are looked at, and the known holders are checked to still
hold the socket, each by the one descriptor number it had.

Not seen: a descriptor handed to a process that already ran (SCM_RIGHTS over a Unix socket,
pidfd_getfd); and a fork caught in the microseconds between taking its pid and appearing in
/proc, at the very moment of a check (a kernel race no cheap read closes).
"""

from __future__ import annotations

import collections
import os
import threading

from . import procfs
from .holders import RecentOwners, holders

WATCHED_MAX = 4096

# a watched socket: (the newest pid when its holders were counted, {pid: fd} of its holders)
Watched = tuple[int, dict[int, int]]


class ForkWatch:
    """The watched sockets, and the kept-open /proc/loadavg that gives the newest pid. Lookups and
    rechecks run on several executor threads: both change only under the lock."""

    def __init__(self) -> None:
        self.watched: collections.OrderedDict[int, Watched] = collections.OrderedDict()
        self.lock = threading.Lock()
        self._loadavg_fd: int | None = None
        self._pid_max: int | None = None

    def newest_pid(self) -> int | None:
        """The last pid the kernel gave out (in this pid namespace). /proc/loadavg is kept open and
        read again from its start: a read on the hot path of every request."""
        try:
            fd = self._loadavg_fd
            if fd is None:
                with self.lock:
                    if self._loadavg_fd is None:
                        self._loadavg_fd = os.open("/proc/loadavg", os.O_RDONLY | os.O_CLOEXEC)
                    fd = self._loadavg_fd
            return int(os.pread(fd, 128, 0).split()[4])
        except (OSError, ValueError, IndexError):
            self._loadavg_fd = None  # opened again next time
            try:
                with open("/proc/loadavg", "rb") as f:
                    return int(f.read().split()[4])
            except (OSError, ValueError, IndexError):
                return None

    def pid_max(self) -> int:
        if self._pid_max is None:
            try:
                with open("/proc/sys/kernel/pid_max", "rb") as f:
                    self._pid_max = int(f.read())
            except (OSError, ValueError):
                self._pid_max = 1 << 22
        return self._pid_max

    def watch(self, inode: int, mark: int | None, holders: dict[int, int]) -> None:
        if mark is None:
            return
        with self.lock:
            self.watched[inode] = (mark, dict(holders))
            self.watched.move_to_end(inode)
            while len(self.watched) > WATCHED_MAX:
                self.watched.popitem(last=False)

    def watched_as(self, inode: int) -> Watched | None:
        with self.lock:
            entry = self.watched.get(inode)
            if entry is not None:
                self.watched.move_to_end(inode)
            return entry

    def holders_now(
        self, inode: int, uid: int, entry: Watched | None, now: int, recent: RecentOwners
    ) -> dict[int, int]:
        """Who holds the socket now: the known holders that still do, and the processes made since
        the entry's mark that do. Without an entry (forgotten), a full search."""
        target = f"socket:[{inode}]"
        if entry is None:
            return holders(inode, uid, recent)
        mark, known = entry
        found = {}
        for pid, fd in known.items():
            if procfs.holds_at(pid, fd, target):
                found[pid] = fd
            else:
                again = procfs.fd_of(pid, target)  # it may have moved the socket to another number
                if again is not None:
                    found[pid] = again
        span = (now - mark) % self.pid_max()
        if span:
            pid_max = self.pid_max()
            try:
                entries = procfs.pids()
            except OSError:
                entries = []
            for pid in entries:
                if pid in found or not 0 < (pid - mark) % pid_max <= span:
                    continue
                new_fd = procfs.fd_if_owned(pid, uid, target)
                if new_fd is not None:
                    found[pid] = new_fd
        return found
