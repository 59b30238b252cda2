"""One request's way through the addon: its body read, its evidence gathered, its session
resolved, the rules applied and the flow annotated. The mitmproxy side of the pipeline, handed a
flow by SessionIds' hooks; every other part is reached through its public methods.

Two passes: a body that mitmproxy streams is forwarded before `request` runs, so its header
rules are applied in `requestheaders` from what the headers and the process say; a body that
could have streamed but did not is handled again in `request`, for the body rules.
Fail open: whatever goes wrong, the request passes on unmodified and the reason is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from mitmproxy import http

from .connections import Connections
from .decoding import decoding_pool, is_encoded
from .flow_state import FlowState, FlowStates, model_asked
from .live import LiveSessions
from .resolution import agents
from .resolution.model import Evidence
from .resolution.runner import Runner
from .rewrite.apply import apply_rules
from .rewrite.body import Body, Resumes, decode_content, read_body
from .rewrite.fields import RewriteError
from .rules import Rule
from .view import display

_EVIDENCE_NAMES = frozenset(agents.EVIDENCE_HEADERS)


def may_stream(flow: http.HTTPFlow, limit: int | None) -> bool:
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


def evidence_headers(request_headers, rules: list[Rule], ours: dict[str, str]) -> dict[str, str]:
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


class RequestFlow:
    def __init__(
        self,
        runner: Runner,
        connections: Connections,
        live: LiveSessions,
        states: FlowStates,
        warn_once: Callable[[str, str], None],
    ) -> None:
        self.runner = runner
        self.connections = connections
        self.live = live
        self.states = states  # flow -> what its last pass decided (the second pass, the view and the ledger read it)
        self._warn_once = warn_once
        self._bodies = Resumes()  # per connection: where its last body's conversation ended
        self._decoding = decoding_pool()  # compressed bodies are decoded there
        self.privacy, self.fallback = False, True

    def forget_connection(self, connection_id: str) -> None:
        self._bodies.forget(connection_id)

    async def handle(
        self, flow: http.HTTPFlow, rules: list[Rule], streamed: bool, first: FlowState | None = None
    ) -> None:
        """One pass over the flow; `first`: the first pass's record, when this is the second."""
        state = FlowState(rules, streamed=streamed, second=first is not None)
        try:
            seen = await self.connections.process_of(flow.client_conn)
            body, body_problem = await self._body(flow, streamed)
            members = body.members if body is not None else None
            ours = first.set_headers if first is not None else {}
            client_fields = tuple(f for r in rules for f in r.client_fields)
            evidence = Evidence(
                evidence_headers(flow.request.headers, rules, ours),
                members,
                body.conversation if body is not None else None,
                flow.client_conn.id,
                client_fields,
            )
            state.session, state.process = await self.runner.resolve(evidence, seen)
            self.connections.remember(flow.client_conn.id, state.process, seen)
            if first is None:
                self.live.count(state.session, state.process, seen.unreadable)
            state.unreadable = None if state.process is not None else seen.unreadable
            self._apply(flow, state, body, body_problem, first)
            state.model = model_asked(members)  # for the ledger
            self.states[flow] = state
            display.annotate(flow, state)
        except Exception as e:  # fail open
            timed_out = isinstance(e, asyncio.TimeoutError)
            reason = "session resolution took too long" if timed_out else f"{type(e).__name__}: {e}"
            self._warn_once(f"rewrite-{type(e).__name__}", f"request passed on unchanged: {reason}")
            failed = self.states[flow] = FlowState(rules, streamed=streamed, second=first is not None, error=reason)
            with contextlib.suppress(Exception):
                display.annotate(flow, failed)

    async def _body(self, flow: http.HTTPFlow, streamed: bool) -> tuple[Body | None, str | None]:
        """The request's JSON body as read, or why there is none to rewrite."""
        raw = flow.request.raw_content
        if streamed or raw is None:
            return None, "the body is streamed"
        if not raw:
            return None, "the body is empty"
        try:
            encoding = flow.request.headers.get("content-encoding")
            if is_encoded(encoding):  # decoded in bounded pieces, off the event loop: a bomb holds no flow
                raw = await asyncio.get_running_loop().run_in_executor(self._decoding, decode_content, raw, encoding)
            body = read_body(raw, self._bodies.get(flow.client_conn.id))
        except RewriteError as e:
            return None, str(e)
        self._bodies.put(flow.client_conn.id, body.resume)
        return body, None

    def _apply(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        body: Body | None,
        body_problem: str | None,
        first: FlowState | None,
    ) -> None:
        """The rules applied for the resolved session: what was set and skipped goes in `state`."""
        assert state.session is not None  # resolved
        outcome = apply_rules(
            state.rules,
            state.session,
            flow.request.headers,
            body,
            body_problem,
            first.set_headers if first is not None else {},
            privacy=self.privacy,
            fallback_ids=self.fallback,
        )
        for key, message in outcome.warnings:
            self._warn_once(key, message)
        if outcome.body is not None:
            flow.request.content = outcome.body  # re-encodes, fixes content-length
        state.changes, state.skipped, state.set_headers = outcome.changes, outcome.skipped, outcome.set_headers
        if first is not None and first.changes:  # the first pass's header changes still hold
            targets = {x["target"] for x in state.changes}
            state.changes = [c for c in first.changes if c["target"] not in targets] + state.changes
