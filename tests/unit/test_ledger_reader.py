"""The one typed reader of ledger lines (issue 29, item 7), `top`'s follower across a truncation in
place (item 9), and the status line's stdin read as one JSON value with a limit (item 10).

Every view is run over a ledger holding one line of each wrong shape: a number for a label, a
cost too large for a float, a time datetime cannot hold, and so on. None may end in a traceback;
each says what it skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_session_ids.cli import report, top
from agent_session_ids.cli import statusline as statusline_cli
from agent_session_ids.usage import follow, ledger, timespec
from agent_session_ids.usage.live_ledger import LiveLedger

NOW = time.time() - 120  # inside top's default window of an hour
SCRIPT = Path(sys.executable).with_name("agent-session-ids")


def raw_line(at: float = NOW, sid: str = "s1", **raw: str) -> bytes:
    """A ledger line of a good turn of `session`, with fields given as raw JSON text in `raw`."""
    fields = {
        "ts": json.dumps(ledger.timestamp(at)),
        "session": json.dumps(sid),
        "label": '"fix the parser"',
        "agent": '"pi"',
        "cwd": '"/work/app"',
        "model": '"anthropic/claude-sonnet-4"',
        "provider": '"Anthropic"',
        "status": "200",
        "stream": "true",
        "input_tokens": "1000",
        "cache_read_tokens": "900",
        "output_tokens": "10",
        "cost": "0.001",
    }
    fields.update(raw)
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}\n").encode()


DEEP = 100_000  # nesting past the JSON parser's recursion
# each wrong shape: the line's fields changed (raw JSON text), and whether the whole line is skipped
KINDS: dict[str, tuple[dict[str, str], bool]] = {
    "label a number": ({"label": "42"}, False),
    "agent a number": ({"agent": "7"}, False),
    "subagent a list": ({"subagent": '["a"]'}, False),
    "cost 10**400 (an int)": ({"cost": "1" + "0" * 400}, False),
    "cost 1e400 (inf)": ({"cost": "1e400"}, False),
    "cost NaN": ({"cost": "NaN"}, False),
    "cost negative": ({"cost": "-1"}, False),
    "ts in year 1": ({"ts": '"0001-01-01T00:00:00Z"'}, True),
    "ts in year 10000": ({"ts": '"9999-12-31T23:59:59-23:59"'}, True),
    "ts a number": ({"ts": "1795000000"}, True),
    "cwd a number": ({"cwd": "5"}, False),
    "provider a number": ({"provider": "3"}, False),
    "provider a list": ({"provider": '["Anthropic"]'}, False),
    "model a number": ({"model": "1"}, False),
    "served_model an object": ({"served_model": '{"a": 1}'}, False),
    "session a number": ({"session": "12"}, True),
    "session a list": ({"session": '["s1"]'}, True),
    "parent an object": ({"parent": '{"a": 1}'}, False),
    "root a list": ({"root": '["s1"]'}, False),
    "tokens negative": ({"input_tokens": "-5"}, False),
    "tokens true": ({"cache_read_tokens": "true"}, False),
    "tokens 10**30": ({"output_tokens": "1" + "0" * 30}, False),
    "tokens a string": ({"input_tokens": '"1000"'}, False),
    "status a string": ({"status": '"200"'}, False),
    "stream a number": ({"stream": "1"}, False),
    "sent_changed of non-dicts": ({"sent_changed": '[1, {"target": ["x"], "from": 2}]'}, False),
    "nested past the parser": ({"x": "[" * DEEP + "]" * DEEP}, True),
}

# each view: its command line (the ledger's --file is added)
VIEWS: dict[str, list[str]] = {
    "report": ["report"],
    **{f"report --by {by}": ["report", "--by", by] for by in ("day", "week", "month", "model", "project", "agent")},
    "report --session": ["report", "--session", "s1"],
    "report --breakdown": ["report", "--breakdown"],
    "report --tree": ["report", "--tree"],
    "report --json": ["report", "--json"],
    "report --html": ["report", "--html", "HTML"],
    "top --once": ["top", "--once", "--width", "100"],
    "statusline": ["statusline", "--session", "s1"],
}
MAINS = {"report": report.main, "top": top.main, "statusline": statusline_cli.main}


def _ledger(tmp_path, kinds: list[str]) -> str:
    """A good turn of s1, one line of each kind (of s1 where its session is text), another good turn."""
    path = str(tmp_path / "usage.jsonl")
    with open(path, "wb") as f:
        f.write(raw_line(NOW - 60))
        for i, kind in enumerate(kinds):
            f.write(raw_line(NOW - 50 + i, **KINDS[kind][0]))
        f.write(raw_line(NOW))
    return path


def _argv(view: str, path: str, tmp_path) -> list[str]:
    return [str(tmp_path / "page.html") if arg == "HTML" else arg for arg in VIEWS[view]] + ["--file", path]


def _said_skipped(view: str, kind: str) -> bool:
    """The status line parses only the session's own lines: a line naming no session is not its."""
    return not (view == "statusline" and kind.startswith("session "))


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_view_reads_a_ledger_with_a_wrongly_typed_line_and_says_it_skipped_it(kind, view, tmp_path, capsys):
    path = _ledger(tmp_path, [kind])
    argv = _argv(view, path, tmp_path)
    assert MAINS[argv[0]](argv[1:]) == 0
    out = capsys.readouterr()
    assert ("skipped" in out.out + out.err) == _said_skipped(view, kind), (out.out, out.err)
    assert out.out.strip()


@pytest.mark.parametrize("view", VIEWS)
def test_every_view_as_a_command_reads_a_ledger_with_every_wrong_shape_and_says_it_skipped_them(view, tmp_path):
    path = _ledger(tmp_path, list(KINDS))
    out = subprocess.run([str(SCRIPT), *_argv(view, path, tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "skipped" in out.stdout + out.stderr and out.stdout.strip()
    if view == "report":
        assert f"{sum(whole for _, whole in KINDS.values())} unreadable ledger lines skipped" in out.stdout
        assert f"{sum(not whole for _, whole in KINDS.values())} wrong-typed ledger fields skipped" in out.stdout


# -- the reader -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_the_reader_skips_a_line_it_cannot_place_and_leaves_out_a_wrongly_typed_field(kind):
    raw, whole = KINDS[kind]
    tally = ledger.Tally()
    record = ledger.record_of(raw_line(**raw), tally)
    if whole:
        assert record is None and (tally.skipped, tally.fields) == (1, 0)
        return
    assert record is not None and (tally.skipped, tally.fields) == (0, 1)
    assert not set(raw) & set(record)  # the wrong field is left out, as if the answer had not given it
    good = ledger.record_of(raw_line())
    assert good is not None
    assert {k: v for k, v in good.items() if k not in raw} == record  # the others are kept as read


def test_the_reader_gives_each_field_the_type_the_writer_writes():
    record = ledger.record_of(
        raw_line(
            cost="1",
            label='"a\\ud800b"',
            new_field='{"kept": [1]}',
            sent_changed='[{"target": "body.session_id", "from": "a", "to": null}]',
        )
    )
    assert record is not None
    assert record["cost"] == 1.0 and isinstance(record["cost"], float)
    assert record["label"] == "a\ufffdb"  # a lone surrogate as U+FFFD: printable, and writable as UTF-8
    assert record["sent_changed"] == [{"target": "body.session_id", "from": "a", "to": None}]
    assert record["new_field"] == {"kept": [1]}  # a newer writer's field, which no view reads
    tally = ledger.Tally()
    assert ledger.record_of(raw_line(label="null", cost="null"), tally) is not None and tally.fields == 0


def test_a_time_the_reader_accepts_converts_both_ways_in_any_zone():
    from zoneinfo import ZoneInfo

    for ts in ("1970-01-01T00:00:00Z", "9998-12-31T23:59:59.999Z", "2026-11-21T10:00:00+14:00"):
        epoch = ledger.epoch_of(ts)
        assert epoch is not None
        for zone in (None, ZoneInfo("Pacific/Kiritimati"), ZoneInfo("Etc/GMT+12")):
            timespec.when(epoch, zone)
        assert ledger.epoch_of(ledger.timestamp(epoch)) == pytest.approx(epoch, abs=2e-3)  # ms, as the ledger writes it
    for ts in (
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00+01:00",
        "1969-12-31T23:59:59Z",
        "soon",
        5,
    ):
        assert ledger.epoch_of(ts) is None


def test_a_lone_surrogate_in_a_label_is_shown_as_a_replacement_character(tmp_path):
    path = str(tmp_path / "usage.jsonl")
    with open(path, "wb") as f:
        f.write(raw_line(label='"fix\\ud800"'))
    out = subprocess.run([str(SCRIPT), "report", "--file", path], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "fix\ufffd" in out.stdout and "skipped" not in out.stdout, out.stderr


# -- top across a truncation in place (item 9) ----------------------------------------------------------


def test_the_follower_reads_a_ledger_truncated_and_rewritten_to_the_same_size_from_its_start(tmp_path):
    path = str(tmp_path / "usage.jsonl")
    with open(path, "wb") as f:
        f.write(raw_line(NOW, sid="old-1") + raw_line(NOW, sid="old-2"))
    follower = follow.Follower(path)
    assert [r["session"] for r in follower.poll()] == ["old-1", "old-2"]
    size = os.path.getsize(path)
    with open(path, "r+b") as f:  # in place: same file, same inode
        f.truncate(0)
        f.write(raw_line(NOW + 1, sid="new-1") + raw_line(NOW + 1, sid="new-2"))
        f.write(raw_line(NOW + 2, sid="new-3"))
    assert os.path.getsize(path) >= size
    assert [r["session"] for r in follower.poll()] == ["new-1", "new-2", "new-3"]
    assert follower.poll() == [] and follower.skipped == 0
    with open(path, "ab") as f:
        f.write(raw_line(NOW + 3, sid="new-4"))
    assert [r["session"] for r in follower.poll()] == ["new-4"]  # appending is not taken for a rewrite
    follower.close()


def test_top_shows_a_session_written_after_the_ledger_was_emptied_in_place_to_the_same_size(tmp_path):
    path = str(tmp_path / "usage.jsonl")
    with open(path, "wb") as f:
        f.write(raw_line(NOW, sid="before", label='"before-the-truncation"'))
    live = LiveLedger(path, 3600)
    live.refresh(NOW + 1)
    assert [g.label for g in live.sessions(NOW + 1)] == ["before-the-truncation"]
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(raw_line(NOW + 2, sid="after-it", label='"after-the-truncation"'))  # longer: not shrunk
    live.refresh(NOW + 3)
    assert "after-the-truncation" in [g.label for g in live.sessions(NOW + 3)]
    live.close()


# -- the status line's stdin (item 10) ---------------------------------------------------------------


def _statusline_with_open_stdin(path: str, sent: bytes) -> tuple[int, str, str]:
    """`statusline` given `sent` on a stdin this test keeps open until the command has ended."""
    process = subprocess.Popen(
        [str(SCRIPT), "statusline", "--file", path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    try:
        process.stdin.write(sent)
        process.stdin.flush()
        try:
            process.wait(timeout=10)  # generous: the command is to end on its own, long before
        except subprocess.TimeoutExpired:
            pytest.fail("statusline still waits for the end of stdin")
        assert process.stdout is not None and process.stderr is not None
        return process.returncode, process.stdout.read().decode(), process.stderr.read().decode()
    finally:
        process.kill()
        process.wait()
        process.stdin.close()


def test_the_status_line_answers_a_complete_json_while_its_stdin_stays_open(tmp_path):
    path = str(tmp_path / "usage.jsonl")
    with open(path, "wb") as f:
        f.write(raw_line(sid="0198c2d0-aaaa"))
    status = json.dumps({"session_id": "0198c2d0-aaaa", "model": {"id": "claude"}, "cwd": "/x"}).encode()
    assert _statusline_with_open_stdin(path, status) == (0, "cache 90% · $0.0010 · Anthropic\n", "")
    assert _statusline_with_open_stdin(path, b"  \n" + status + b"\n{") == (0, "cache 90% · $0.0010 · Anthropic\n", "")


def test_the_status_line_given_an_incomplete_json_on_an_open_stdin_ends_with_one_line(tmp_path):
    path = str(tmp_path / "usage.jsonl")
    with open(path, "wb") as f:
        f.write(raw_line(sid="0198c2d0-aaaa"))
    for sent in (b'{"session_id": "0198c2d0-a', b""):
        code, out, err = _statusline_with_open_stdin(path, sent)
        assert (code, out) == (1, "")
        assert err == ("agent-session-ids: no complete status JSON arrived on stdin within 2 s; give --session ID\n")
