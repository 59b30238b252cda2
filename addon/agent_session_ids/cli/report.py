"""`agent-session-ids report`: the usage report. It reads the ledger the proxy writes and sums it per
session, day, week, month, model, project or agent, the views people know from ccusage, with what
the gateway billed.

    agent-session-ids report [--by session|day|week|month|model|project|agent] [--breakdown]
                             [--since 2h|7d|2026-11-21] [--until ...] [--timezone Europe/Berlin]
                             [--session ID] [--compact] [--json] [--html FILE] [--file LEDGER]

(also ``agent-session-ids-report`` and ``python -m agent_session_ids.report``). The ledger defaults to
``~/.mitmproxy/agent-session-ids/usage.jsonl`` and its rotated files. The groups are made in
usage/grouping.py, the times read in usage/timespec.py, and shown by usage/render_text.py,
render_json.py and render_html.py.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from datetime import tzinfo

from ..shown import shown_lines
from ..usage import ledger
from ..usage.grouping import BUCKETS, group, session_turns
from ..usage.render_html import as_html, session_html
from ..usage.render_json import as_json, session_json
from ..usage.render_text import session_text, text
from ..usage.timespec import parse_moment, zone_of
from .place import Parser

DEFAULT_LEDGER = ledger.DEFAULT_PATH
COMPACT_BELOW = 100  # a terminal narrower than this gets the compact table


class _Parser(Parser):  # its choices' "did you mean" from the commands' parser; its own exit 2
    def error(self, message: str):  # one line, no usage block
        print(f"{self.prog}: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def _compact_wanted(args) -> bool:
    if args.compact:
        return True
    return sys.stdout.isatty() and shutil.get_terminal_size((120, 24)).columns < COMPACT_BELOW


def _parser() -> _Parser:
    parser = _Parser(
        prog="agent-session-ids report",
        description="Usage, cache hits and what the gateway billed, per agent session, day, week, month, model, "
        "project or agent, from the ledger agent-session-ids writes.",
    )
    parser.add_argument(
        "--by",
        choices=tuple(BUCKETS),
        default="session",
        help="group by session (default), day, week (from Monday), month, model, project (the "
        "session's folder) or agent",
    )
    parser.add_argument("--breakdown", action="store_true", help="each group's figures per model, under it")
    parser.add_argument(
        "--tree",
        action="store_true",
        help="by session: each sub-agent's and child session's own figures, under its root",
    )
    parser.add_argument("--session", metavar="ID", help="one session's turns (its id, or its label)")
    parser.add_argument("--since", help="only turns since then: 2h, 30m, 7d, 1w, or a date such as 2026-11-21")
    parser.add_argument("--until", help="only turns until then (a bare date includes that day)")
    parser.add_argument(
        "--timezone",
        metavar="ZONE",
        help="the IANA time zone of days, weeks, months and bare dates (default: the local one)",
    )
    parser.add_argument("--compact", action="store_true", help="the narrow table (the default under 100 columns)")
    parser.add_argument("--json", action="store_true", help="one JSON object per group")
    parser.add_argument("--html", metavar="FILE", help="write a one-page HTML report (inline SVG, no scripts)")
    parser.add_argument(
        "--file",
        metavar="LEDGER",
        action="append",
        help=f"the ledger (default {DEFAULT_LEDGER}, or $AGENT_SESSION_IDS_USAGE); give it "
        "again to read several in one report (another machine's, say)",
    )
    return parser


def report(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    paths = [ledger.path_of(given) for given in args.file or [None]]
    try:
        zone = zone_of(args.timezone)
        since = parse_moment(args.since, zone=zone) if args.since else None
        until = parse_moment(args.until, zone=zone, option="--until", end_of_day=True) if args.until else None
    except ValueError as e:
        parser.error(str(e))
    missing = [path for path in paths if not ledger.files(path)]
    if missing:
        print(
            f"no usage ledger at {missing[0]}: nothing was recorded yet (the proxy writes it when a rule rewrites a "
            "request; see session_usage_file)",
            file=sys.stderr,
        )
        return 1
    reading = ledger.Reading()  # one count over all the files
    records = [record for path in paths for record in reading.records(path, since, until)]
    skipped = reading.said()
    if skipped and (args.json or args.html or args.session):  # text views say it themselves
        print(f"agent-session-ids report: {skipped}", file=sys.stderr)
    if args.session:
        return _one_session(args, records, zone)
    groups = group(records, args.by, keep_turns=bool(args.html), zone=zone, breakdown=args.breakdown, tree=args.tree)
    if args.html and not _write(args.html, as_html(groups, args.by, since, until, zone)):
        return 1
    if args.json:
        print(json.dumps(as_json(groups, args.by), indent=2, ensure_ascii=False))
    elif not args.html:
        print(shown_lines(text(groups, args.by, skipped, compact=_compact_wanted(args)).split("\n")))
    else:
        print(f"wrote {args.html}: {len(groups)} {args.by} groups, {len(records)} requests")
    return 0


def _write(path: str, page: str) -> bool:
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as e:
        print(f"agent-session-ids report: cannot write --html {path}: {e.strerror or e}", file=sys.stderr)
        return False
    return True


def _one_session(args, records: list[dict], zone: tzinfo | None) -> int:
    turns = session_turns(records, args.session)
    if not turns:
        print(
            f"agent-session-ids report: no turns recorded for session {args.session!r} (see the sessions with "
            "agent-session-ids report)",
            file=sys.stderr,
        )
        return 1
    if args.html and not _write(args.html, session_html(turns, zone)):
        return 1
    if args.json:
        print(json.dumps(session_json(turns, zone), indent=2, ensure_ascii=False))
    elif not args.html:
        print(shown_lines(session_text(turns, zone, compact=_compact_wanted(args)).split("\n")))
    else:
        print(f"wrote {args.html}: {len(turns)} turns")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The report, quiet when its reader goes away (``... | head``): the console script's entry."""
    try:
        return report(argv)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
