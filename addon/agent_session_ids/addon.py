"""The mitmproxy side: options, hooks, and the glue between the adapters and the pure parts.

Fail open: whatever goes wrong, the request passes on unmodified and the reason is logged once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time

from mitmproxy import command, ctx, exceptions, http
from mitmproxy.utils import human
from mitmproxy import flow as mitmflow

from . import check, contentview, display
from .connections import Connections
from .usage import recorder as usage
from .matching import RuleSet
from .resolution import agents
from .resolution.model import Process, Session
from .resolution.engine import Engine
from .resolution.pipeline import Evidence
from .apply import apply_rules
from .body import Body, Resumes, decode_content, read_body
from .decoding import DECODING
from .rewrite import RewriteError
from .rules import Rule, RuleError, active_rules, default_rules_dir, load_rules_dir, rules_signature

logger = logging.getLogger("agent_session_ids")

DEFAULT_RULES = default_rules_dir()
RULES_POLL_S = 1.0
MAX_LIVE_SESSIONS = 1000


def _may_stream(flow: http.HTTPFlow, limit: int | None) -> bool:
    """Will mitmproxy forward this body before `request` runs? It streams a body past
    stream_large_bodies (`limit`), and may decide so only mid-body when the length is not known."""
    if flow.request.stream:
        return True
    if not limit:
        return False
    length = flow.request.headers.get("content-length")
    try:
        return length is None or int(length) > limit
    except ValueError:
        return True


_EVIDENCE_NAMES = frozenset(agents.EVIDENCE_HEADERS)


def _evidence_headers(request_headers, rules: list[Rule], ours: dict[str, str]) -> dict[str, str]:
    """The request headers the resolution reads (lower-case names), less those this addon set."""
    fields = {f.key: f for r in rules for f in r.client_fields if f.target == "header"}
    out: dict[str, str] = {}
    # one pass over the request's raw headers (Headers.get scans them all for every name asked)
    for raw_name, raw_value in request_headers.fields:
        name = raw_name.decode("latin-1").lower()
        if (name in _EVIDENCE_NAMES or name in fields) and name not in out:
            value = raw_value.decode("utf-8", "surrogateescape")  # as mitmproxy's Headers decode them
            if ours.get(name) == value:
                continue
            value = fields[name].header_value(value) if name in fields else value  # a JSON header: its member
            if value is not None:
                out[name] = value
    return out


def _headers_set_before(flow) -> dict[str, str]:
    """Headers the first pass (requestheaders) set: lower-case name -> value."""
    out = {}
    for change in _first_pass_changes(flow):
        target = change.get("target", "")
        if target.startswith("header ") and isinstance(change.get("after"), str):
            out[target[len("header "):].lower()] = change["after"]
    return out


def _first_pass_changes(flow) -> list[dict]:
    meta = flow.metadata.get(display.METADATA_KEY)
    return list(meta.get("changes", [])) if isinstance(meta, dict) else []


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SessionIds:
    def __init__(self) -> None:
        self.rules = RuleSet([])
        self._warned: set[str] = set()
        self.engine = Engine(self._warn_once)  # runs the resolution: inline or on its worker thread
        self.connections = Connections(self._warn_once)  # the process behind each connection
        self._running = False
        self._watcher: asyncio.Task | None = None
        self._rules_signature: tuple = ()
        self._live: dict[str, dict] = {}  # session id -> what sessionids.sessions lists
        self.usage = usage.Recorder(self._warn_once)  # the usage ledger (usage/recorder.py)
        self._bodies = Resumes()  # per connection: where its last body's conversation ended
        # options read at every request, kept here: each ctx.options read deep-copies the value
        self._privacy, self._fallback, self._stream_limit = False, True, None

    # -- options -----------------------------------------------------------------------------

    def load(self, loader) -> None:
        loader.add_option(
            "session_rules", str, DEFAULT_RULES,
            "Folder of YAML rule files that say which gateway requests get a session ID, and where it goes. "
            "Defaults to the rules/ folder shipped with agent-session-ids. Edits are picked up live.",
        )
        loader.add_option(
            "session_enable", str, "",
            "Rules that ship off (self-hosted gateways: litellm-session, bifrost-session) to switch on, "
            "separated by commas, each as name or name@host (the gateway's host, matched instead of the "
            "rule's own; give a name several times for several hosts).",
        )
        loader.add_option(
            "session_state_file", str, "",
            "File that keeps the session IDs minted for sessions whose first request came before their "
            "session file, so they survive a proxy restart. Empty: <confdir>/agent-session-ids/state.json.",
        )
        loader.add_option(
            "session_fallback", bool, True,
            "Give requests of programs that are not known agents (curl, scripts) a per-process fallback "
            "session ID. Off: only agent sessions are set, whatever the rules say.",
        )
        loader.add_option(
            "session_store_homes", str, "",
            "Extra home folders whose agent session stores the proxy may read, separated by ':' "
            "(an agent's HOME in a container, its store bind-mounted): sessions are then found by "
            "their id or conversation there too. The proxy user's own stores are always read.",
        )
        loader.add_option(
            "session_privacy", bool, False,
            "Send a hash of a session's name instead of its name: labels read <hash>-<8 chars of the ID>, "
            "and {session.name} is the hash.",
        )
        loader.add_option(
            "session_usage", bool, True,
            "Read usage, cache hits and cost from the gateways' answers to rewritten requests: shown in the "
            "flow comment and sessionids.sessions, appended to the ledger (session_usage_file). SSE answers "
            "to such requests are then streamed through as they come. Off: answers are left alone.",
        )
        loader.add_option(
            "session_usage_file", str, "",
            "The usage ledger, one JSON line per answered request that a rule rewrote; read it with "
            "python -m agent_session_ids.report. Empty: <confdir>/agent-session-ids/usage.jsonl.",
        )
        contentview.register()

    def configure(self, updated: set[str]) -> None:
        if "session_privacy" in updated:
            self._privacy = ctx.options.session_privacy
        if "session_fallback" in updated:
            self._fallback = ctx.options.session_fallback
        if "stream_large_bodies" in updated:
            limit = getattr(ctx.options, "stream_large_bodies", None)
            try:
                self._stream_limit = human.parse_size(limit) if limit else None
            except ValueError:
                self._stream_limit = None  # mitmproxy's own check says why
        if updated & {"session_usage", "session_usage_file", "confdir"}:
            self.usage.configure(ctx.options.session_usage, ctx.options.session_usage_file, ctx.options.confdir)
        if "session_rules" in updated or "session_enable" in updated:
            try:
                rules, signature = self._load_rules(ctx.options.session_rules)
            except RuleError as e:
                if self._running:
                    raise exceptions.OptionsError(str(e)) from None
                # At start-up: one clear line, then mitmproxy's error check stops the proxy.
                logger.error(f"agent-session-ids: bad rule: {e}")
                self.rules = RuleSet([])
                return
            self._swap_rules(rules, signature)
        if "session_store_homes" in updated:
            homes = [h for h in ctx.options.session_store_homes.split(os.pathsep) if h]
            bad = [h for h in homes if not os.path.isabs(os.path.expanduser(h))]
            if bad:
                raise exceptions.OptionsError(
                    f"session_store_homes: {bad[0]!r} is not an absolute path; give folders such as "
                    f"/srv/agent-home, separated by '{os.pathsep}'")
            self.engine.set_homes(os.path.expanduser(h) for h in homes)
        if "session_state_file" in updated or "confdir" in updated:
            path = ctx.options.session_state_file or os.path.join(
                os.path.expanduser(ctx.options.confdir), "agent-session-ids", "state.json"
            )
            self.engine.use_state_file(path)

    def running(self) -> None:
        self._running = True
        host = getattr(ctx.options, "listen_host", "127.0.0.1")
        auth = getattr(ctx.options, "proxyauth", None) if "proxyauth" in ctx.options.keys() else None
        if not _is_loopback(host) and not auth:
            logger.warning(
                f"agent-session-ids: the proxy listens on {host or 'every interface'} without proxyauth: "
                "anyone who can reach it can use it. Start it with --listen-host 127.0.0.1."
            )
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_rules())
        self.engine.start()

    def done(self) -> None:
        contentview.unregister()
        self.usage.done()  # the summary per session, then the ledger is flushed
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        self.engine.stop()

    # -- rules: load, swap, watch -----------------------------------------------------------------

    @staticmethod
    def _load_rules(folder: str) -> tuple[list[Rule], tuple]:
        signature = rules_signature(folder)
        return active_rules(load_rules_dir(folder), ctx.options.session_enable), signature

    def _swap_rules(self, rules: list[Rule], signature: tuple) -> None:
        # One assignment: a flow in flight keeps the RuleSet it started with.
        self.rules = RuleSet(rules)
        self._rules_signature = signature
        logger.info(
            f"agent-session-ids: {len(rules)} rules from {ctx.options.session_rules} "
            f"for {', '.join(self.rules.hosts) or 'no hosts'}; agents: "
            f"{', '.join(p.name for p in agents.PROFILES)}"
        )

    def reload_rules(self) -> str:
        """Validate the rules folder fully, then swap it in; keep the running rules if it is bad."""
        folder = ctx.options.session_rules
        try:
            rules, signature = self._load_rules(folder)
        except RuleError as e:
            self._rules_signature = rules_signature(folder)
            message = f"agent-session-ids: rules not reloaded, keeping the {len(self.rules.rules)} running ones: {e}"
            logger.error(message)
            return message
        self._swap_rules(rules, signature)
        return f"reloaded {len(rules)} rules from {folder}"

    async def _watch_rules(self) -> None:
        while True:
            await asyncio.sleep(RULES_POLL_S)
            try:
                signature = await asyncio.get_running_loop().run_in_executor(
                    None, rules_signature, ctx.options.session_rules
                )
                if signature != self._rules_signature:
                    self.reload_rules()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                self._warn_once("watch", f"watching the rules folder failed: {e!r}")

    # -- commands (named without '_': mitmweb's command API only routes [a-z.]) ---------------------

    @command.command("sessionids.reload")
    def cmd_reload(self) -> str:
        """Reload the rules folder now (it is also watched)."""
        return self.reload_rules()

    @command.command("sessionids.check")
    def cmd_check(self, path: str) -> str:
        """Check a rules folder without using it: 'ok ...' or the first error as file:line."""
        return check.check_folder(path)[1]

    @command.command("sessionids.sessions")
    def cmd_sessions(self) -> str:
        """The sessions seen so far: agent, ID, name, cwd, pid, requests, and what decided."""
        if not self._live:
            return "no sessions yet"
        lines = [f"{'AGENT':<8} {'REQS':>5}  {'PID':>7}  {'ID':<38} {'NAME':<24} CWD"]
        for s in sorted(self._live.values(), key=lambda s: -s["last"]):
            lines.append(f"{s['agent']:<8} {s['requests']:>5}  {s['pid'] or '-':>7}  {s['id']:<38} "
                         f"{(s['name'] or '-')[:24]:<24} {s['cwd'] or '-'}")
            lines.append(f"{'':<8} decided by {s.get('source') or '?'}")
            if s.get("unreadable") and s.get("unreadable") not in (s.get("source") or ""):
                lines.append(f"{'':<8} process not read: {s['unreadable']}")
        if self.usage.sessions:
            lines += ["", "Usage per session (answers read this run):", *self.usage.table()]
        return "\n".join(lines)

    @command.command("sessionids.explain")
    def cmd_explain(self, flow: mitmflow.Flow) -> str:
        """How one flow's session was resolved, and what was set."""
        return display.explain(flow)

    # -- connections ---------------------------------------------------------------------------

    def client_connected(self, client) -> None:
        if self.rules.rules:
            self.connections.connected(client)

    def client_disconnected(self, client) -> None:
        self.connections.disconnected(client.id)
        self._bodies.forget(client.id)
        self.engine.forget_connection(client.id)

    # -- requests -------------------------------------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        # A streamed body is forwarded before `request` runs: set headers now, from what the
        # headers and the process say (the conversation is not available).
        if flow.response or flow.error or flow.is_replay or not _may_stream(flow, self._stream_limit):
            return
        await self._handle(flow, streamed=True)

    async def request(self, flow: http.HTTPFlow) -> None:
        # A replay is sent as it was recorded (rewritten already); its old address pair may now
        # belong to another process, so it must not reach the live state.
        if flow.response or flow.error or not flow.live or flow.is_replay:
            return
        if display.METADATA_KEY in flow.metadata and (flow.request.stream or flow.request.raw_content is None):
            return  # streamed: done in requestheaders, and the body has gone
        # (a body that could have streamed but did not is handled again here, for body rules)
        await self._handle(flow, streamed=False, again=display.METADATA_KEY in flow.metadata)

    async def _handle(self, flow: http.HTTPFlow, streamed: bool, again: bool = False) -> None:
        # Never raise: an exception here would also skip every script loaded after this one.
        try:
            rules = self.rules.matching(flow)
        except Exception as e:  # noqa: BLE001
            self._warn_once(f"match-{type(e).__name__}", f"rule matching failed: {e!r}; request passed on unchanged")
            return
        if rules:
            await self._rewrite(flow, rules, streamed, again)

    async def _rewrite(self, flow: http.HTTPFlow, rules: list[Rule], streamed: bool, again: bool = False) -> None:
        try:
            seen = await self.connections.process_of(flow.client_conn)
            proc = seen.process
            body: Body | None = None
            body_problem = None
            if streamed or flow.request.raw_content is None:
                body_problem = "the body is streamed"
            elif flow.request.raw_content:
                try:
                    content = flow.request.raw_content
                    encoding = flow.request.headers.get("content-encoding")
                    if encoding:  # decoded in bounded pieces, off the event loop: a bomb holds no flow
                        content = await asyncio.get_running_loop().run_in_executor(
                            DECODING, decode_content, content, encoding)
                    body = read_body(content, self._bodies.get(flow.client_conn.id))
                    self._bodies.put(flow.client_conn.id, body.resume)
                except RewriteError as e:
                    body_problem = str(e)
            else:
                body_problem = "the body is empty"
            members = body.members if body is not None else None
            ours = _headers_set_before(flow) if again else {}
            evidence = Evidence(_evidence_headers(flow.request.headers, rules, ours), members,
                                body.conversation if body is not None else None,
                                flow.client_conn.id, tuple(f for r in rules for f in r.client_fields))
            session, proc = await self.engine.resolve(evidence, seen)
            self.connections.remember(flow.client_conn.id, proc, seen)
            if not again:
                self._count(session, proc, seen.unreadable)
            self._apply(flow, rules, session, proc, body, body_problem, ours,
                        None if proc is not None else seen.unreadable)
            usage.note_request(flow, members)  # the model asked for, for the ledger
        except Exception as e:  # noqa: BLE001 - fail open
            reason = "session resolution took too long" if isinstance(e, asyncio.TimeoutError) else f"{type(e).__name__}: {e}"
            self._warn_once(f"rewrite-{type(e).__name__}", f"request passed on unchanged: {reason}")
            try:
                display.annotate_failure(flow, rules, reason)
            except Exception:  # noqa: BLE001
                pass

    def _apply(self, flow, rules, session: Session, proc, body: Body | None, body_problem, ours=None,
               unreadable: str | None = None) -> None:
        ours = ours or {}
        outcome = apply_rules(rules, session, flow.request.headers, body, body_problem, ours,
                              privacy=self._privacy, fallback_ids=self._fallback)
        for key, message in outcome.warnings:
            self._warn_once(key, message)
        if outcome.body is not None:
            flow.request.content = outcome.body  # re-encodes, fixes content-length
        changes = outcome.changes
        if ours:  # the first pass's header changes still hold
            changes = [c for c in _first_pass_changes(flow) if c["target"] not in {x["target"] for x in changes}] + changes
        display.annotate(flow, session, proc, rules, changes, outcome.skipped, unreadable)

    def _count(self, session: Session, proc: Process | None, unreadable: str | None = None) -> None:
        live = self._live.get(session.id)
        if live is None:
            if len(self._live) >= MAX_LIVE_SESSIONS:
                del self._live[min(self._live, key=lambda k: self._live[k]["last"])]
            live = self._live[session.id] = {"agent": session.agent, "id": session.id, "requests": 0}
        live.update(name=session.name, pid=proc.pid if proc else None, cwd=proc.cwd if proc else None,
                    last=time.time(), source=session.source, unreadable=None if proc else unreadable)
        live["requests"] += 1

    # -- answers: usage, cache hits and cost (usage/recorder.py; never raises) -------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self.usage.responseheaders(flow)

    def response(self, flow: http.HTTPFlow):
        return self.usage.response(flow)  # a coroutine while a compressed answer is decoded

    def error(self, flow: http.HTTPFlow):
        return self.usage.error(flow)

    # -- glue ---------------------------------------------------------------------------------

    @property
    def pipeline(self):
        return self.engine.pipeline

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(f"agent-session-ids: {message}")
