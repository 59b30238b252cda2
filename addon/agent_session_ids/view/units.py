"""How figures read: durations, token counts, ratios and money, in the view, the log and the
reports alike."""

from __future__ import annotations


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600:02d}h"


def tokens(value: int | None) -> str:
    if value is None:
        return "-"
    if value < 10_000:
        return str(value)
    if value < 1_000_000:
        return f"{value / 1000:.1f}k"
    return f"{value / 1_000_000:.2f}M"


def percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.0f}%"


def money(cost: float | None) -> str:
    if cost is None:
        return "-"
    if cost < 1:
        return f"${cost:.4f}"
    return f"${cost:,.2f}"
