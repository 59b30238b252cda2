"""`agent-session-ids statusline`: Claude Code's `statusLine` command (it pipes its JSON, with the
session's `session_id`, on stdin after every answer), or any script's with `--session ID`.

A session the ledger does not know yet gets a short "no usage yet" and exit 0: Claude Code's
status line never shows an error for it.
"""

from __future__ import annotations

import json
import sys

from ..usage import ledger, statusline
from .place import CliError, Parser

MAX_STDIN = 1 << 20


def session_from(stdin) -> str:
    if stdin is None or stdin.isatty():
        raise CliError("give --session ID, or pipe Claude Code's status JSON (with session_id) on stdin")
    text = stdin.read(MAX_STDIN)
    try:
        status = json.loads(text)
    except ValueError:
        raise CliError("stdin is not JSON: give Claude Code's status JSON (with session_id), or --session ID") \
            from None
    session = status.get("session_id") if isinstance(status, dict) else None
    if not isinstance(session, str) or not session:
        raise CliError("the JSON on stdin has no session_id; give --session ID")
    return session


def main(argv: list[str]) -> int:
    parser = Parser(prog="agent-session-ids statusline",
                    description="One line: the latest turn's cache hit, the cost billed so far, the provider.")
    parser.add_argument("--session", metavar="ID", help="the session (default: session_id of the JSON on stdin)")
    parser.add_argument("--file", metavar="LEDGER", help=f"the ledger (default {ledger.DEFAULT_PATH}, "
                                                         "or $AGENT_SESSION_IDS_USAGE)")
    args = parser.parse_args(argv)
    session = args.session or session_from(sys.stdin)
    print(statusline.line(ledger.path_of(args.file), session))
    return 0
