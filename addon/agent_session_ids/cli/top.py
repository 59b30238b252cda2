"""`agent-session-ids top`: the sessions active in the last hour, live, as htop shows processes.

It reads the ledger the proxy appends to, once a second, and only what was appended
(usage/live_ledger.py). `q` quits; a resize redraws. `--once` prints one frame and exits.

The terminal is driven with the standard library's curses: no dependency, and all a table that
redraws once a second needs.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time

from ..usage import ledger, live_view
from ..usage.live_ledger import LiveLedger
from ..view.units import duration
from .place import CliError, Parser

QUIT_KEYS = (ord("q"), ord("Q"))
# a terminal whose locale cannot show the marks (LANG=C) gets these, so a flip stays marked
ASCII_MARKS = str.maketrans({"⚠": "!", "·": "-", "…": "~", "→": ">", "↻": "*"})
MIN_WIDTH = 20  # narrower, no column shows a figure


def parse_window(text: str) -> float:
    from ..usage.timespec import span_seconds

    seconds = span_seconds(text)
    if seconds is None or seconds <= 0:
        raise CliError(f"--window {text!r}: give a span such as 30m, 1h or 1d")
    return seconds


def frame(live: LiveLedger, now: float, width: int, height: int | None = None) -> list[str]:
    """The header, the table and a hint line, for a terminal `width` wide (and `height` high)."""
    sessions = live.sessions(now)
    head = (
        f"agent-session-ids top · {live_view.count(len(sessions), 'session')} active in the last "
        f"{duration(live.window)} · "
        f"{time.strftime('%H:%M:%S', time.localtime(now))}"
    )
    note = f" · {live.said()}" if live.said() else ""
    path_room = max(2, width - len("ledger ") - len(note))  # a long path gives way to what was skipped
    path = live.path if len(live.path) <= path_room else "…" + live.path[len(live.path) - path_room + 1 :]
    lines = [head, f"ledger {path}{note}"]
    if not live.exists():
        lines += ["", "nothing recorded yet: the proxy writes the ledger when a rule rewrites a request"]
    elif not sessions:
        lines += ["", f"nothing recorded in the last {duration(live.window)}"]
    else:
        # the other lines: header, ledger, blank, column titles, totals, blank, hint (and "… more")
        room = None if height is None else max(1, height - 7 if len(sessions) <= height - 7 else height - 8)
        lines += ["", *live_view.lines(sessions, now, width, limit=room)]
    lines += ["", "q quit · HIT: last turn's cache hit, SESS: the session's · ⚠ provider changed"]
    return [live_view.cut(line, width) for line in lines]


def _marks(encoding: str):
    """None where the terminal's encoding shows the marks, else the table to ASCII ones."""
    try:
        "".join(chr(c) for c in ASCII_MARKS).encode(encoding)
        return None
    except (UnicodeEncodeError, LookupError):
        return ASCII_MARKS


def _draw(screen, live: LiveLedger, marks=None) -> None:
    import curses

    height, width = screen.getmaxyx()
    screen.erase()
    for y, text in enumerate(frame(live, time.time(), width, height)[:height]):
        # the bottom-right cell (curses cannot move past it), or a character it cannot show
        with contextlib.suppress(curses.error):
            screen.addnstr(y, 0, text.translate(marks) if marks else text, width)
    screen.refresh()


def _loop(screen, live: LiveLedger, interval: float, marks=None) -> None:
    import curses

    with contextlib.suppress(curses.error):
        curses.curs_set(0)  # no cursor over the table
    screen.timeout(int(interval * 1000))
    next_refresh = 0.0
    while True:
        now = time.time()
        if now >= next_refresh:
            live.refresh(now)
            next_refresh = now + interval
        _draw(screen, live, marks)
        key = screen.getch()
        if key in QUIT_KEYS:
            return
        if key == curses.KEY_RESIZE:
            curses.update_lines_cols()


def main(argv: list[str]) -> int:
    parser = Parser(prog="agent-session-ids top", description="The sessions active lately, live, from the ledger.")
    parser.add_argument("--window", default="1h", help="the sessions active in this span (default 1h)")
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.add_argument("--width", type=int, help="with --once: the width to fit (default: the terminal's)")
    parser.add_argument(
        "--file", metavar="LEDGER", help=f"the ledger (default {ledger.DEFAULT_PATH}, or $AGENT_SESSION_IDS_USAGE)"
    )
    args = parser.parse_args(argv)
    if args.width is not None and args.width < MIN_WIDTH:
        raise CliError(f"--width {args.width}: give at least {MIN_WIDTH} columns")
    live = LiveLedger(ledger.path_of(args.file), parse_window(args.window))
    try:
        if args.once:
            now = time.time()
            live.refresh(now)
            text = "\n".join(frame(live, now, args.width or shutil.get_terminal_size((100, 24)).columns))
            marks = _marks(sys.stdout.encoding or "utf-8")
            if marks:  # and a label it cannot show comes out as "?"
                sys.stdout.reconfigure(errors="replace")  # type: ignore[union-attr]
            print(text.translate(marks) if marks else text)
            return 0
        import curses
        import locale

        locale.setlocale(locale.LC_ALL, "")  # curses shows UTF-8 (⚠, …) only with the user's locale
        try:
            # curses writes in the C library's locale, which Python's UTF-8 mode does not change
            codeset = locale.nl_langinfo(locale.CODESET) if hasattr(locale, "nl_langinfo") else "utf-8"
            curses.wrapper(_loop, live, 1.0, _marks(codeset))
        except curses.error as e:
            raise CliError(f"cannot drive this terminal ({e}); try --once") from None
        return 0
    finally:
        live.close()
