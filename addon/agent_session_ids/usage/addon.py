"""UsageLedger: the usage ledger as an addon of its own, with its own options. It reads, from the
gateway's answer to each request that SessionIds rewrote, what the gateway billed, the cache hits
and the provider that served the turn (usage/recorder.py does the reading)."""

from __future__ import annotations

from mitmproxy import ctx, http

from ..warn_once import WarnOnce
from .recorder import Recorder


class UsageLedger:
    def __init__(self) -> None:
        self.recorder = Recorder(WarnOnce())

    def load(self, loader) -> None:
        loader.add_option(
            "session_usage",
            bool,
            True,
            "Read usage, cache hits and cost from the gateways' answers to rewritten requests: shown in the "
            "flow comment and sessionids.sessions, appended to the ledger (session_usage_file). SSE answers "
            "to such requests are then streamed through as they come. Off: answers are left alone.",
        )
        loader.add_option(
            "session_usage_file",
            str,
            "",
            "The usage ledger, one JSON line per answered request that a rule rewrote; read it with "
            "python -m agent_session_ids.report. Empty: <confdir>/agent-session-ids/usage.jsonl.",
        )

    def configure(self, updated: set[str]) -> None:
        # what SessionIds decided for each flow, read from its own table (mitmproxy names it by its class)
        session_ids = ctx.master.addons.get("sessionids")
        self.recorder.states = session_ids.states if session_ids is not None else {}
        if updated & {"session_usage", "session_usage_file", "confdir"}:
            self.recorder.configure(ctx.options.session_usage, ctx.options.session_usage_file, ctx.options.confdir)

    def done(self) -> None:
        self.recorder.done()  # the summary per session, then the ledger is flushed

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self.recorder.responseheaders(flow)

    def response(self, flow: http.HTTPFlow):
        return self.recorder.response(flow)  # a coroutine while a compressed answer is decoded

    def error(self, flow: http.HTTPFlow):
        return self.recorder.error(flow)

    def table(self) -> list[str]:
        """Usage per session, for sessionids.sessions."""
        return self.recorder.table() if self.recorder.sessions else []
