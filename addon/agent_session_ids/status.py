"""StatusProbe: the proxy says that it runs this addon, and with what, when asked at a reserved
host (RFC 2606's `.invalid`, which never resolves): `agent-session-ids proxy status` and
`doctor` ask `http://agent-session-ids.invalid/status` through the proxy, and `doctor` the same
over TLS to check each runtime's trust in the CA. Such a request is answered here and never
forwarded.

Only the proxy's own user learns where it keeps its files and what it is: a client whose socket
is another user's, or cannot be seen (another host, a container, no /proc/net), gets the addon's
name and version and nothing else."""

from __future__ import annotations

import json
import os

from mitmproxy import ctx, http

from . import PROBE_HOST, __version__
from .resolution.proc import ProcessTable

__all__ = ["PROBE_HOST", "StatusProbe"]


class StatusProbe:
    def __init__(self, session_ids) -> None:
        self.session_ids = session_ids  # the addon whose rules it reports

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.request.host != PROBE_HOST or flow.response is not None:  # one compare per flow
            return
        status: dict = {"addon": "agent-session-ids", "version": __version__}
        # the commands: they check the pid before a signal
        if _of_this_user(self.session_ids.processes, flow.client_conn):
            rules = self.session_ids.rules
            status.update(
                {
                    "pid": os.getpid(),
                    "confdir": os.path.expanduser(ctx.options.confdir),
                    "rules": [r.name for r in rules.rules],
                    "hosts": list(rules.hosts),
                    "scheme": flow.request.scheme,
                }
            )
        flow.response = http.Response.make(
            200, json.dumps(status), {"content-type": "application/json", "cache-control": "no-store"}
        )


def _of_this_user(processes: ProcessTable, client) -> bool:
    """Is the client's socket one of the proxy's own user's? (Only for the reserved host: a socket lookup.)"""
    try:
        owner = processes.socket_owner(client.peername, client.sockname)
    except Exception:  # unseen is not this user's
        return False
    return owner is not None and owner[1] == os.getuid()
