"""StatusProbe: the proxy says that it runs this addon, and with what, when asked at a reserved
host (RFC 2606's `.invalid`, which never resolves): `agent-session-ids proxy status` and
`doctor` ask `http://agent-session-ids.invalid/status` through the proxy, and `doctor` the same
over TLS to check each runtime's trust in the CA. Such a request is answered here and never
forwarded."""

from __future__ import annotations

import json
import os

from mitmproxy import ctx, http

from . import __version__

PROBE_HOST = "agent-session-ids.invalid"


class StatusProbe:
    def __init__(self, session_ids) -> None:
        self.session_ids = session_ids  # the addon whose rules it reports

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.request.host != PROBE_HOST or flow.response is not None:  # one compare per flow
            return
        rules = self.session_ids.rules
        status = {
            "addon": "agent-session-ids",
            "version": __version__,
            "pid": os.getpid(),
            "confdir": os.path.expanduser(ctx.options.confdir),
            "rules": [r.name for r in rules.rules],
            "hosts": list(rules.hosts),
            "scheme": flow.request.scheme,
        }
        flow.response = http.Response.make(200, json.dumps(status), {"content-type": "application/json",
                                                                      "cache-control": "no-store"})
