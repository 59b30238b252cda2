"""`ProcessTable`: from a client connection's addresses to the local process behind it, and the
check, on each later request, that it is still that process.

The socket is found by its addresses (netlink.py, else procnet.py), its holders by their fd
links (holders.py), the process read as a snapshot (snapshot.py), and the socket watched for
forks (forks.py). The table owns the state those keep between calls; the addon makes one (addon.py)
and passes it to its connections, the status probe and the finder; a test builds its own.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import sys
import time
from collections.abc import Callable

from ..model import Process
from . import netlink, procnet
from .forks import ForkWatch
from .holders import RecentOwners, holders
from .netlink import NetlinkHealth, NetlinkUnavailable
from .snapshot import Snapshots


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(str(host).split("%", 1)[0])


class ProcessTable:
    """Lookups and rechecks run on several executor threads at once: each part of the state
    changes only under its own lock."""

    def __init__(self, *, use_netlink: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.use_netlink = use_netlink  # False: never try netlink (tests, odd platforms)
        self.netlink = NetlinkHealth(clock)
        self.recent = RecentOwners()
        self.forks = ForkWatch()
        self.snapshots = Snapshots()

    def socket_owner(self, peer: tuple, local: tuple) -> tuple[int, int] | None:
        """(inode, uid) of the client-side socket: local address `peer`, remote address `local`."""
        try:
            peer_ip, local_ip = _ip(peer[0]), _ip(local[0])
            peer_port, local_port = int(peer[1]), int(local[1])
        except (ValueError, IndexError, TypeError):
            return None
        if isinstance(peer_ip, ipaddress.IPv6Address) and peer_ip.ipv4_mapped:
            peer_ip = peer_ip.ipv4_mapped
        if isinstance(local_ip, ipaddress.IPv6Address) and local_ip.ipv4_mapped:
            local_ip = local_ip.ipv4_mapped
        if peer_ip.version != local_ip.version:
            return None
        health = self.netlink
        if self.use_netlink and health.usable():
            try:
                found = netlink.owner(peer_ip, peer_port, local_ip, local_port)
            except NetlinkUnavailable as e:
                health.failed(e.unusable)  # this time, and maybe for a while: read /proc/net
            else:
                if found is not None or health.trusted:
                    health.answered(found is not None)
                    return found
                # "no such socket" from a netlink that has never found one: ask /proc/net
                found = procnet.owner(peer_ip, peer_port, local_ip, local_port)
                if found is not None:
                    health.failed(unusable=True)  # it says ENOENT for sockets that exist
                else:
                    health.answered(False)
                return found
        return procnet.owner(peer_ip, peer_port, local_ip, local_port)

    def holders(self, inode: int, uid: int) -> dict[int, int]:
        """{pid: fd} of the processes of user `uid` that hold socket `inode` (see holders.py)."""
        return holders(inode, uid, self.recent)

    def read_process(self, pid: int) -> Process | None:
        """A snapshot of a process, or None if it is gone or not readable."""
        return self.snapshots.read(pid)

    def alive(self, process_key: str) -> bool:
        """Is the process of this key (boot:pid:start) still running?"""
        return self.snapshots.alive(process_key)

    def lookup(self, peer: tuple, local: tuple) -> Process | None:
        """The local process of the proxy's own user behind a client connection, or None."""
        if sys.platform != "linux" or not peer or not local:
            return None
        mark = self.forks.newest_pid()  # before the search: a fork from now on is seen by `recheck`
        owner = self.socket_owner(peer, local)
        if owner is None:
            return None
        inode, uid = owner
        if uid != os.getuid():
            return None
        found = self.holders(inode, uid)
        if not found:
            return None
        process = self.snapshots.read(min(found))
        if process is None or process.uid != os.getuid():
            return None
        self.forks.watch(inode, mark, found)
        # a socket shared by several processes: whose session it carries cannot be told
        return dataclasses.replace(process, inode=inode, shared=len(found) > 1)

    def recheck(self, process: Process) -> Process | None:
        """The process behind the connection now, for the next request on it:

        - the same snapshot if nothing changed;
        - a fresh one if it exec'd into another program or changed folder;
        - the same process marked `shared` once a child forked after the lookup shares the socket
          (and unmarked again when it is alone again);
        - a snapshot of the child if the child is left alone with the socket (the parent closed
          its copy or exited);
        - None if no process of the proxy's user holds the socket any more.

        Cheap while no process was made since the last check: the program check and one small
        read."""
        snapshots, forks = self.snapshots, self.forks
        if not process.inode:
            return snapshots.recheck_program(process)
        now = forks.newest_pid()
        if now is None:
            return snapshots.recheck_program(process)  # no /proc/loadavg: forks cannot be followed
        entry = forks.watched_as(process.inode)
        if entry is not None and entry[0] == now and not process.shared:
            return snapshots.recheck_program(process)  # no new process: the holders are the same
        found = forks.holders_now(process.inode, process.uid, entry, now, self.recent)
        forks.watch(process.inode, now, found)
        if not found:
            return None
        shared = len(found) > 1
        if process.pid in found:
            current = snapshots.recheck_program(process)
        else:
            current = snapshots.read(min(found))
            if current is not None and current.uid != process.uid:
                current = None
        if current is None:
            return None
        if current.inode != process.inode or current.shared != shared:
            current = dataclasses.replace(current, inode=process.inode, shared=shared)
        return current
