"""`agent-session-ids statusline`: Claude Code's `statusLine` command (it pipes its JSON, with the
session's `session_id`, on stdin after every answer), or any script's with `--session ID`.

A session the ledger does not know yet gets a short "no usage yet" and exit 0: Claude Code's
status line never shows an error for it. The status JSON is read until it is whole, not until
stdin ends (a caller may keep it open); one that is not whole within STDIN_S gets one line and
exit 1, as stdin that is not JSON does.
"""

from __future__ import annotations

import codecs
import json
import os
import sys
import time

from ..shown import shown
from ..usage import ledger, statusline
from .errors import CliError

MAX_STDIN = 1 << 20
STDIN_S = 2.0  # the whole status JSON arrives within this, or the command says so and ends
CHUNK = 64 << 10


def _readable(fd: int, seconds: float) -> bool:
    """Whether `fd` has bytes (or its end) within `seconds`. Where select cannot wait on a pipe
    (Windows), a read blocks: a complete JSON is still answered at once, a stdin left open with an
    incomplete one waits."""
    if os.name == "nt":
        return True
    import select

    return bool(select.select([fd], [], [], max(0.0, seconds))[0])


def read_status(fd: int, limit: float = STDIN_S):
    """The first JSON value on `fd`, as soon as it is whole: the caller may keep its end open."""
    decoder = json.JSONDecoder()
    text = codecs.getincrementaldecoder("utf-8")("replace")
    got, size = "", 0
    deadline = time.monotonic() + limit
    while size < MAX_STDIN:
        if not _readable(fd, deadline - time.monotonic()):
            raise CliError(f"no complete status JSON arrived on stdin within {limit:g} s; give --session ID")
        chunk = os.read(fd, CHUNK)
        if not chunk:
            break  # its end: what came is all there is
        size += len(chunk)
        got += text.decode(chunk)
        try:
            return decoder.raw_decode(got.lstrip())[0]
        except ValueError:
            continue  # not whole yet, or never JSON: the end (or the limit) says which
    try:
        return json.loads(got)
    except ValueError:
        raise CliError("stdin is not JSON: give Claude Code's status JSON (with session_id), or --session ID") from None


def session_from(stdin) -> str:
    if stdin is None or stdin.isatty():
        raise CliError("give --session ID, or pipe Claude Code's status JSON (with session_id) on stdin")
    status = read_status(stdin.fileno())
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
