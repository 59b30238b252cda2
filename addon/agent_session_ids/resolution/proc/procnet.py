"""The client socket by its addresses, read from /proc/net/tcp{,6}: the fallback when netlink
cannot answer (netlink.py). Slower (the whole table is read), but needs nothing but /proc.
"""

from __future__ import annotations

import ipaddress

from ..tcp_address import hex_address


def owner(peer_ip, peer_port: int, local_ip, local_port: int) -> tuple[int, int] | None:
    """(inode, uid) of the socket with local address `peer` and remote address `local`, or None."""
    if peer_ip.version == 4 and local_ip.version == 4:
        # an IPv4 client socket; or, on a dual-stack client socket, its v4-mapped form in tcp6
        mapped = lambda ip: ipaddress.IPv6Address("::ffff:" + str(ip))  # noqa: E731
        searches = [
            ("tcp", hex_address(peer_ip, peer_port), hex_address(local_ip, local_port)),
            ("tcp6", hex_address(mapped(peer_ip), peer_port), hex_address(mapped(local_ip), local_port)),
        ]
    elif peer_ip.version == 6 and local_ip.version == 6:
        searches = [("tcp6", hex_address(peer_ip, peer_port), hex_address(local_ip, local_port))]
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
