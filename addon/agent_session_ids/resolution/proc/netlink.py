"""The client socket by its addresses, asked of the kernel over NETLINK_SOCK_DIAG, as `ss` does.

One exact query per lookup, instead of reading all of /proc/net/tcp{,6}. Netlink may be filtered
out (a sandbox, seccomp) or slow under load, so `NetlinkHealth` says when to skip it for a while;
the caller then reads /proc/net (procnet.py).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Callable

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2

# errnos after which netlink cannot answer here at all (a sandbox, a seccomp filter, no sock_diag)
_NETLINK_UNUSABLE = frozenset(
    {errno.EPERM, errno.EACCES, errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT, errno.ENOSYS, errno.EINVAL}
)
NETLINK_FAILURES_BEFORE_PAUSE = 3  # transient failures (timeouts) in a row before netlink is paused
NETLINK_PAUSE_S = 10.0  # the first pause; each further pause doubles, up to NETLINK_PAUSE_MAX_S
NETLINK_PAUSE_MAX_S = 600.0  # also the pause after an error that says netlink cannot be used here


class NetlinkUnavailable(Exception):
    """Netlink gave no answer this time. `unusable`: it cannot answer here at all."""

    def __init__(self, reason: str, unusable: bool = False) -> None:
        super().__init__(reason)
        self.unusable = unusable


class NetlinkHealth:
    """When to use netlink: paused for a while (never for good) after several transient failures in
    a row, or after an error that says it cannot be used here; until one answer found a socket, a
    "no such socket" is checked against /proc/net (a kernel without inet_diag says ENOENT too).
    Lookups run on several executor threads: changed only under its lock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.failures = 0  # transient failures in a row
        self.paused_until = 0.0
        self.pause = NETLINK_PAUSE_S
        self.trusted = False  # has netlink found a socket here?

    def usable(self) -> bool:
        with self._lock:
            return self._clock() >= self.paused_until

    def answered(self, found: bool) -> None:
        with self._lock:
            self.failures = 0
            self.pause = NETLINK_PAUSE_S
            self.trusted = self.trusted or found

    def failed(self, unusable: bool) -> None:
        with self._lock:
            if unusable:
                self.failures = 0
                self.paused_until = self._clock() + NETLINK_PAUSE_MAX_S
                return
            self.failures += 1
            if self.failures >= NETLINK_FAILURES_BEFORE_PAUSE:
                self.failures = 0
                self.paused_until = self._clock() + self.pause
                self.pause = min(self.pause * 2, NETLINK_PAUSE_MAX_S)


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


def _query(family: int, peer_ip, peer_port: int, local_ip, local_port: int) -> tuple[int, int] | None:
    """One exact NETLINK_SOCK_DIAG query. (inode, uid); None: no such socket.
    Raises NetlinkUnavailable."""

    def addr(ip) -> bytes:
        return ip.packed.ljust(16, b"\0")

    sockid = struct.pack("!HH16s16s", peer_port, local_port, addr(peer_ip), addr(local_ip)) + struct.pack(
        "=III", 0, 0xFFFFFFFF, 0xFFFFFFFF
    )  # any interface, no cookie check
    req = struct.pack("=BBBxI", family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF) + sockid
    msg = struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0) + req
    try:
        kind = socket.SOCK_RAW | socket.SOCK_CLOEXEC
        with socket.socket(socket.AF_NETLINK, kind, _NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(0.2)
            nl.send(msg)
            data = nl.recv(8192)
    except TimeoutError:
        raise NetlinkUnavailable("netlink timed out") from None
    except OSError as e:
        raise NetlinkUnavailable(f"netlink: {e}", unusable=e.errno in _NETLINK_UNUSABLE) from None
    return parse_netlink_reply(data)


def owner(peer_ip, peer_port: int, local_ip, local_port: int) -> tuple[int, int] | None:
    """(inode, uid) of the socket with local address `peer` and remote address `local`, or None
    (no such socket). Raises NetlinkUnavailable."""
    family = socket.AF_INET if peer_ip.version == 4 else socket.AF_INET6
    found = _query(family, peer_ip, peer_port, local_ip, local_port)
    if found is None and family == socket.AF_INET:
        # a dual-stack client socket: its address is v4-mapped
        mapped_peer = ipaddress.IPv6Address("::ffff:" + str(peer_ip))
        mapped_local = ipaddress.IPv6Address("::ffff:" + str(local_ip))
        found = _query(socket.AF_INET6, mapped_peer, peer_port, mapped_local, local_port)
    return found
