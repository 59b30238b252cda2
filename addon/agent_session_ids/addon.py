"""SessionIds: the mitmproxy addon. Its options, their configuration, its commands, and hooks that
hand each flow to the part that handles it (request_flow.py); the usage ledger is an addon of its
own (usage/addon.py).

Fail open: whatever goes wrong, the request passes on unmodified and the reason is logged once.
"""

from __future__ import annotations

import logging
import os

from mitmproxy import command, ctx, exceptions, http
from mitmproxy import flow as mitmflow
from mitmproxy.utils import human

from .cli import check
from .connections import Connections
from .flow_state import FlowState, FlowStates
from .live import LiveSessions
from .options import DEFAULT_RULES, OPTIONS, open_listener_warning
from .request_flow import RequestFlow, may_stream
from .resolution.proc import ProcessTable
from .resolution.runner import Runner
from .rules import RuleError
from .rules.rulebook import Rulebook
from .shown import shown_lines
from .view import contentview, display
from .warn_once import WarnOnce

__all__ = ["DEFAULT_RULES", "SessionIds"]

logger = logging.getLogger("agent_session_ids")


class SessionIds:
    def __init__(self) -> None:
        self._warn_once = WarnOnce()
        self.rulebook = Rulebook(self._warn_once)
        self.processes = ProcessTable()  # the lookups, rechecks and status probe share its state
        # runs the resolution: inline or on its worker thread
        self.runner = Runner(self._warn_once, self.processes)
        self.connections = Connections(self._warn_once, self.processes)  # the process behind each connection
        self.live = LiveSessions()
        self.states = FlowStates()  # what the rewrite decided for each flow: the view and the ledger read it
        self.flows = RequestFlow(self.runner, self.connections, self.live, self.states, self._warn_once)
        self._running = False
        self._stream_limit: int | None = None  # read at every request: kept here, not in ctx.options

    @property
    def rules(self):
        return self.rulebook.rules

    # -- options -----------------------------------------------------------------------------

    def load(self, loader) -> None:
        for name, typespec, default, help, *choices in OPTIONS:
            loader.add_option(name, typespec, default, help, choices=choices[0] if choices else None)
        contentview.register()

    def configure(self, updated: set[str]) -> None:
        options = ctx.options
        if "session_privacy" in updated:
            self.flows.privacy = options.session_privacy
        if "session_rename" in updated:
            self.runner.tree.rename = options.session_rename
        if "session_fallback" in updated:
            self.flows.fallback = options.session_fallback
        if "stream_large_bodies" in updated:
            limit = getattr(options, "stream_large_bodies", None)
            try:
                self._stream_limit = human.parse_size(limit) if limit else None
            except ValueError:
                self._stream_limit = None  # mitmproxy's own check says why
        if "session_rules" in updated or "session_enable" in updated:
            try:
                self.rulebook.load(options.session_rules, options.session_enable)
            except RuleError as e:
                if self._running:
                    raise exceptions.OptionsError(str(e)) from None
                # At start-up: one clear line, then mitmproxy's error check stops the proxy.
                logger.error(f"agent-session-ids: bad rule: {e}")
                self.rulebook.clear()
        if "session_store_homes" in updated:
            homes = [h for h in options.session_store_homes.split(os.pathsep) if h]
            bad = [h for h in homes if not os.path.isabs(os.path.expanduser(h))]
            if bad:
                raise exceptions.OptionsError(
                    f"session_store_homes: {bad[0]!r} is not an absolute path; give folders such as "
                    f"/srv/agent-home, separated by '{os.pathsep}'"
                )
            self.runner.set_homes(os.path.expanduser(h) for h in homes)
        if "session_state_file" in updated or "confdir" in updated:
            self.runner.use_state_file(
                options.session_state_file
                or os.path.join(os.path.expanduser(options.confdir), "agent-session-ids", "state.json")
            )

    def running(self) -> None:
        self._running = True
        warning = open_listener_warning(ctx.options)
        if warning:
            logger.warning(f"agent-session-ids: {warning}")
        self.rulebook.watch()
        self.runner.start()

    def done(self) -> None:
        contentview.unregister()
        self.rulebook.stop()
        self.runner.stop()

    # -- commands (named without '_': mitmweb's command API only routes [a-z.]) ---------------------

    @command.command("sessionids.reload")
    def cmd_reload(self) -> str:
        """Reload the rules folder now (it is also watched)."""
        return self.rulebook.reload()

    @command.command("sessionids.check")
    def cmd_check(self, path: str) -> str:
        """Check a rules folder without using it: 'ok ...' or the first error as file:line."""
        return shown_lines(check.check_folder(path)[1].split("\n"))

    @command.command("sessionids.sessions")
    def cmd_sessions(self) -> str:
        """The sessions of this run as `agent-session-ids top` shows them, then how each was decided:
        agent, ID, name, cwd, pid, requests, and the evidence."""
        ledger = ctx.master.addons.get("usageledger")
        usage = ledger.table() if ledger is not None else []
        lines = usage or ["no answers read yet (session_usage off, or none answered)"]
        return shown_lines([*lines, "", "How each session was decided:", *self.live.table()])

    @command.command("sessionids.explain")
    def cmd_explain(self, flow: mitmflow.Flow) -> str:
        """How one flow's session was resolved, and what was set."""
        return shown_lines(display.explain(flow).split("\n"))

    # -- hooks ---------------------------------------------------------------------------------

    def client_connected(self, client) -> None:
        if self.rules.rules:
            self.connections.connected(client)

    def client_disconnected(self, client) -> None:
        self.connections.disconnected(client.id)
        self.flows.forget_connection(client.id)
        self.runner.forget_connection(client.id)

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        # A streamed body is forwarded before `request` runs: its headers are set now.
        if flow.response or flow.error or flow.is_replay or not may_stream(flow, self._stream_limit):
            return
        await self._handle(flow, streamed=True)

    async def request(self, flow: http.HTTPFlow) -> None:
        # A replay is sent as it was recorded (rewritten already); its old address pair may now
        # belong to another process, so it must not reach the live state.
        if flow.response or flow.error or not flow.live or flow.is_replay:
            return
        first = self.states.get(flow)  # requestheaders' pass, when it ran
        if first is not None and (flow.request.stream or flow.request.raw_content is None):
            return  # streamed: done in requestheaders, and the body has gone
        await self._handle(flow, streamed=False, first=first)

    async def _handle(self, flow: http.HTTPFlow, streamed: bool, first: FlowState | None = None) -> None:
        # Never raise: an exception here would also skip every script loaded after this one.
        try:
            rules = self.rules.matching(flow)
        except Exception as e:
            self._warn_once(f"match-{type(e).__name__}", f"rule matching failed: {e!r}; request passed on unchanged")
            return
        if rules:
            await self.flows.handle(flow, rules, streamed, first)
