"""The report's times: spans and dates given on the command line (``--since 2h``,
``--until 2026-11-21``), time zones, and the day, week and month a turn falls in."""

from __future__ import annotations

import re
import time
from datetime import date, datetime, timedelta, tzinfo

_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def span_seconds(text: str) -> float | None:
    """``2h``, ``30m``, ``7d``, ``1w`` in seconds; None if it is not a span."""
    m = _SPAN.match(text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def zone_of(name: str | None) -> tzinfo | None:
    """An IANA time zone; None for the local one."""
    if not name:
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"--timezone {name!r} is no IANA time zone: give one such as Europe/Berlin or UTC "
            "(on Windows: pip install tzdata)"
        ) from None


def parse_moment(
    text: str, now: float | None = None, zone: tzinfo | None = None, option: str = "--since", end_of_day: bool = False
) -> float:
    """A span back from now (``2h``, ``7d``), or a date or date-time (``2026-11-21``,
    ``2026-11-21T10:00``) in `zone` (local by default), or an ISO time with its own zone. With
    `end_of_day`, a bare date means the end of that day (``--until 2026-11-21`` includes it)."""
    now = time.time() if now is None else now
    seconds = span_seconds(text)
    if seconds is not None:
        return now - seconds
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{option} {text!r}: give a span such as 2h, 30m, 7d, or a date such as 2026-11-21") from None
    if end_of_day and len(text.strip()) == 10:
        moment += timedelta(days=1, microseconds=-1)
    if moment.tzinfo is None and zone is not None:
        moment = moment.replace(tzinfo=zone)
    return moment.timestamp()  # naive: local time


def _local(epoch: float, zone: tzinfo | None) -> datetime:
    return datetime.fromtimestamp(epoch, zone) if zone is not None else datetime.fromtimestamp(epoch)


def day_of(epoch: float, zone: tzinfo | None = None) -> str:
    return _local(epoch, zone).strftime("%Y-%m-%d")


def week_of(epoch: float, zone: tzinfo | None = None) -> str:
    """The Monday the (ISO) week starts on."""
    day: date = _local(epoch, zone).date()
    return (day - timedelta(days=day.weekday())).isoformat()


def month_of(epoch: float, zone: tzinfo | None = None) -> str:
    return _local(epoch, zone).strftime("%Y-%m")


def when(epoch: float, zone: tzinfo | None = None) -> str:
    return _local(epoch, zone).strftime("%Y-%m-%d %H:%M:%S")
