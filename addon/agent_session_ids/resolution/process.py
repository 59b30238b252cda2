"""I/O adapter: from a client connection's address to a snapshot of the local process behind it.

Linux only: the socket whose local address is the client's peer address and whose remote address
is the proxy's listening address is found in /proc/net/tcp{,6}; the process holding it is found
by its fd links. Only processes of the proxy's own user are read; anything else gives None, and
the caller falls back.

Lookups run on several executor threads at once: the module's shared state (recent owners, the
netlink back-off, the sockets being watched) is only changed under its locks.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import ipaddress
import os
import socket
import struct
import sys
import threading
import time

from .model import Process

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_boot_time: float | None = None
_boot_id: str | None = None


def boot_time() -> float:
    global _boot_time
    if _boot_time is None:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    _boot_time = float(line.split()[1])
                    break
            else:
                _boot_time = 0.0
    return _boot_time


def boot_id() -> str:
    global _boot_id
    if _boot_id is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                _boot_id = f.read().strip()
        except OSError:
            _boot_id = "unknown-boot"
    return _boot_id


def _hex_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bytes:
    """The address as /proc/net/tcp{,6} prints it: each 32-bit word in host byte order."""
    packed = ip.packed
    words = []
    for i in range(0, len(packed), 4):
        word = packed[i:i + 4]
        words.append((word[::-1] if sys.byteorder == "little" else word).hex().upper())
    return f"{''.join(words)}:{port:04X}".encode()


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(str(host).split("%", 1)[0])


_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_netlink_ok = True  # False: never try netlink (a switch for tests and odd platforms)

# errnos after which netlink cannot answer here at all (a sandbox, a seccomp filter, no sock_diag)
_NETLINK_UNUSABLE = frozenset({errno.EPERM, errno.EACCES, errno.EOPNOTSUPP, errno.EPROTONOSUPPORT,
                               errno.EAFNOSUPPORT, errno.ENOSYS, errno.EINVAL})
NETLINK_FAILURES_BEFORE_PAUSE = 3  # consecutive transient failures (timeouts) before netlink is paused
NETLINK_PAUSE_S = 10.0  # the first pause; each further pause doubles, up to NETLINK_PAUSE_MAX_S
NETLINK_PAUSE_MAX_S = 600.0  # also the pause after an error that says netlink cannot be used here
_clock = time.monotonic


class NetlinkUnavailable(Exception):
    """Netlink gave no answer this time. `unusable`: it cannot answer here at all."""

    def __init__(self, reason: str, unusable: bool = False) -> None:
        super().__init__(reason)
        self.unusable = unusable


class _NetlinkHealth:
    """When to use netlink: paused for a while (never for good) after several transient failures in
    a row, or after an error that says it cannot be used here; until one answer found a socket, a
    "no such socket" is checked against /proc/net (a kernel without inet_diag says ENOENT too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failures = 0  # transient failures in a row
        self.paused_until = 0.0
        self.pause = NETLINK_PAUSE_S
        self.trusted = False  # has netlink found a socket here?

    def usable(self) -> bool:
        with self._lock:
            return _clock() >= self.paused_until

    def answered(self, found: bool) -> None:
        with self._lock:
            self.failures = 0
            self.pause = NETLINK_PAUSE_S
            self.trusted = self.trusted or found

    def failed(self, unusable: bool) -> None:
        with self._lock:
            if unusable:
                self.failures = 0
                self.paused_until = _clock() + NETLINK_PAUSE_MAX_S
                return
            self.failures += 1
            if self.failures >= NETLINK_FAILURES_BEFORE_PAUSE:
                self.failures = 0
                self.paused_until = _clock() + self.pause
                self.pause = min(self.pause * 2, NETLINK_PAUSE_MAX_S)


_netlink = _NetlinkHealth()


def parse_netlink_reply(data: bytes) -> tuple[int, int] | None:
    """(inode, uid) from a SOCK_DIAG_BY_FAMILY reply to one exact query; None for NLMSG_ERROR
    ENOENT (no such socket). Raises NetlinkUnavailable for any other error, or a reply that is
    not one."""
    if len(data) < 16:
        raise NetlinkUnavailable(f"short netlink reply ({len(data)} bytes)")
    length, kind = struct.unpack_from("=IH", data, 0)
    if kind == _NLMSG_ERROR:
        if len(data) < 20:
            raise NetlinkUnavailable("short netlink error")
        (code,) = struct.unpack_from("=i", data, 16)
        err = -code
        if err == errno.ENOENT:
            return None
        name = errno.errorcode.get(err, str(err))
        raise NetlinkUnavailable(f"netlink error {name}", unusable=err in _NETLINK_UNUSABLE)
    if kind != _SOCK_DIAG_BY_FAMILY or len(data) < 16 + 72:
        raise NetlinkUnavailable(f"unexpected netlink reply (type {kind}, {len(data)} bytes)")
    uid, inode = struct.unpack_from("=II", data, 16 + 4 + 48 + 12)
    return inode, uid


def _netlink_owner(family: int, peer_ip, peer_port: int, local_ip, local_port: int) -> tuple[int, int] | None:
    """One exact NETLINK_SOCK_DIAG query, as `ss` does. (inode, uid); None: no such socket.
    Raises NetlinkUnavailable."""
    def addr(ip) -> bytes:
        return ip.packed.ljust(16, b"\0")

    sockid = struct.pack("!HH16s16s", peer_port, local_port, addr(peer_ip), addr(local_ip)) + \
        struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)  # any interface, no cookie check
    req = struct.pack("=BBBxI", family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF) + sockid
    msg = struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0) + req
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(0.2)
            nl.send(msg)
            data = nl.recv(8192)
    except TimeoutError:
        raise NetlinkUnavailable("netlink timed out") from None
    except OSError as e:
        raise NetlinkUnavailable(f"netlink: {e}", unusable=e.errno in _NETLINK_UNUSABLE) from None
    return parse_netlink_reply(data)


def _by_netlink(peer_ip, peer_port: int, local_ip, local_port: int) -> tuple[int, int] | None:
    """(inode, uid) or None (no such socket). Raises NetlinkUnavailable."""
    family = socket.AF_INET if peer_ip.version == 4 else socket.AF_INET6
    found = _netlink_owner(family, peer_ip, peer_port, local_ip, local_port)
    if found is None and family == socket.AF_INET:
        # a dual-stack client socket: its address is v4-mapped
        m = ipaddress.IPv6Address("::ffff:" + str(peer_ip)), ipaddress.IPv6Address("::ffff:" + str(local_ip))
        found = _netlink_owner(socket.AF_INET6, m[0], peer_port, m[1], local_port)
    return found


def socket_owner(peer: tuple, local: tuple) -> tuple[int, int] | None:
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
    if _netlink_ok and _netlink.usable():
        try:
            found = _by_netlink(peer_ip, peer_port, local_ip, local_port)
        except NetlinkUnavailable as e:
            _netlink.failed(e.unusable)  # this time, and maybe for a while: read /proc/net
        else:
            if found is not None or _netlink.trusted:
                _netlink.answered(found is not None)
                return found
            # "no such socket" from a netlink that has never found one: ask /proc/net
            found = _by_proc_net(peer_ip, peer_port, local_ip, local_port)
            if found is not None:
                _netlink.failed(unusable=True)  # it says ENOENT for sockets that exist
            else:
                _netlink.answered(False)
            return found
    return _by_proc_net(peer_ip, peer_port, local_ip, local_port)


def _by_proc_net(peer_ip, peer_port: int, local_ip, local_port: int) -> tuple[int, int] | None:
    if peer_ip.version == 4 and local_ip.version == 4:
        # an IPv4 client socket; or, on a dual-stack client socket, its v4-mapped form in tcp6
        mapped = lambda ip: ipaddress.IPv6Address("::ffff:" + str(ip))  # noqa: E731
        searches = [
            ("tcp", _hex_address(peer_ip, peer_port), _hex_address(local_ip, local_port)),
            ("tcp6", _hex_address(mapped(peer_ip), peer_port), _hex_address(mapped(local_ip), local_port)),
        ]
    elif peer_ip.version == 6 and local_ip.version == 6:
        searches = [("tcp6", _hex_address(peer_ip, peer_port), _hex_address(local_ip, local_port))]
    else:
        return None
    for table, want_local, want_remote in searches:
        try:
            with open(f"/proc/net/{table}", "rb") as f:
                next(f, None)
                for line in f:
                    if want_local not in line:
                        continue
                    fields = line.split()
                    if len(fields) > 9 and fields[1] == want_local and fields[2] == want_remote:
                        return int(fields[9]), int(fields[7])
        except OSError:
            continue
    return None


_recent_pids: list[int] = []  # processes that owned client sockets lately: looked at first
_recent_lock = threading.Lock()  # lookups run on several executor threads


def _fd_if_owned(pid: int, uid: int, target: str) -> int | None:
    """The fd by which process `pid`, if it is user `uid`'s, holds `target`."""
    try:
        if os.stat(f"/proc/{pid}").st_uid != uid:
            return None
    except OSError:
        return None
    return _fd_of(pid, target)


def _fd_of(pid: int, target: str) -> int | None:
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


def _holds(pid: int, target: str) -> bool:
    return _fd_of(pid, target) is not None


def _holds_at(pid: int, fd: int, target: str) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}") == target
    except OSError:
        return False


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _children(pid: int) -> list[int]:
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


def _remember_owner(pid: int) -> None:
    with _recent_lock:
        if pid in _recent_pids:
            _recent_pids.remove(pid)
        _recent_pids.insert(0, pid)
        del _recent_pids[64:]


def _holders(inode: int, uid: int) -> dict[int, int]:
    """{pid: fd} of the processes of user `uid` that hold socket `inode`: the first one found, its
    parent if the parent holds it too, and its children that hold it (a fork that shares the
    connection, before or after the holder was found).

    Looks at recent owners first, then from the newest pid down: a client is usually either an
    agent already seen or a process that just started."""
    target = f"socket:[{inode}]"
    with _recent_lock:
        recent = list(_recent_pids)
    seen = set(recent)
    holder = fd = None
    for pid in recent:
        fd = _fd_of(pid, target)
        if fd is not None:
            holder = pid
            break
    if holder is None:
        try:
            pids = sorted((int(e.name) for e in os.scandir("/proc") if e.name.isdigit()), reverse=True)
        except OSError:
            return {}
        for pid in pids:
            if pid in seen:
                continue
            fd = _fd_if_owned(pid, uid, target)
            if fd is not None:
                holder = pid
                break
    if holder is None or fd is None:
        return {}
    _remember_owner(holder)
    found = {holder: fd}
    parent = _ppid(holder)
    if parent and parent > 1:
        parent_fd = _fd_of(parent, target)
        if parent_fd is not None:
            found[parent] = parent_fd
    for child in _children(holder):
        # a fork copies the descriptor table: a child that shares the socket has it at the same number
        if child not in found and _holds_at(child, fd, target):
            found[child] = fd
    return found


def pids_of_socket(inode: int, uid: int) -> list[int]:
    """The processes of user `uid` that hold socket `inode` (see _holders), lowest pid first."""
    return sorted(_holders(inode, uid))


# -- forks after the lookup --------------------------------------------------------------------
#
# A process that forks while it holds a client socket shares the socket with its child; the
# child may then send on the connection from another folder, as another program, or alone once
# the parent closed its copy or exited. A fork makes a new process, and every new process takes a
# new pid: the newest pid, /proc/loadavg's last field, moves. So each socket that a lookup found
# is watched by the newest pid at the time its holders were counted. While that stays the same,
# no process was made since, nothing can have joined the holders, and the recheck of a request
# is that of one process. When it moved, only the processes made since (their pids lie between
# the two, in the cyclic pid order) are looked at, and the known holders are checked to still
# hold the socket, each by the one descriptor number it had.
#
# Not seen: a descriptor handed to a process that already ran (SCM_RIGHTS over a Unix socket,
# pidfd_getfd); and a fork caught in the microseconds between taking its pid and appearing in
# /proc, at the very moment of a check (a kernel race no cheap read closes).

_WATCHED_MAX = 4096
_watched: collections.OrderedDict[int, tuple[int, dict[int, int]]] = collections.OrderedDict()
_watched_lock = threading.Lock()
_pid_max: int | None = None


_loadavg_fd: int | None = None


def _newest_pid() -> int | None:
    """The last pid the kernel gave out (in this pid namespace). /proc/loadavg is kept open and
    read again from its start: a read on the hot path of every request."""
    global _loadavg_fd
    try:
        fd = _loadavg_fd
        if fd is None:
            with _watched_lock:
                if _loadavg_fd is None:
                    _loadavg_fd = os.open("/proc/loadavg", os.O_RDONLY | os.O_CLOEXEC)
                fd = _loadavg_fd
        return int(os.pread(fd, 128, 0).split()[4])
    except (OSError, ValueError, IndexError):
        _loadavg_fd = None  # opened again next time
        try:
            with open("/proc/loadavg", "rb") as f:
                return int(f.read().split()[4])
        except (OSError, ValueError, IndexError):
            return None


def _cyclic_pid_max() -> int:
    global _pid_max
    if _pid_max is None:
        try:
            with open("/proc/sys/kernel/pid_max", "rb") as f:
                _pid_max = int(f.read())
        except (OSError, ValueError):
            _pid_max = 1 << 22
    return _pid_max


def _watch(inode: int, mark: int | None, holders: dict[int, int]) -> None:
    if mark is None:
        return
    with _watched_lock:
        _watched[inode] = (mark, dict(holders))
        _watched.move_to_end(inode)
        while len(_watched) > _WATCHED_MAX:
            _watched.popitem(last=False)


def _watched_as(inode: int) -> tuple[int, dict[int, int]] | None:
    with _watched_lock:
        entry = _watched.get(inode)
        if entry is not None:
            _watched.move_to_end(inode)
        return entry


def _holders_now(inode: int, uid: int, entry: tuple[int, dict[int, int]] | None, now: int) -> dict[int, int]:
    """Who holds the socket now: the known holders that still do, and the processes made since the
    entry's mark that do. Without an entry (forgotten), a full search."""
    target = f"socket:[{inode}]"
    if entry is None:
        return _holders(inode, uid)
    mark, known = entry
    found = {}
    for pid, fd in known.items():
        if _holds_at(pid, fd, target):
            found[pid] = fd
        else:
            again = _fd_of(pid, target)  # it may have moved the socket to another number
            if again is not None:
                found[pid] = again
    span = (now - mark) % _cyclic_pid_max()
    if span:
        pid_max = _cyclic_pid_max()
        try:
            entries = [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]
        except OSError:
            entries = []
        for pid in entries:
            if pid in found or not 0 < (pid - mark) % pid_max <= span:
                continue
            fd = _fd_if_owned(pid, uid, target)
            if fd is not None:
                found[pid] = fd
    return found


def read_process(pid: int) -> Process | None:
    """A snapshot of a process, or None if it is gone or not readable."""
    base = f"/proc/{pid}"
    try:
        with open(f"{base}/stat", "rb") as f:
            stat = f.read()
        # the command name may hold spaces and parentheses: split after the last ')'
        rest = stat[stat.rindex(b")") + 2:].split()
        start_ticks = int(rest[19])
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
        # read the start time again: if the pid was reused meanwhile, the snapshot is not one process
        with open(f"{base}/stat", "rb") as f:
            again = f.read()
        if again[again.rindex(b")") + 2:].split()[19] != rest[19]:
            return None
    except (OSError, ValueError, IndexError):
        return None
    return Process(
        pid=pid,
        start_ticks=start_ticks,
        started_at=boot_time() + start_ticks / _CLK_TCK,
        boot_id=boot_id(),
        uid=uid,
        cwd=cwd,
        comm=comm,
        exe=exe,
        cmdline=cmdline,
        environ=environ,
    )


_COMM_FDS_MAX = 64
_comm_fds: collections.OrderedDict[str, int] = collections.OrderedDict()  # process key -> fd of its comm
_comm_lock = threading.Lock()


def _comm_now(process: Process) -> str:
    """The process's name now. Its /proc comm file is kept open (a few recent processes): one
    pread per request. An fd of an ended process fails to read, and is not kept; one of a pid
    used again is under another key (its start time differs)."""
    key = process.key
    with _comm_lock:
        fd = _comm_fds.pop(key, None)
    if fd is None:
        fd = os.open(f"/proc/{process.pid}/comm", os.O_RDONLY | os.O_CLOEXEC)
    try:
        comm = os.pread(fd, 64, 0).decode("utf-8", "replace").strip()
    except OSError:
        os.close(fd)
        raise
    with _comm_lock:
        if key in _comm_fds:  # another thread kept one meanwhile
            os.close(fd)
        else:
            _comm_fds[key] = fd
            while len(_comm_fds) > _COMM_FDS_MAX:
                os.close(_comm_fds.popitem(last=False)[1])
    return comm


def _recheck_program(process: Process) -> Process | None:
    """The same snapshot if the process still runs the same program in the same folder; a fresh
    one if it exec'd into another program or changed folder; None if it is gone."""
    base = f"/proc/{process.pid}"
    try:
        comm = _comm_now(process)
        if comm == process.comm and os.readlink(f"{base}/exe") == process.exe \
                and os.readlink(f"{base}/cwd") == process.cwd:
            return process
    except OSError:
        pass
    fresh = read_process(process.pid)
    if fresh is None or fresh.start_ticks != process.start_ticks or fresh.uid != process.uid:
        return None
    return dataclasses.replace(fresh, inode=process.inode, shared=process.shared)


def recheck(process: Process) -> Process | None:
    """The process behind the connection now, for the next request on it:

    - the same snapshot if nothing changed;
    - a fresh one if it exec'd into another program or changed folder;
    - the same process marked `shared` once a child forked after the lookup shares the socket (and
      unmarked again when it is alone again);
    - a snapshot of the child if the child is left alone with the socket (the parent closed its
      copy or exited);
    - None if no process of the proxy's user holds the socket any more.

    Cheap while no process was made since the last check: the program check plus one small read."""
    if not process.inode:
        return _recheck_program(process)
    now = _newest_pid()
    if now is None:
        return _recheck_program(process)  # no /proc/loadavg: forks cannot be followed
    entry = _watched_as(process.inode)
    if entry is not None and entry[0] == now and not process.shared:
        return _recheck_program(process)  # no new process: the holders are the same
    holders = _holders_now(process.inode, process.uid, entry, now)
    _watch(process.inode, now, holders)
    if not holders:
        return None
    shared = len(holders) > 1
    if process.pid in holders:
        current = _recheck_program(process)
    else:
        current = read_process(min(holders))
        if current is not None and current.uid != process.uid:
            current = None
    if current is None:
        return None
    if current.inode != process.inode or current.shared != shared:
        current = dataclasses.replace(current, inode=process.inode, shared=shared)
    return current


def alive(process_key: str) -> bool:
    """Is the process of this key (boot:pid:start) still running?"""
    try:
        boot, pid, start = process_key.rsplit(":", 2)
        if boot != boot_id():
            return False
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:].split()[19].decode() == start
    except (OSError, ValueError, IndexError):
        return False


def lookup(peer: tuple, local: tuple) -> Process | None:
    """The local process of the proxy's own user behind a client connection, or None."""
    if sys.platform != "linux" or not peer or not local:
        return None
    mark = _newest_pid()  # before the search: a fork from now on is seen by `recheck`
    owner = socket_owner(peer, local)
    if owner is None:
        return None
    inode, uid = owner
    if uid != os.getuid():
        return None
    holders = _holders(inode, uid)
    if not holders:
        return None
    process = read_process(min(holders))
    if process is None or process.uid != os.getuid():
        return None
    _watch(inode, mark, holders)
    # a socket shared by several processes: whose session it carries cannot be told
    return dataclasses.replace(process, inode=inode, shared=len(holders) > 1)
