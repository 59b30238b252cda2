"""I/O adapter: the process behind a connection, or why it cannot be read (a `Seen`).

The reason is shown to the user (flow comment, Session IDs view, sessionids.explain): without
the process the addon still resolves from the request and the stores, and says so. A socket
seen to belong to another user carries that uid: such a request is never matched to the proxy
user's own stores (finder.py).
"""

from __future__ import annotations

import ipaddress
import os
import sys

from .model import Seen
from .proc import ProcessTable

NOT_LINUX = f"not Linux ({sys.platform}): a connection's process can only be read on Linux"
NOT_LOCAL = "no local socket: the client is on another host, in a container or another network namespace"
NO_SOCKET = "no socket of this host matches the connection (it closed, or the client is in another network namespace)"
NOT_READ = "the process holding the socket could not be read (it ended, or forked and shares it)"


def lookup(processes: ProcessTable, peer: tuple, local: tuple) -> Seen:
    """The process, or why it cannot be read (and whose the socket is, when another user's)."""
    if not sys.platform.startswith("linux"):
        return Seen(None, NOT_LINUX)
    try:
        found = processes.lookup(peer, local)
    except Exception as e:  # an adapter failure is a reason, never an error
        return Seen(None, f"the process lookup failed ({type(e).__name__}: {e})")
    if found is not None:
        return Seen(found)
    return _unseen(processes, peer, local)


def _unseen(processes: ProcessTable, peer: tuple, local: tuple) -> Seen:
    try:
        host = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except (ValueError, TypeError, IndexError):
        return Seen(None, NOT_LOCAL)
    if not (host.is_loopback or _is_own_address(str(host))):
        return Seen(None, NOT_LOCAL)
    try:
        owner = processes.socket_owner(peer, local)
    except Exception:
        owner = None
    if owner is None:
        return Seen(None, NO_SOCKET)
    uid = owner[1]
    if uid != os.getuid():
        return Seen(
            None,
            f"another user's process (uid {uid}): only the proxy's own user's processes can be read",
            other_uid=uid,
        )
    return Seen(None, NOT_READ)


def _is_own_address(host: str) -> bool:
    try:
        import socket

        return host in {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        return False
