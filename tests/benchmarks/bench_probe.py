"""mitmproxy script used by bench.py in BOTH benchmark proxies (load it before the stand-in).

Cheap on purpose, so it costs both proxies the same: per response one dict lookup and a few
counter increments.

- Counts what happened to every answered flow (from the addon's ``flow.metadata["session_ids"]``):
  ``rewritten`` (a rule changed something), ``annotated_unchanged``, ``failed`` (the addon gave
  up, e.g. resolution took too long; the reasons are counted in ``errors``) and ``untouched``
  (no metadata: the plain proxy, or a flow no rule matched).
- ``GET /__bench/counters`` (any host) answers those counters as JSON, with the garbage
  collections so far per generation (``gc``); ``?reset=1`` zeroes the counters.
- A request with the header ``x-bench-probe`` gets a response header ``x-bench-info``: base64 of
  JSON {"session_id": <the body's session_id as it reached the stand-in>, "comment": flow.comment,
  "session": metadata session part}.
"""

from __future__ import annotations

import base64
import gc
import json

from mitmproxy import http

_KEYS = ("responses", "rewritten", "annotated_unchanged", "failed", "untouched")


class BenchProbe:
    def __init__(self) -> None:
        self.counts = dict.fromkeys(_KEYS, 0)
        self.errors: dict[str, int] = {}

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.path.startswith("/__bench/counters"):
            gc_runs = [g["collections"] for g in gc.get_stats()]  # garbage collections so far, per generation
            body = json.dumps({**self.counts, "errors": self.errors, "gc": gc_runs}).encode()
            if "reset=1" in flow.request.path:
                self.counts = dict.fromkeys(_KEYS, 0)
                self.errors = {}
            flow.response = http.Response.make(200, body, {"content-type": "application/json"})

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.request.path.startswith("/__bench/"):
            return
        c = self.counts
        c["responses"] += 1
        md = flow.metadata.get("session_ids")
        if md is None:
            c["untouched"] += 1
        elif "error" in md:
            c["failed"] += 1
            reason = str(md["error"])[:200]
            self.errors[reason] = self.errors.get(reason, 0) + 1
        elif md.get("changes"):
            c["rewritten"] += 1
        else:
            c["annotated_unchanged"] += 1
        if "x-bench-probe" in flow.request.headers and flow.response is not None:
            try:
                sent = json.loads(flow.request.get_content(strict=False) or b"{}").get("session_id")
            except ValueError:
                sent = None
            info = {
                "session_id": sent,
                "comment": flow.comment,
                "session": (md or {}).get("session"),
                "error": (md or {}).get("error"),
            }
            flow.response.headers["x-bench-info"] = base64.b64encode(json.dumps(info).encode()).decode()


addons = [BenchProbe()]
