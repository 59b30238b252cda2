"""One line of the usage ledger, typed: what recorder.py builds and ledger.py's writer encodes.

Its fields, in the order written, are the README's ledger section; the reader's check table
(ledger.FIELDS) names the same fields after `ts` and `session`, in the same order. A field that is
None is left out of the line (the answer did not say: never written as 0); `status` and `stream`
are always written.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(slots=True)
class LedgerLine:
    ts: str  # 2026-11-21T10:00:00.123Z (ledger.timestamp)
    session: str  # the session's ID
    label: str | None = None
    agent: str | None = None
    cwd: str | None = None
    subagent: str | None = None  # where the session sits in a tree
    subagent_kind: str | None = None
    parent: str | None = None
    root: str | None = None  # only beside a parent
    rule: str | None = None  # the rule that set something (else the first that matched)
    host: str | None = None  # the gateway
    model: str | None = None  # asked for by the request
    served_model: str | None = None  # from the answer, as the rest below
    provider: str | None = None
    sent_changed: list[dict] | None = None  # [{target, from, to}]: what this turn sent differently
    status: int = 0
    stream: bool = False
    input_tokens: int | None = None  # all input, cached tokens included
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    output_tokens: int | None = None
    cost: float | None = None  # USD, as the gateway reported it

    def as_dict(self) -> dict:
        """The line as written: its fields in order, those that are None left out."""
        return {name: value for name in NAMES if (value := getattr(self, name)) is not None}


NAMES = tuple(f.name for f in fields(LedgerLine))
