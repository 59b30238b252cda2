"""I/O adapter: from a client connection's address to a snapshot of the local process behind it.

Linux only: the socket whose local address is the client's peer address and whose remote address
is the proxy's listening address is found in /proc/net/tcp{,6}; the process holding it is found
by its fd links. Only processes of the proxy's own user are read; anything else gives None, and
the caller falls back.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import struct
import sys

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
_netlink_ok = True


def _netlink_owner(family: int, peer_ip, peer_port: int, local_ip, local_port: int) -> tuple[int, int] | None | bool:
    """One exact NETLINK_SOCK_DIAG query, as `ss` does. (inode, uid); None: no such socket;
    False: netlink cannot be used here."""
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
    except OSError:
        return False
    if len(data) < 16:
        return False
    length, kind = struct.unpack_from("=IH", data, 0)
    if kind == _NLMSG_ERROR:
        return None
    if kind != _SOCK_DIAG_BY_FAMILY or len(data) < 16 + 72:
        return False
    uid, inode = struct.unpack_from("=II", data, 16 + 4 + 48 + 12)
    return inode, uid


def socket_owner(peer: tuple, local: tuple) -> tuple[int, int] | None:
    """(inode, uid) of the client-side socket: local address `peer`, remote address `local`."""
    global _netlink_ok
    try:
        peer_ip, local_ip = _ip(peer[0]), _ip(local[0])
        peer_port, local_port = int(peer[1]), int(local[1])
    except (ValueError, IndexError, TypeError):
        return None
    if isinstance(peer_ip, ipaddress.IPv6Address) and peer_ip.ipv4_mapped:
        peer_ip = peer_ip.ipv4_mapped
    if isinstance(local_ip, ipaddress.IPv6Address) and local_ip.ipv4_mapped:
        local_ip = local_ip.ipv4_mapped
    if _netlink_ok:
        if peer_ip.version == local_ip.version:
            family = socket.AF_INET if peer_ip.version == 4 else socket.AF_INET6
            found = _netlink_owner(family, peer_ip, peer_port, local_ip, local_port)
            if found is None and family == socket.AF_INET:
                m = ipaddress.IPv6Address("::ffff:" + str(peer_ip)), ipaddress.IPv6Address("::ffff:" + str(local_ip))
                found = _netlink_owner(socket.AF_INET6, m[0], peer_port, m[1], local_port)
            if found is not False:
                return found or None
        _netlink_ok = False  # not allowed here (a sandbox, another OS): read /proc/net from now on
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


def _holds(pid: int, target: str) -> bool:
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"{fd_dir}/{fd}") == target:
                return True
        except OSError:
            continue
    return False


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def pids_of_socket(inode: int, uid: int) -> list[int]:
    """The processes of user `uid` that hold socket `inode`: the first one found, plus its parent
    if the parent holds it too (a fork that shares the connection).

    Looks at recent owners first, then from the newest pid down: a client is usually either an
    agent already seen or a process that just started."""
    target = f"socket:[{inode}]"
    seen = set()
    holder = None
    for pid in list(_recent_pids):
        seen.add(pid)
        if _holds(pid, target):
            holder = pid
            break
    if holder is None:
        try:
            pids = sorted((int(e.name) for e in os.scandir("/proc") if e.name.isdigit()), reverse=True)
        except OSError:
            return []
        for pid in pids:
            if pid in seen:
                continue
            try:
                if os.stat(f"/proc/{pid}").st_uid != uid:
                    continue
            except OSError:
                continue
            if _holds(pid, target):
                holder = pid
                break
    if holder is None:
        return []
    if holder in _recent_pids:
        _recent_pids.remove(holder)
    _recent_pids.insert(0, holder)
    del _recent_pids[64:]
    parent = _ppid(holder)
    if parent and parent > 1 and _holds(parent, target):
        return sorted([holder, parent])
    return [holder]


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


def recheck(process: Process) -> Process | None:
    """The same snapshot if the process still runs the same program in the same folder; a fresh
    one if it exec'd into another program or changed folder; None if it is gone."""
    base = f"/proc/{process.pid}"
    try:
        with open(f"{base}/comm", "rb") as f:
            comm = f.read().decode("utf-8", "replace").strip()
        if comm == process.comm and os.readlink(f"{base}/exe") == process.exe \
                and os.readlink(f"{base}/cwd") == process.cwd:
            return process
    except OSError:
        pass
    fresh = read_process(process.pid)
    if fresh is None or fresh.start_ticks != process.start_ticks or fresh.uid != process.uid:
        return None
    return fresh


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
    owner = socket_owner(peer, local)
    if owner is None:
        return None
    inode, uid = owner
    if uid != os.getuid():
        return None
    pids = pids_of_socket(inode, uid)
    if not pids:
        return None
    process = read_process(pids[0])
    if process is None or process.uid != os.getuid():
        return None
    if len(pids) > 1:
        # a socket shared by several processes: whose session it carries cannot be told
        return dataclasses.replace(process, shared=True)
    return process

