"""The status line: one short line for one session, from the ledger, fast enough to run after
every answer (Claude Code's `statusLine` command): only the session's own lines are parsed
(lookup.py)."""

from __future__ import annotations

from ..view.units import money, percent
from . import ledger
from .lookup import records_naming
from .totals import Totals

NO_DATA = "no usage yet"


def line(path: str, session: str) -> str:
    """`cache 92% · $0.0421 · Anthropic`: the latest turn's cache hit, the cost billed so far, and
    the latest provider (`⚠ Google, was Anthropic` when the latest turn changed provider)."""
    tally = ledger.Tally()
    records = sorted(
        records_naming({session}, [(name, None) for name in ledger.files(path)], tally), key=lambda r: r["_epoch"]
    )
    # the session's own lines that could not be read: its figures lack them, and it is said
    skipped = f" · {tally.skipped + tally.fields} skipped" if tally.skipped or tally.fields else ""
    if not records:
        return NO_DATA + skipped
    totals = Totals(session)
    before: str | None = None  # the provider of the turn before the latest provider change
    for record in records:
        provider = record.get("provider")
        if isinstance(provider, str) and totals.last_provider not in (None, provider):
            before = totals.last_provider
        totals.add(record, record["_epoch"])
    cost = money(totals.cost) + ("*" if totals.cost is not None and totals.cost_requests < totals.requests else "")
    provider = totals.last_provider or "-"
    if totals.last_flipped:
        provider = f"⚠ {provider}, was {before}"
    return f"cache {percent(totals.last_hit)} · {cost} · {provider}{skipped}"
