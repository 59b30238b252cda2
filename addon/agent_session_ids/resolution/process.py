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


def pids_of_socket(inode: int, uid: int) -> list[int]:
    """The pids of the processes of user `uid` that hold socket `inode` (a forked child may share it)."""
    target = f"socket:[{inode}]"
    found = []
    try:
        entries = os.scandir("/proc")
    except OSError:
        return found
    with entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid != uid:
                    continue
                fd_dir = f"/proc/{entry.name}/fd"
                for fd in os.listdir(fd_dir):
                    try:
                        if os.readlink(f"{fd_dir}/{fd}") == target:
                            found.append(int(entry.name))
                            break
                    except OSError:
                        continue
            except OSError:
                continue
    return sorted(found)


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

