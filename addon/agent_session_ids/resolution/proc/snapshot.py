"""Snapshots of a process (`model.Process`), and the cheap check that one still holds.

A snapshot is read once per connection; each request then checks only that the process still
runs the same program in the same folder: a pread of its kept-open comm file and two readlinks.
A pid can be used again, so a snapshot is keyed by this boot's id, the pid and its start time.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading

from ..model import Process
from . import procfs

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
COMM_FDS_MAX = 64


class Snapshots:
    """Reads snapshots. Keeps this boot's facts, read once, and the comm files of a few recent
    processes open. Rechecks run on several executor threads: the open files change only under
    the lock."""

    def __init__(self) -> None:
        self._boot_time: float | None = None
        self._boot_id: str | None = None
        self._comm_fds: collections.OrderedDict[str, int] = collections.OrderedDict()  # key -> fd
        self._comm_lock = threading.Lock()

    def boot_time(self) -> float:
        if self._boot_time is None:
            with open("/proc/stat", "rb") as f:
                for line in f:
                    if line.startswith(b"btime "):
                        self._boot_time = float(line.split()[1])
                        break
                else:
                    self._boot_time = 0.0
        return self._boot_time

    def boot_id(self) -> str:
        if self._boot_id is None:
            try:
                with open("/proc/sys/kernel/random/boot_id") as f:
                    self._boot_id = f.read().strip()
            except OSError:
                self._boot_id = "unknown-boot"
        return self._boot_id

    def read(self, pid: int) -> Process | None:
        """A snapshot of a process, or None if it is gone or not readable."""
        base = f"/proc/{pid}"
        try:
            start = procfs.read_stat(pid)[procfs.START_TICKS]
            start_ticks = int(start)
            uid = os.stat(base).st_uid
            cwd = os.readlink(f"{base}/cwd")
            with open(f"{base}/comm", "rb") as f:
                comm = f.read().decode("utf-8", "replace").strip()
            with open(f"{base}/cmdline", "rb") as f:
                cmdline = tuple(a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a)
            with open(f"{base}/environ", "rb") as f:
                environ = {}
                for item in f.read().split(b"\0"):
                    k, sep, v = item.partition(b"=")
                    if sep:
                        environ[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
            try:
                exe = os.readlink(f"{base}/exe")
            except OSError:
                exe = ""
            # the start time again: a pid used again meanwhile would mix two processes
            if procfs.read_stat(pid)[procfs.START_TICKS] != start:
                return None
        except (OSError, ValueError, IndexError):
            return None
        return Process(
            pid=pid,
            start_ticks=start_ticks,
            started_at=self.boot_time() + start_ticks / CLK_TCK,
            boot_id=self.boot_id(),
            uid=uid,
            cwd=cwd,
            comm=comm,
            exe=exe,
            cmdline=cmdline,
            environ=environ,
        )

    def _comm_now(self, process: Process) -> str:
        """The process's name now, by one pread of its kept-open comm file. An fd of an ended
        process fails to read, and is not kept; one of a pid used again is under another key (its
        start time differs)."""
        key = process.key
        with self._comm_lock:
            fd = self._comm_fds.pop(key, None)
        if fd is None:
            fd = os.open(f"/proc/{process.pid}/comm", os.O_RDONLY | os.O_CLOEXEC)
        try:
            comm = os.pread(fd, 64, 0).decode("utf-8", "replace").strip()
        except OSError:
            os.close(fd)
            raise
        with self._comm_lock:
            if key in self._comm_fds:  # another thread kept one meanwhile
                os.close(fd)
            else:
                self._comm_fds[key] = fd
                while len(self._comm_fds) > COMM_FDS_MAX:
                    os.close(self._comm_fds.popitem(last=False)[1])
        return comm

    def recheck_program(self, process: Process) -> Process | None:
        """The same snapshot if the process still runs the same program in the same folder; a fresh
        one if it exec'd into another program or changed folder; None if it is gone."""
        base = f"/proc/{process.pid}"
        try:
            comm = self._comm_now(process)
            if (
                comm == process.comm
                and os.readlink(f"{base}/exe") == process.exe
                and os.readlink(f"{base}/cwd") == process.cwd
            ):
                return process
        except OSError:
            pass
        fresh = self.read(process.pid)
        if fresh is None or fresh.start_ticks != process.start_ticks or fresh.uid != process.uid:
            return None
        return dataclasses.replace(fresh, inode=process.inode, shared=process.shared)

    def alive(self, process_key: str) -> bool:
        """Is the process of this key (boot:pid:start) still running?"""
        try:
            boot, pid, start = process_key.rsplit(":", 2)
            if boot != self.boot_id():
                return False
            return procfs.read_stat(int(pid))[procfs.START_TICKS].decode() == start
        except (OSError, ValueError, IndexError):
            return False
