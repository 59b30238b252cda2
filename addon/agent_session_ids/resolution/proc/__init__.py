"""I/O adapter: from a client connection's address to a snapshot of the local process behind it.

Linux only: the socket whose local address is the client's peer address and whose remote address
is the proxy's listening address is found by netlink (sock_diag) or in /proc/net/tcp{,6}; the
process holding it is found by its fd links. Only processes of the proxy's own user are read;
anything else gives None, and the caller falls back.

One concern a module: `netlink`, `procnet` (the socket), `holders` (its processes), `snapshot`
(the process), `forks` (forks after the lookup), `procfs` (the /proc readers they share). Their
state between calls is owned by one `ProcessTable`, made by its owner (the addon makes one and
hands it to the parts that look processes up) and passed in: nothing here is module state.
"""

from .netlink import (
    NETLINK_FAILURES_BEFORE_PAUSE,
    NETLINK_PAUSE_MAX_S,
    NETLINK_PAUSE_S,
    NetlinkUnavailable,
    parse_netlink_reply,
)
from .table import ProcessTable

__all__ = [
    "NETLINK_FAILURES_BEFORE_PAUSE",
    "NETLINK_PAUSE_MAX_S",
    "NETLINK_PAUSE_S",
    "NetlinkUnavailable",
    "ProcessTable",
    "parse_netlink_reply",
]
