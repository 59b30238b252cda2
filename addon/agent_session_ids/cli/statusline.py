"""`agent-session-ids statusline`: Claude Code's `statusLine` command (it pipes its JSON, with the
session's `session_id`, on stdin after every answer), or any script's with `--session ID`.

A session the ledger does not know yet gets a short "no usage yet" and exit 0: Claude Code's
status line never shows an error for it.
"""

from __future__ import annotations

import json
import sys

from ..shown import shown
from ..usage import ledger, statusline
from .errors import CliError

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


USAGE = """usage: agent-session-ids statusline [--session ID] [--file LEDGER]

One line: the latest turn's cache hit, the cost billed so far, the provider.
  --session ID     the session (default: session_id of the JSON on stdin, as Claude Code sends it)
  --file LEDGER    the ledger (default ~/.mitmproxy/agent-session-ids/usage.jsonl, or $AGENT_SESSION_IDS_USAGE)"""


def parse(argv: list[str]) -> dict[str, str]:
    """Its two options, read by hand: argparse alone would cost this command a tenth of its time."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name not in ("--session", "--file"):
            raise CliError(f"statusline: unknown argument {arg!r} (see agent-session-ids statusline --help)")
        if not eq:
            i += 1
            if i == len(argv):
                raise CliError(f"statusline: {name} needs a value")
            value = argv[i]
        out[name[2:]] = value
        i += 1
    return out


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    args = parse(argv)
    session = args.get("session") or session_from(sys.stdin)
    print(shown(statusline.line(ledger.path_of(args.get("file")), session)))
    return 0
