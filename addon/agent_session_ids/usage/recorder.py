"""The proxy's side of the usage ledger: what the addon's hooks hand over to.

- ``responseheaders``: an SSE answer to a request a rule rewrote gets a StreamObserver as its
  ``stream`` callable, so it reaches the client chunk by chunk while its usage is read;
- ``response`` (and ``error``, for a stream cut short): the figures are read (from the observer,
  or from the answer mitmproxy holds, and from its headers), one ledger line is queued, the flow's
  comment and metadata get the turn's figures, the session's live totals are updated, and a
  provider flip is said once in the log.

Fail open: any failure here is logged once and the answer passes on unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping

from ..decoding import decoding_pool, is_encoded
from ..flow_state import FlowState
from ..rules.matching import gateway_host
from ..view import display
from . import ledger as ledger_mod
from . import live_view
from .ledger_line import LedgerLine
from .observer import SETTLE_S, StreamObserver, TailObserver, TooLarge, Unsupported, decode_bounded
from .parse import Usage, from_headers, from_json, from_sse
from .totals import SessionTable, Totals, duration, hit_ratio

logger = logging.getLogger("agent_session_ids")

MAX_SESSIONS = 1000  # live totals kept; the oldest is dropped past it
MAX_OPEN_STREAMS = 10_000  # observers of answers still streaming
MAX_JSON_BYTES = 64 << 20  # a held answer larger than this is not parsed
SUMMARY_SESSIONS = 20  # sessions in the summary on exit (one screen)
_NOT_FIGURES = frozenset(
    (
        "ts",
        "session",
        "label",
        "agent",
        "cwd",
        "rule",
        "host",
        "subagent",
        "subagent_kind",
        "parent",
        "root",
        "sent_changed",
    )
)  # not the turn's own


def is_sse(response) -> bool:
    for name, value in response.headers.fields:  # one pass; Headers.get scans them all too, per name
        if name.lower() == b"content-type":
            return value.lstrip()[:17].lower() == b"text/event-stream"
    return False


def _decode_held(response) -> tuple[bytes | None, tuple[str, str] | None]:
    """An answer mitmproxy held whole, decoded in bounded pieces (a compressed bomb stops at
    MAX_JSON_BYTES): (content, None), or (None, (key, why)) to be said once. Runs on the decoding pool."""
    raw = response.raw_content
    if not raw or len(raw) > MAX_JSON_BYTES:
        return None, None
    try:
        return decode_bounded(response.headers.get("content-encoding"), raw, MAX_JSON_BYTES), None
    except TooLarge as e:
        return None, ("usage-too-large", f"an answer is too large to read its usage ({e})")
    except Unsupported as e:
        return None, (f"usage-encoding-{e}", f"usage of answers with content-encoding {e} is not read")
    except Exception as e:  # a corrupt body: the decoders raise their own errors
        return None, (
            "usage-decode",
            f"an answer's content-encoding could not be decoded ({e!r}); its usage is not read",
        )


def _usage_of_held(response, content: bytes) -> Usage:
    if is_sse(response):
        return from_sse(content)
    if content.lstrip()[:1] != b"{":
        return Usage()
    try:
        return from_json(json.loads(content))
    except (ValueError, RecursionError):
        return Usage()


def _line(flow, state: FlowState, usage: Usage, ts: str) -> LedgerLine:
    """The ledger line of one answered turn, from what the rewrite decided (`state`) and the answer."""
    session = state.session
    assert session is not None  # state.rewritten
    tree = bool(session.subagent or session.parent)  # its place in a tree: only where it has one
    changes, rules = state.changes, state.rules
    return LedgerLine(
        ts=ts,
        session=session.id,
        label=session.label,
        agent=session.agent,
        cwd=state.cwd,
        subagent=session.subagent if tree else None,
        subagent_kind=session.subagent_kind if tree else None,
        parent=session.parent if tree else None,
        root=(session.root or session.id) if tree and session.parent else None,
        rule=changes[0].get("rule") if changes else (rules[0].name if rules else None),
        host=gateway_host(flow),
        model=state.model,
        served_model=usage.served_model,
        provider=usage.provider,
        status=flow.response.status_code,
        stream=is_sse(flow.response),
        input_tokens=usage.input_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        output_tokens=usage.output_tokens,
        cost=usage.cost,
    )


class Recorder:
    def __init__(self, warn: Callable[[str, str], None]) -> None:
        self.warn = warn  # (key, message): logged once per key
        self.enabled = False
        self.path: str | None = None
        self.ledger: ledger_mod.Ledger | None = None
        self._streams: dict[str, StreamObserver] = {}
        self.live = SessionTable(MAX_SESSIONS)
        self._sent: dict[str, dict] = {}  # per session and sub-agent: what its last turn sent, per target
        self.decoding = decoding_pool()  # compressed answers are decoded there, never on the event loop
        self.clock = ledger_mod.Clock()  # the records' ts
        # flow -> what the rewrite decided (SessionIds' FlowStates): the flows it rewrote are read
        self.states: Mapping = {}

    # -- options ----------------------------------------------------------------------------------

    def configure(self, enabled: bool, path: str, confdir: str) -> None:
        path = (
            os.path.expanduser(path)
            if path
            else os.path.join(os.path.expanduser(confdir), "agent-session-ids", "usage.jsonl")
        )
        if not enabled:
            self.close()
            self.enabled, self.path = False, None
            return
        self.enabled = True
        if path != self.path:
            self.close()
            self.path = path
            self.ledger = ledger_mod.Ledger(path, on_error=self.warn)

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None

    def done(self) -> None:
        """The summary per session (one screen), then the ledger is written out. Never raises."""
        try:
            if self.sessions:
                logger.info("agent-session-ids: usage this run\n" + "\n".join(self.summary()))
        except Exception as e:
            logger.warning(f"agent-session-ids: no usage summary: {e!r}")
        try:
            self.close()
        except Exception as e:
            logger.warning(f"agent-session-ids: could not write out the usage ledger: {e!r}")

    # -- hooks ------------------------------------------------------------------------------------

    def responseheaders(self, flow) -> None:
        try:
            if not self.enabled or flow.is_replay or self._rewritten(flow) is None:
                return
            response = flow.response
            if response.raw_content is not None:
                return  # an answer an addon set whole (mitmproxy emulates this hook): read in `response`
            sse = is_sse(response)
            if not sse and not response.stream:
                return  # a JSON answer: mitmproxy holds it as it would anyway; read in `response`
            inner = response.stream if callable(response.stream) else None
            kind = StreamObserver if sse else TailObserver
            try:
                observer = kind(response.headers.get("content-encoding"), inner, self.decoding)
            except Unsupported as e:
                self.warn(f"usage-encoding-{e}", f"usage of streamed answers with content-encoding {e} is not read")
                return
            if len(self._streams) >= MAX_OPEN_STREAMS:
                self._streams.pop(next(iter(self._streams)))
            response.stream = observer
            self._streams[flow.id] = observer
        except Exception as e:  # fail open
            self.warn(f"usage-headers-{type(e).__name__}", f"reading usage failed ({e!r}); the answer passes unchanged")

    def response(self, flow):
        """Records the answer now, or returns a coroutine for mitmproxy to await when a compressed
        answer is still being decoded on the decoding pool (never on the event loop)."""
        observer = self._streams.pop(flow.id, None)
        try:
            if not self.enabled or flow.is_replay or flow.response is None:
                return None
            state = self._rewritten(flow)
            if state is None:
                return None
            if observer is not None and observer.decode is not None:
                return self._record_when_decoded(flow, state, observer)
            response = flow.response
            if observer is None and response.raw_content and is_encoded(response.headers.get("content-encoding")):
                return self._record_when_decoded(flow, state, None)
            self._record(flow, state, observer)
        except Exception as e:  # fail open
            self.warn(f"usage-{type(e).__name__}", f"reading usage failed ({e!r}); the answer passes unchanged")
        return None

    async def _record_when_decoded(self, flow, state: FlowState, observer: StreamObserver | None) -> None:
        try:
            held = None
            if observer is not None:
                with contextlib.suppress(TimeoutError):  # observer.result() says so
                    await asyncio.wait_for(asyncio.wrap_future(observer.settled()), SETTLE_S)
            else:
                held = await asyncio.get_running_loop().run_in_executor(self.decoding, _decode_held, flow.response)
            self._record(flow, state, observer, held)
        except Exception as e:  # fail open
            self.warn(f"usage-{type(e).__name__}", f"reading usage failed ({e!r}); the answer passes unchanged")

    def error(self, flow):
        """A stream cut short: record what it said before it broke."""
        if flow.id in self._streams:
            return self.response(flow)
        return None

    def _rewritten(self, flow) -> FlowState | None:
        """What the rewrite decided for this flow, when it resolved a session and applied the rules."""
        state = self.states.get(flow)
        return state if state is not None and state.rewritten else None

    # -- the figures --------------------------------------------------------------------------------

    def _figures(self, flow, observer: StreamObserver | None, held: tuple | None) -> Usage:
        response = flow.response
        if observer is not None:
            if response.stream is not observer and not observer.bytes:
                self.warn(
                    "usage-stream-replaced",
                    "another addon replaced the stream callable of an answer after this one; its usage is not read",
                )
            usage = observer.result(0)  # its decoding has settled (or took too long)
            if observer.failure:
                self.warn(
                    f"usage-read-{observer.failure[:40]}",
                    f"the usage of a streamed answer could not be read: {observer.failure}",
                )
        elif response.raw_content is None:
            self.warn(
                "usage-late-stream",
                "an answer was streamed by mitmproxy (stream_large_bodies) once it had started; its usage is not read",
            )
            usage = Usage()
        else:
            content, problem = held if held is not None else _decode_held(response)
            if problem is not None:
                self.warn(*problem)
            usage = _usage_of_held(response, content) if content else Usage()
        # Opper and Fireworks: the figures in headers win (a stream has no cost header)
        return usage.update(from_headers(response.headers))

    def _record(self, flow, state: FlowState, observer: StreamObserver | None, held: tuple | None = None) -> None:
        ts = self.clock.timestamp(flow.request.timestamp_start or time.time())
        line = _line(flow, state, self._figures(flow, observer, held), ts)
        line.sent_changed = self._sent_changes(line, state.changes) or None
        if self.ledger is not None:
            self.ledger.append(line)
        record = line.as_dict()
        flip = self.live.add(record, flow.request.timestamp_start or time.time())
        if flip is not None:
            logger.warning(
                f"agent-session-ids: session {line.label or line.session} was served by "
                f"{flip['to']}, its previous turn by {flip['from']} ({duration(flip['idle_s'])} before): "
                f"a provider flip loses the prompt cache"
            )
        figures = {k: v for k, v in record.items() if k not in _NOT_FIGURES}
        ratio = hit_ratio(record)
        if ratio is not None:
            figures["cache_hit_ratio"] = round(ratio, 4)
        if flip is not None:
            figures["provider_flip"] = flip
        display.annotate_usage(flow, figures)

    def _sent_changes(self, line: LedgerLine, changes: list[dict]) -> list[dict]:
        """What this turn sent differently from its branch's previous turn (a rename, with
        session_rename follow): [{target, from, to}]."""
        key = f"{line.session}/{line.subagent or ''}"
        sent = {c["target"]: c.get("after") for c in changes if isinstance(c, dict) and "target" in c}
        before = self._sent.pop(key, None)
        if len(self._sent) >= MAX_SESSIONS:
            del self._sent[next(iter(self._sent))]
        self._sent[key] = {**(before or {}), **sent}
        if not before:
            return []
        return [{"target": t, "from": before[t], "to": v} for t, v in sent.items() if t in before and before[t] != v]

    # -- live totals ----------------------------------------------------------------------------------

    @property
    def sessions(self) -> dict[str, Totals]:
        return self.live.sessions

    def table(self, width: int = 120) -> list[str]:
        """The sessions of this run as `top` shows them, and their provider flips."""
        sessions = list(self.sessions.values())
        return live_view.lines(sessions, time.time(), width) + live_view.flip_lines(sessions)

    def summary(self) -> list[str]:
        sessions = list(self.sessions.values())
        lines = live_view.lines(sessions, time.time(), 120, limit=SUMMARY_SESSIONS)
        lines += live_view.flip_lines(sorted(sessions, key=lambda g: -(g.last or 0))[:SUMMARY_SESSIONS])
        if self.path:
            lines.append(f"ledger: {self.path} (agent-session-ids report, agent-session-ids top)")
        return lines
