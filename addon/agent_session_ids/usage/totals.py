"""Sums of ledger records per group, and provider flips: shared by the report (from the ledger,
usage/grouping.py adds what its views need) and the live views (the proxy's sessionids.sessions
and summary on exit, top, the status line)."""

from __future__ import annotations

import time

from ..view.units import duration  # noqa: F401 - usage/recorder.py imports it from here

TOKENS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens")


class Totals:
    """One group's figures. A sum stays None until some record knows that figure."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.label: str | None = None
        self.agent: str | None = None
        self.requests = 0
        self.sums: dict[str, int | None] = dict.fromkeys(TOKENS)
        self.cost: float | None = None
        self.cost_requests = 0  # requests whose cost the gateway reported
        self._hit_read = 0  # cache reads and input, over requests that gave both
        self._hit_input = 0
        self.providers: dict[str, int] = {}
        self.models: dict[str, int] = {}
        self.first: float | None = None
        self.last: float | None = None
        self.flips: list[dict] = []
        self.cwd: str | None = None
        # the latest turn's own figures (what top and the status line show beside the sums)
        self.last_input: int | None = None
        self.last_hit: float | None = None
        self.last_model: str | None = None
        self.last_provider: str | None = None
        self.last_flipped = False  # the latest turn was served by another provider than the one before
        # a tree's root (grouped by root): its branches, (session, sub-agent), other than its own
        # turns; and the turns where the ids it sent changed (a rename)
        self.branches: set[tuple[str, str | None]] = set()
        self.sent_changes: list[dict] = []

    def add(self, record: dict, epoch: float) -> None:
        self.requests += 1
        session = record.get("session")
        branch = (str(session), record.get("subagent") or None)
        if branch == (self.key, None) or not self.label:  # a root's label is its own, not a branch's
            self.label = record.get("label") or self.label
            self.agent = record.get("agent") or self.agent
        if branch != (self.key, None) and (record.get("parent") or record.get("subagent")):
            self.branches.add(branch)
        for key in TOKENS:
            value = record.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                self.sums[key] = (self.sums[key] or 0) + value
        cost = record.get("cost")
        if isinstance(cost, (int, float)) and not isinstance(cost, bool):
            self.cost = (self.cost or 0.0) + cost
            self.cost_requests += 1
        ratio = hit_ratio(record)
        if ratio is not None:
            self._hit_read += record["cache_read_tokens"]
            self._hit_input += record["input_tokens"]
        provider = record.get("provider")
        if isinstance(provider, str):
            self.providers[provider] = self.providers.get(provider, 0) + 1
        model = record.get("model") or record.get("served_model")
        if isinstance(model, str):
            self.models[model] = self.models.get(model, 0) + 1
        self.first = epoch if self.first is None else min(self.first, epoch)
        changed = record.get("sent_changed")
        if isinstance(changed, list) and changed:
            self.sent_changes += [
                {**c, "epoch": epoch, "label": record.get("label")} for c in changed if isinstance(c, dict)
            ][:5]
            del self.sent_changes[:-20]
        if self.last is None or epoch >= self.last:
            self.last = epoch
            self._latest(record, branch == (self.key, None), ratio, model, provider)

    def _latest(self, record: dict, own: bool, ratio: float | None, model, provider) -> None:
        """The latest turn's own figures; `own`: the turn is the root's own, not a branch's."""
        if own or self.cwd is None:
            self.cwd = record.get("cwd") or self.cwd
        value = record.get("input_tokens")
        self.last_input = value if isinstance(value, int) and not isinstance(value, bool) else None
        self.last_hit = ratio
        self.last_model = model if isinstance(model, str) else self.last_model
        if isinstance(provider, str):
            self.last_flipped = self.last_provider is not None and provider != self.last_provider
            self.last_provider = provider

    def merge(self, other: Totals) -> None:
        """Add another group's sums into this one (a total, a root of a tree)."""
        self.requests += other.requests
        for k, v in other.sums.items():
            if v is not None:
                self.sums[k] = (self.sums[k] or 0) + v
        if other.cost is not None:
            self.cost = (self.cost or 0.0) + other.cost
        self.cost_requests += other.cost_requests
        self._hit_read += other._hit_read
        self._hit_input += other._hit_input
        for name, n in other.providers.items():
            self.providers[name] = self.providers.get(name, 0) + n
        for name, n in other.models.items():
            self.models[name] = self.models.get(name, 0) + n
        for epoch in (other.first, other.last):
            if epoch is not None:
                self.first = epoch if self.first is None else min(self.first, epoch)
                self.last = epoch if self.last is None else max(self.last, epoch)

    @property
    def cache_hit_ratio(self) -> float | None:
        return self._hit_read / self._hit_input if self._hit_input else None

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            **self.sums,
            "cost": round(self.cost, 10) if self.cost is not None else None,
            "cost_requests": self.cost_requests,
            "cache_hit_ratio": round(self.cache_hit_ratio, 4) if self.cache_hit_ratio is not None else None,
            "providers": dict(self.providers),
        }


def hit_ratio(record: dict) -> float | None:
    """One turn's cache reads ÷ input, when the answer gave both."""
    read, total = record.get("cache_read_tokens"), record.get("input_tokens")
    if isinstance(read, int) and isinstance(total, int) and total > 0:
        return min(1.0, read / total)
    return None


class FlipWatch:
    """Which provider served each session's previous turn: a turn served by another one is a flip,
    with the idle gap since that previous turn (start to start)."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._last: dict[str, tuple[str, float]] = {}  # session -> (provider, epoch of its turn)

    def see(self, session: str, provider: str | None, epoch: float) -> dict | None:
        if not provider:
            return None
        before = self._last.get(session)
        self._last.pop(session, None)
        if len(self._last) >= self.limit:
            del self._last[next(iter(self._last))]
        self._last[session] = (provider, epoch)
        if before is None or before[0] == provider:
            return None
        return {"from": before[0], "to": provider, "idle_s": round(max(0.0, epoch - before[1]), 3)}


class SessionTable:
    """Totals per session, the least recently active forgotten past `limit`, and the provider
    flips found on the way: the proxy's live totals and `top`'s alike."""

    def __init__(self, limit: int = 1000, flips_kept: int = 5) -> None:
        self.limit = limit
        self.flips_kept = flips_kept
        self.sessions: dict[str, Totals] = {}  # in order of last use
        self.watch = FlipWatch(limit=10 * limit)

    def add(self, record: dict, epoch: float) -> dict | None:
        """Counts one turn into its session's tree (its root's totals); the provider flip it makes
        (per session, as each session has its own sticky provider), if any."""
        session = str(record.get("session") or "?")
        key = str(record.get("root") or session)
        totals = self.sessions.pop(key, None)
        if totals is None:
            totals = Totals(key)
            if len(self.sessions) >= self.limit:
                del self.sessions[next(iter(self.sessions))]
        self.sessions[key] = totals
        totals.add(record, epoch)
        flip = self.watch.see(session, record.get("provider"), epoch)
        if flip is not None:
            totals.flips.append({**flip, "when": time.strftime("%H:%M:%S", time.localtime(epoch))})
            del totals.flips[: -self.flips_kept]
        return flip

    def active(self, since: float | None = None) -> list[Totals]:
        return [g for g in self.sessions.values() if since is None or (g.last or 0) >= since]
