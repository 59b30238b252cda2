"""Issue 29, items 3 and 14: text from outside is shown, never obeyed. A request's own `model`, the
process name and the folder (`cwd`) of a real client go through a real mitmdump into the ledger;
every view that prints them (report by model, agent and project, the session view, the breakdown,
top, the status line, the proxy's summary on exit) must show their control characters as visible
escapes. A gateway that sends a new hostile content-encoding on every answer gets a bounded number of
log lines, each sanitised and cut.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_trust_bounds import OPENROUTER, post, proxy_for, upstream  # noqa: F401 - the fixture

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

CLI = str(Path(sys.executable).with_name("agent-session-ids"))
# OSC 52 (a clipboard write), OSC 0 (the window title), a screen clear, BEL, a C1 CSI, a bidi override
HOSTILE = "\x1b]52;c;SGVsbG8=\x07\x1b]0;owned\x07\x1b[2J\x9b31m\u202eevil"
NAME = "ag\x1b[2J\x07\u202e"[:15]  # what PR_SET_NAME takes: 15 bytes
OBEYED = ("\x1b", "\x07", "\x9b", "\u202e")
WAIT_S = 120

CLIENT = r"""
import ctypes, http.client, json, sys
ctypes.CDLL(None).prctl(15, sys.argv[2].encode()[:15], 0, 0, 0)
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=60)
body = json.dumps({"model": sys.argv[3], "messages": [{"role": "user", "content": "hello"}]})
conn.request("POST", sys.argv[4], body, {"Content-Type": "application/json"})
print(conn.getresponse().status)
"""


def _assert_shown(text: str, where: str) -> None:
    obeyed = [c for c in OBEYED if c in text]
    assert not obeyed, f"{where} printed {obeyed!r} raw:\n{text!r}"
    unprintable = [line for line in text.split("\n") if not line.isprintable()]
    assert not unprintable, f"{where} printed a control character: {unprintable[:3]!r}"


def _cli(*args: str) -> str:
    done = subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=WAIT_S, env={**os.environ, "COLUMNS": "160"}
    )
    assert done.returncode == 0 and not done.stderr, (args, done.returncode, done.stderr)
    return done.stdout


def _ledger_lines(path: Path, n: int) -> list[dict]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in path.read_text("utf-8").splitlines()] if path.exists() else []
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"the ledger has fewer than {n} lines")


def test_a_hostile_model_process_name_and_folder_are_shown_as_escapes_in_every_view(upstream, tmp_path):  # noqa: F811
    folder = tmp_path / f"proj{HOSTILE}"
    folder.mkdir()
    proxy = proxy_for(upstream, tmp_path)
    with proxy:
        done = subprocess.run(
            [sys.executable, "-c", CLIENT, str(proxy.port), NAME, f"m/{HOSTILE}", OPENROUTER],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=WAIT_S,
        )
        assert done.stdout.strip() == "200", done
        path = proxy.confdir / "agent-session-ids" / "usage.jsonl"
        (record,) = _ledger_lines(path, 1)
        proxy.stop()  # the summary on exit is logged
        summary = proxy.output()
        kept = tmp_path / "usage.jsonl"
        kept.write_bytes(path.read_bytes())  # the proxy's confdir goes with it
    # the ledger keeps what arrived, as data: the views are what must not obey it
    assert HOSTILE in record["model"] and HOSTILE in record["cwd"], record
    assert "usage this run" in summary, summary[-2000:]
    _assert_shown(summary, "the proxy's summary on exit")

    ledger = str(kept)
    views = {
        "report": ("report", "--file", ledger),
        "report --by model": ("report", "--file", ledger, "--by", "model"),
        "report --by agent": ("report", "--file", ledger, "--by", "agent"),
        "report --by project": ("report", "--file", ledger, "--by", "project"),
        "report --breakdown": ("report", "--file", ledger, "--breakdown"),
        "report --session": ("report", "--file", ledger, "--session", record["session"]),
        "top --once": ("top", "--once", "--width", "200", "--file", ledger),
        "statusline": ("statusline", "--session", record["session"], "--file", ledger),
    }
    for where, args in views.items():
        _assert_shown(_cli(*args), where)
    # shown, not dropped: the model's escapes are there to read
    assert "\\u202eevil" in _cli(*views["report --by model"])
    assert "\\u202eevil" in _cli(*views["report --by project"])


def test_a_new_hostile_content_encoding_on_every_answer_gets_a_bounded_sanitised_log(upstream, tmp_path):  # noqa: F811
    values = [f"x{i}\x1b]0;title\x07{'z' * 3000}" for i in range(400)]
    for i, value in enumerate(values):
        upstream.answers[f"e{i}"] = ([("Content-Type", "application/json"), ("Content-Encoding", value)], b"{}")
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    proxy = proxy_for(upstream, tmp_path)
    with proxy:
        for i in range(len(values)):
            status, _, _ = post(proxy, OPENROUTER, body, {"x-test-answer": f"e{i}"})
            assert status == 200
        path = proxy.confdir / "agent-session-ids" / "usage.jsonl"
        _ledger_lines(path, len(values))  # every answer went on, and was booked
        log = proxy.output()
    encoding_lines = [line for line in log.splitlines() if "content-encoding" in line]
    assert encoding_lines, log[-2000:]
    _assert_shown(log, "the proxy's log")
    from agent_session_ids.warn_once import MAX_MESSAGE, MAX_SAID

    assert len(encoding_lines) <= MAX_SAID, f"{len(encoding_lines)} lines for {len(values)} values"
    assert max(len(line) for line in encoding_lines) < MAX_MESSAGE + 200
    assert "further ones are not logged" in log
