"""What the rewrite decided for one flow, as one typed record: written by the request's way
(request_flow.py), read by the view (view/display.py, which writes the user's
flow.metadata["session_ids"] from it), by the second pass and by the ledger (usage/recorder.py).

The records live in a FlowStates table beside the flows, not in flow.metadata: mitmproxy
deep-copies metadata with each get_state(), writes it with each saved flow (tnetstring, which
refuses an object of ours), prints its repr in the console's flow details and matches ~meta
against its text. A weak key makes a record live exactly as long as mitmproxy keeps its flow
(mitmdump: until the answer is read; mitmweb: while the flow is listed), with nothing to forget.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .shown import safe_text

if TYPE_CHECKING:
    from mitmproxy import http

    from .resolution.model import Process, Session
    from .rules import Rule

MAX_MODEL = 200  # a longer `model` is not believed, and not kept


@dataclass(slots=True)
class FlowState:
    """One pass of the rewrite over a flow. Holds no reference to the flow (its key in FlowStates)."""

    rules: list[Rule]  # the rules that matched
    streamed: bool = False  # this pass ran before the body (requestheaders): `request` may run a second
    second: bool = False  # this is the second pass: the first one's record was there
    session: Session | None = None
    process: Process | None = None
    unreadable: str | None = None  # why the process was not read (process is None)
    changes: list[dict] = field(default_factory=list)  # what was set: {"rule", "target", "before", "after"}
    skipped: list[str] = field(default_factory=list)  # what was not set, and why
    set_headers: dict[str, str] = field(default_factory=dict)  # lower-case name -> value: ours, not a client's
    model: str | None = None  # the model the request's body asked for
    error: str | None = None  # why the flow passed on unchanged (then no session)

    @property
    def rewritten(self) -> bool:
        """A session was resolved and the rules applied (the ledger reads such flows' answers)."""
        return self.error is None and self.session is not None

    @property
    def cwd(self) -> str | None:
        """The session's folder: its file's word first, else the process's."""
        if self.session is not None and self.session.cwd:
            return self.session.cwd
        return self.process.cwd if self.process is not None else None


class FlowStates(weakref.WeakKeyDictionary["http.HTTPFlow", FlowState]):
    """Each flow's latest FlowState, for as long as the flow lives (see the module's note)."""


def model_asked(members: dict | None) -> str | None:
    """The model a request's JSON body asks for, as UTF-8 (the ledger, a saved flow) can hold it."""
    model = members.get("model") if isinstance(members, dict) else None
    if isinstance(model, str) and model and len(model) <= MAX_MODEL:
        return safe_text(model)
    return None
