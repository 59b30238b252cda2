"""The views over the ledger (issue 20): the follower that reads only what was appended, the
session lookup the status line uses, the status line, `top`'s frame, the per-session view of
the proxy, and the report's views (buckets, time zone, --until, --breakdown, --session, compact)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent_session_ids.cli import report, top
from agent_session_ids.cli import statusline as statusline_cli
from agent_session_ids.usage import follow, grouping, ledger, live_view, lookup, statusline, timespec
from agent_session_ids.usage.live_ledger import LiveLedger
from agent_session_ids.usage.totals import SessionTable

NOW = 1_795_000_000.0  # 2026-11-18T...Z


def rec(session="s1", at=NOW, **figures) -> dict:
    return {
        "ts": ledger.timestamp(at),
        "session": session,
        "label": f"label-{session}",
        "agent": "pi",
        "cwd": f"/work/{session}-project",
        "model": "anthropic/claude-sonnet-4",
        "status": 200,
        "stream": True,
        **figures,
    }


def write(path, records, mode="ab") -> None:
    with open(path, mode) as f:
        for r in records:
            f.write(ledger.encode(r))


def turn(
    session="s1", at=NOW, provider="Anthropic", input_tokens=1000, cache_read_tokens=900, cost=0.001, **more
) -> dict:
    return rec(
        session,
        at,
        provider=provider,
        input_tokens=input_tokens,
        cache_read_tokens=cache_read_tokens,
        output_tokens=10,
        cost=cost,
        **more,
    )


# -- the follower ---------------------------------------------------------------------------------


def test_the_follower_reads_only_what_was_appended_and_keeps_a_partial_line(tmp_path):
    path = str(tmp_path / "usage.jsonl")
    write(path, [turn("a"), turn("b")])
    f = follow.Follower(path)
    assert [r["session"] for r in f.poll()] == ["a", "b"]
    assert f.poll() == []
    line = ledger.encode(turn("c"))
    with open(path, "ab") as out:
        out.write(line[:20])  # the writer is half-way through a line
    assert f.poll() == [] and f.skipped == 0
    with open(path, "ab") as out:
        out.write(line[20:])
    assert [r["session"] for r in f.poll()] == ["c"]
    with open(path, "ab") as out:
        out.write(b"not json\n")
    assert f.poll() == [] and f.skipped == 1
    f.close()


def test_the_follower_follows_a_rotation_without_losing_or_repeating_a_line(tmp_path):
    path = str(tmp_path / "usage.jsonl")
    write(path, [turn("a")])
    f = follow.Follower(path)
    assert [r["session"] for r in f.poll()] == ["a"]
    write(path, [turn("b")])  # appended, then the writer rotates before the next poll
    os.replace(path, path + ".1")
    write(path, [turn("c")], "wb")
    assert [r["session"] for r in f.poll()] == ["b", "c"]
    write(path, [turn("d")])
    assert [r["session"] for r in f.poll()] == ["d"]
    f.close()


def test_the_follower_survives_a_missing_ledger_and_a_truncated_one(tmp_path):
    path = str(tmp_path / "usage.jsonl")
    f = follow.Follower(path)
    assert f.poll() == [] and f.poll() == []
    write(path, [turn("a"), turn("b")])
    assert [r["session"] for r in f.poll()] == ["a", "b"]
    write(path, [turn("c")], "wb")  # truncated in place and written again
    assert [r["session"] for r in f.poll()] == ["c"]
    f.close()


def test_a_first_poll_with_a_window_starts_near_it_by_bisection(tmp_path):
    path = str(tmp_path / "usage.jsonl")
    # 20,000 turns an hour apart... the last ones within the window
    write(path, [turn(f"s{i % 50}", NOW - (20_000 - i) * 60.0) for i in range(20_000)])
    size = os.path.getsize(path)
    f = follow.Follower(path)
    since = NOW - 3600
    records = f.poll(since)
    assert sum(1 for r in records if r["_epoch"] >= since) == 60
    # what lies before the window is not read, but for LATE_S and one bisection step (PROBE bytes)
    line = len(ledger.encode(turn("s0")))
    assert len(records) < 60 + follow.LATE_S / 60 + follow.PROBE / line + 2
    ((name, start),) = f.history
    assert name == path and 0 < start < size  # the part before the window, for whole-session lookups
    f.close()


# -- the lookup and the status line -----------------------------------------------------------------


def test_lookup_parses_only_the_sessions_lines_across_rotated_files(tmp_path):
    path = str(tmp_path / "usage.jsonl")
    write(path + ".1", [turn("a", NOW - 10), turn("ab", NOW - 9), turn("b", NOW - 8)])
    write(path, [turn("a", NOW - 5), turn("b", NOW - 4)])
    with open(path, "ab") as out:
        out.write(ledger.encode(turn("a", NOW))[:-10])  # a killed writer's partial last line
    found = lookup.records_naming({"a"}, [(n, None) for n in ledger.files(path)])
    assert [r["_epoch"] for r in found] == [NOW - 10, NOW - 5]  # not "ab", not the partial line
    # a label that spells another session's field is not that session
    write(path, [turn("c", NOW + 1, label='"session": "a"')])
    assert len(lookup.records_naming({"a"}, [(path, None)])) == 1


def test_the_status_line_shows_the_latest_hit_the_billed_cost_and_a_flip(tmp_path):
    path = str(tmp_path / "usage.jsonl")
    write(
        path,
        [
            turn("a", NOW, input_tokens=1000, cache_read_tokens=0, cost=0.004),
            turn("b", NOW + 1, provider="Google", cost=5.0),
            turn("a", NOW + 2, input_tokens=1000, cache_read_tokens=920, cost=0.001),
        ],
    )
    assert statusline.line(path, "a") == "cache 92% · $0.0050 · Anthropic"
    write(path, [turn("a", NOW + 3, provider="Google", input_tokens=1000, cache_read_tokens=0, cost=0.002)])
    assert statusline.line(path, "a") == "cache 0% · $0.0070 · ⚠ Google, was Anthropic"
    write(path, [turn("a", NOW + 4, provider="Google", cost=None)])
    assert statusline.line(path, "a") == "cache 90% · $0.0070* · Google"
    assert statusline.line(path, "nobody") == statusline.NO_DATA
    assert statusline.line(str(tmp_path / "none.jsonl"), "a") == statusline.NO_DATA


def _cli(*args, stdin: str | None = None, env: dict | None = None):
    script = Path(sys.executable).with_name("agent-session-ids")
    return subprocess.run(
        [str(script), *args], input=stdin, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def test_the_statusline_command_reads_claude_codes_json_and_never_errs_on_an_unknown_session(tmp_path):
    path = str(tmp_path / "usage.jsonl")
    write(path, [turn("0198c2d0-aaaa", NOW)])
    status = json.dumps({"session_id": "0198c2d0-aaaa", "cwd": "/x", "model": {"id": "claude"}})
    out = _cli("statusline", "--file", path, stdin=status)
    assert (out.returncode, out.stdout, out.stderr) == (0, "cache 90% · $0.0010 · Anthropic\n", "")
    out = _cli("statusline", stdin=json.dumps({"session_id": "unknown"}), env={"AGENT_SESSION_IDS_USAGE": path})
    assert (out.returncode, out.stdout) == (0, "no usage yet\n")
    out = _cli("statusline", "--session", "0198c2d0-aaaa", env={"AGENT_SESSION_IDS_USAGE": path})
    assert out.stdout.startswith("cache 90%")
    for stdin, why in (("not json", "stdin is not JSON"), ("{}", "has no session_id"), ("[1]", "has no session_id")):
        out = _cli("statusline", "--file", path, stdin=stdin)
        assert out.returncode == 1 and why in out.stderr and len(out.stderr.splitlines()) == 1
        assert "Traceback" not in out.stderr


def test_the_status_line_imports_no_mitmproxy():
    # it runs after every answer of Claude Code: the proxy's own stack stays out of its start
    code = (
        "import sys; from agent_session_ids.cli import run; run.COMMANDS['statusline']; "
        "from agent_session_ids.cli import statusline; print(any(m.startswith('mitmproxy') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_session_from_a_terminal_without_session_is_a_one_line_error():
    class Tty:
        def isatty(self):
            return True

    with pytest.raises(statusline_cli.CliError, match="give --session ID"):
        statusline_cli.session_from(Tty())


# -- the per-session view and top's frame ------------------------------------------------------------


def _table(records) -> SessionTable:
    table = SessionTable()
    for r in records:
        table.add(r, ledger.parse_ts(r["ts"]))
    return table


def test_the_view_fits_80_columns_and_shows_each_column(tmp_path):
    table = _table(
        [
            turn("a", NOW - 100, input_tokens=1000, cache_read_tokens=0, cost=0.004),
            turn("a", NOW - 50, input_tokens=2000, cache_read_tokens=1800, cost=0.001),
            turn("b", NOW - 10, provider="Google", label="a very long session label that will not fit"),
            turn("b", NOW - 5, provider="Anthropic"),
        ]
    )
    lines = live_view.lines(list(table.sessions.values()), NOW, 80)
    assert all(len(line) <= 80 for line in lines)
    head, b, a, total = lines
    assert head.split() == list(live_view.ORDER)
    assert b.split()[0] == "pi" and "…" in b and "⚠Anthrop" in b  # newest first; the flip is marked
    cells = a.split()
    assert cells[:2] == ["pi", "label-a"] and cells[2].startswith("a-proj")
    assert cells[3:9] == ["2", "50s", "2000", "90%", f"{1800 / 3000:.0%}", "$0.0050"]
    assert total.split()[:4] == ["TOTAL", "2", "sess.", "4"] and total.endswith("⚠1 flip")
    wide = live_view.lines(list(table.sessions.values()), NOW, 160)
    assert "claude-sonnet-4" in wide[2] and "a-project" in wide[2] and "anthropic/" not in wide[2]
    assert wide[-1].split()[:3] == ["TOTAL", "2", "sessions"]


def test_top_frame_from_the_ledger_and_what_it_says_without_one(tmp_path):
    path = str(tmp_path / "usage.jsonl")
    live = LiveLedger(path, 3600)
    live.refresh(NOW)
    frame = top.frame(live, NOW, 80)
    assert any("nothing recorded yet" in line for line in frame) and frame[-1].startswith("q quit")
    write(path, [turn("old", NOW - 7200), turn("a", NOW - 60)])
    live.refresh(NOW)
    frame = top.frame(live, NOW, 80)
    assert frame[0].startswith("agent-session-ids top · 1 session active in the last 1h 00m")
    rows = [line for line in frame if line.startswith("pi ")]
    assert len(rows) == 1 and "label-a" in rows[0]
    live.close()


def test_live_ledger_counts_a_sessions_earlier_turns_once(tmp_path):
    path = str(tmp_path / "usage.jsonl")
    # a long session: turns from 3 hours ago (before the window) up to a minute ago
    write(path + ".1", [turn("a", NOW - 3 * 3600 + i, cost=0.01) for i in range(5)])
    write(
        path,
        [
            turn("a", NOW - 7000, cost=0.01),
            *[turn("idle", NOW - 7000 + i) for i in range(3000)],
            turn("a", NOW - 60, cost=0.01),
        ],
    )
    os.utime(path + ".1", (NOW - 3 * 3600, NOW - 3 * 3600))
    live = LiveLedger(path, 3600)
    live.refresh(NOW)
    (a,) = live.sessions(NOW)
    assert a.key == "a" and a.requests == 7 and round(a.cost, 6) == 0.07  # all of it, each once
    write(path, [turn("a", NOW + 1, cost=0.01), turn("back", NOW + 2)])
    write(path + ".1", [], "ab")
    live.refresh(NOW + 3)
    sessions = {g.key: g for g in live.sessions(NOW + 3)}
    assert sessions["a"].requests == 8 and sessions["back"].requests == 1
    # a session seen again after the window gets its earlier turns from the part not followed
    write(path, [turn("idle", NOW + 4)])
    live.refresh(NOW + 5)
    assert {g.key: g.requests for g in live.sessions(NOW + 5)}["idle"] == 3001
    live.close()


def test_top_once_and_bad_input(tmp_path):
    path = str(tmp_path / "usage.jsonl")
    import time as clock

    write(path, [turn("a", clock.time() - 30)])
    out = _cli("top", "--once", "--width", "80", "--file", path)
    assert out.returncode == 0 and "label-a" in out.stdout and "TOTAL" in out.stdout
    assert all(len(line) <= 80 for line in out.stdout.splitlines())
    out = _cli("top", "--once", "--window", "soon", "--file", path)
    assert out.returncode == 1 and "--window 'soon'" in out.stderr and "Traceback" not in out.stderr
    out = _cli("top", "--once", "--width", "80", "--file", path, env={"PYTHONIOENCODING": "ascii"})
    assert out.returncode == 0 and "label-a" in out.stdout and " - " in out.stdout.splitlines()[0]  # not "·"
    many = str(tmp_path / "many.jsonl")  # a frame longer than a pipe holds, so that the write breaks
    write(many, [turn(f"s{i}", clock.time() - 30) for i in range(3000)])
    piped = subprocess.run(
        f"{Path(sys.executable).with_name('agent-session-ids')} top --once --file {many} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.stdout.startswith("agent-session-ids top") and piped.stderr == ""  # a reader gone: quiet
    out = _cli("top", "--once", "--width", "0", "--file", path)
    assert out.returncode == 1 and out.stderr.strip() == "agent-session-ids: --width 0: give at least 20 columns"


# -- the report's views ------------------------------------------------------------------------------


def _records(tmp_path, records):
    path = str(tmp_path / "usage.jsonl")
    write(path, records, "wb")
    return path, ledger.read(path)[0]


def _at(text: str) -> float:
    return ledger.parse_ts(text)


def test_report_buckets_follow_the_time_zone(tmp_path):
    path, records = _records(
        tmp_path,
        [
            turn("a", _at("2026-11-29T23:30:00Z")),  # Sunday in UTC, Monday in Tokyo
            turn("a", _at("2026-11-30T10:00:00Z")),
            turn("b", _at("2026-12-01T02:00:00Z"), agent="claude", cwd="/work/beta"),
        ],
    )
    utc, tokyo = timespec.zone_of("UTC"), timespec.zone_of("Asia/Tokyo")
    assert {g.key: g.requests for g in grouping.group(records, "day", zone=utc)} == {
        "2026-11-29": 1,
        "2026-11-30": 1,
        "2026-12-01": 1,
    }
    assert {g.key: g.requests for g in grouping.group(records, "day", zone=tokyo)} == {"2026-11-30": 2, "2026-12-01": 1}
    assert {g.key: g.requests for g in grouping.group(records, "week", zone=utc)} == {"2026-11-23": 1, "2026-11-30": 2}
    assert {g.key: g.requests for g in grouping.group(records, "week", zone=tokyo)} == {"2026-11-30": 3}
    assert {g.key: g.requests for g in grouping.group(records, "month", zone=utc)} == {"2026-11": 2, "2026-12": 1}
    assert {g.key: g.requests for g in grouping.group(records, "project")} == {"/work/a-project": 2, "/work/beta": 1}
    assert {g.key: g.requests for g in grouping.group(records, "agent")} == {"pi": 2, "claude": 1}
    with pytest.raises(ValueError, match="no IANA time zone"):
        timespec.zone_of("Mars/Olympus")


def test_until_a_bare_date_includes_that_day_in_the_zone(tmp_path):
    berlin = timespec.zone_of("Europe/Berlin")
    until = timespec.parse_moment("2026-11-30", zone=berlin, option="--until", end_of_day=True)
    assert until == _at("2026-11-30T22:59:59.999999Z")
    assert timespec.parse_moment("2026-11-30", zone=berlin) == _at("2026-11-29T23:00:00Z")
    with pytest.raises(ValueError, match="--until 'later'"):
        timespec.parse_moment("later", option="--until")


def test_report_command_views_in_text_json_and_html(tmp_path, capsys):
    path, _ = _records(
        tmp_path,
        [
            turn("a", _at("2026-11-30T10:00:00Z"), model="anthropic/claude-sonnet-4", cost=0.002),
            turn("a", _at("2026-11-30T10:05:00Z"), model="openai/gpt-5", provider="OpenAI", cost=0.003),
            turn("b", _at("2026-12-01T09:00:00Z"), cost=0.004),
        ],
    )
    assert report.main(["--file", path, "--by", "day", "--timezone", "UTC", "--breakdown", "--json"]) == 0
    days = json.loads(capsys.readouterr().out)
    assert [d["day"] for d in days] == ["2026-12-01", "2026-11-30"]
    assert [(m["model"], m["requests"], m["cost"]) for m in days[1]["breakdown"]] == [
        ("openai/gpt-5", 1, 0.003),
        ("anthropic/claude-sonnet-4", 1, 0.002),
    ]
    assert report.main(["--file", path, "--by", "day", "--timezone", "UTC", "--breakdown"]) == 0
    text = capsys.readouterr().out
    assert "  └ openai/gpt-5" in text and text.splitlines()[-1].startswith("TOTAL")
    assert report.main(["--file", path, "--until", "2026-11-30", "--timezone", "UTC", "--json"]) == 0
    assert [(g["session"], g["requests"]) for g in json.loads(capsys.readouterr().out)] == [("a", 2)]
    assert report.main(["--file", path, "--by", "month", "--compact"]) == 0
    compact = capsys.readouterr().out.splitlines()
    assert compact[0].split() == ["MONTH", "REQS", "INPUT", "HIT", "OUTPUT", "COST"]
    assert all(len(line) < 100 for line in compact)
    page = tmp_path / "r.html"
    assert report.main(["--file", path, "--by", "project", "--breakdown", "--html", str(page)]) == 0
    capsys.readouterr()
    html = page.read_text()
    assert "/work/a-project" in html and "class=part" in html and "<script" not in html


def test_report_one_sessions_turns(tmp_path, capsys):
    path, _ = _records(
        tmp_path,
        [
            turn("a", _at("2026-11-30T10:00:00Z"), input_tokens=1000, cache_read_tokens=0, cost=0.004),
            turn("a", _at("2026-11-30T10:05:00Z"), provider="Google", input_tokens=2000, cache_read_tokens=1000),
            turn("b", _at("2026-11-30T10:06:00Z")),
        ],
    )
    assert report.main(["--file", path, "--session", "a", "--json", "--timezone", "UTC"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["session"] == "a" and one["cwd"] == "/work/a-project" and one["requests"] == 2
    assert [(t["when"], t["provider"], t["cache_hit_ratio"], t["provider_flip"]) for t in one["turns"]] == [
        ("2026-11-30 10:00:00", "Anthropic", 0.0, False),
        ("2026-11-30 10:05:00", "Google", 0.5, True),
    ]
    assert report.main(["--file", path, "--session", "label-a", "--timezone", "UTC"]) == 0  # by its label too
    text = capsys.readouterr().out.splitlines()
    rows = [line for line in text if line[:2].isdigit()]
    assert len(rows) == 2 and "⚠Google" in rows[1] and "50%" in rows[1] and rows[0].startswith("10:00:00")
    path, _ = _records(tmp_path, [turn("a", _at("2026-11-29T23:59:00Z")), turn("a", _at("2026-11-30T00:01:00Z"))])
    assert report.main(["--file", path, "--session", "a", "--timezone", "UTC"]) == 0
    text = capsys.readouterr().out.splitlines()  # the rows give the time: a line names each day
    assert [line.split()[0] for line in text[4:-1]] == ["on", "23:59:00", "on", "00:01:00"], text
    assert (text[4], text[6], text[-1]) == ("on 2026-11-29", "on 2026-11-30", "times from 2026-11-29 to 2026-11-30")
    assert report.main(["--file", path, "--session", "nobody"]) == 1
    assert "no turns recorded for session 'nobody'" in capsys.readouterr().err


def test_report_reads_several_ledgers_as_one(tmp_path, capsys):
    here, there = str(tmp_path / "here.jsonl"), str(tmp_path / "there.jsonl")  # two machines' ledgers
    write(here, [turn("a", _at("2026-11-30T10:00:00Z"), cost=0.001), turn("b", _at("2026-11-30T10:02:00Z"))])
    write(there, [turn("a", _at("2026-11-30T10:01:00Z"), cost=0.002, provider="Google")])
    assert report.main(["--file", here, "--file", there, "--json"]) == 0
    groups = {g["session"]: g for g in json.loads(capsys.readouterr().out)}
    assert groups["a"]["requests"] == 2 and groups["a"]["cost"] == pytest.approx(0.003)
    assert [f["to"] for f in groups["a"]["flips"]] == ["Google"]  # in time order across the two
    assert report.main(["--file", here, "--file", str(tmp_path / "none.jsonl")]) == 1
    assert f"no usage ledger at {tmp_path / 'none.jsonl'}" in capsys.readouterr().err


def test_report_bad_input_is_one_line(tmp_path):
    path, _ = _records(tmp_path, [turn("a")])
    for args, why in (
        (["--by", "hour"], "invalid choice"),
        (["--timezone", "Nowhere/City"], "no IANA time zone"),
        (["--since", "yesterday"], "--since 'yesterday'"),
    ):
        out = _cli("report", "--file", path, *args)
        assert out.returncode == 2 and why in out.stderr and len(out.stderr.splitlines()) == 1, out.stderr
    out = _cli("report", "--file", str(tmp_path / "none.jsonl"))
    assert out.returncode == 1 and "nothing was recorded yet" in out.stderr
    for more in ([], ["--session", "a"]):  # a page that cannot be written: one line, exit 1
        out = _cli("report", "--file", path, *more, "--html", str(tmp_path / "no" / "page.html"))
        assert out.returncode == 1 and len(out.stderr.splitlines()) == 1, out.stderr
        assert "cannot write --html" in out.stderr and "No such file or directory" in out.stderr


def test_report_is_the_same_command_three_ways(tmp_path):
    path, _ = _records(tmp_path, [turn("a")])
    outs = {
        subprocess.run(cmd + ["--file", path, "--by", "project", "--json"], capture_output=True, text=True).stdout
        for cmd in (
            [str(Path(sys.executable).with_name("agent-session-ids")), "report"],
            [str(Path(sys.executable).with_name("agent-session-ids-report"))],
            [sys.executable, "-m", "agent_session_ids.report"],
        )
    }
    assert len(outs) == 1 and json.loads(outs.pop())[0]["project"] == "/work/a-project"


# -- trees (issue 21) ----------------------------------------------------------------------------------


def _tree_records():
    r, c = "r0000000", "c0000000"
    return [
        turn(r, _at("2026-11-30T10:00:00Z"), cost=0.001),
        turn(r, _at("2026-11-30T10:01:00Z"), cost=0.002, subagent="a1", parent=r, root=r),
        turn(r, _at("2026-11-30T10:02:00Z"), cost=0.003, subagent="a1", parent=r, root=r),
        turn(c, _at("2026-11-30T10:03:00Z"), cost=0.004, parent=r, root=r, label="child-task"),
        turn(c, _at("2026-11-30T10:04:00Z"), cost=0.005, subagent="a2", parent=c, root=r),
        turn("other", _at("2026-11-30T10:05:00Z"), cost=0.010),
        turn(
            r,
            _at("2026-11-30T10:06:00Z"),
            cost=0.001,
            sent_changed=[{"target": "body.session_id", "from": r, "to": "release-notes-r0000000"}],
        ),
    ]


def test_the_report_counts_branches_into_their_root_and_tree_shows_each(tmp_path, capsys):
    path, _ = _records(tmp_path, _tree_records())
    assert report.main(["--file", path, "--json"]) == 0
    groups = {g["session"]: g for g in json.loads(capsys.readouterr().out)}
    assert set(groups) == {"r0000000", "other"}
    root = groups["r0000000"]
    assert root["requests"] == 6 and root["cost"] == pytest.approx(0.016) and root["branch_count"] == 3
    assert root["label"] == "label-r0000000" and "branches" not in root
    assert root["sent_changes"][0]["to"] == "release-notes-r0000000"
    assert report.main(["--file", path, "--json", "--tree"]) == 0
    branches = json.loads(capsys.readouterr().out)[0]["branches"]
    assert [(b["session"], b["subagent"], b["parent"], b["depth"], b["requests"]) for b in branches] == [
        ("r0000000", "a1", "r0000000", 1, 2),
        ("c0000000", None, "r0000000", 1, 1),
        ("c0000000", "a2", "c0000000", 2, 1),
    ]
    assert report.main(["--file", path, "--tree"]) == 0
    text = capsys.readouterr().out
    assert "label-r0000000 +3" in text and "└ sub-agent a1" in text and "└ child-task" in text
    assert "    └ sub-agent a2" in text and "↻ sent body.session_id changed" in text
    page = tmp_path / "tree.html"
    assert report.main(["--file", path, "--tree", "--html", str(page)]) == 0
    assert "└ sub-agent a2" in page.read_text() and "↻ sent body.session_id" in page.read_text()


def test_one_sessions_turns_name_the_sub_agent_and_a_changed_id(tmp_path, capsys):
    path, _ = _records(tmp_path, _tree_records())
    assert report.main(["--file", path, "--session", "r0000000", "--json", "--timezone", "UTC"]) == 0
    turns = json.loads(capsys.readouterr().out)["turns"]
    assert [t["subagent"] for t in turns] == [None, "a1", "a1", None]
    assert [len(t["sent_changed"]) for t in turns] == [0, 0, 0, 1]
    assert report.main(["--file", path, "--session", "r0000000", "--timezone", "UTC"]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(line for line in lines if line.startswith("TIME"))
    assert head.split()[:2] == ["TIME", "SUB-AGENT"] and max(len(line) for line in lines) < 100
    rows = [line for line in lines if line[:2].isdigit()]
    assert [row.split()[1] for row in rows] == ["-", "a1", "a1", "-"]
    assert lines[-2].strip() == "↻ sent body.session_id changed: r0000000 → release-notes-r0000000"
    assert report.main(["--file", path, "--session", "c0000000", "--timezone", "UTC"]) == 0
    assert "SUB-AGENT" in capsys.readouterr().out  # a2 made one of its turns
    assert report.main(["--file", path, "--session", "other", "--timezone", "UTC"]) == 0
    assert "SUB-AGENT" not in capsys.readouterr().out  # no column where no sub-agent made a turn
    page = tmp_path / "one.html"
    assert report.main(["--file", path, "--session", "r0000000", "--html", str(page)]) == 0
    assert "<td class=l>a1</td>" in page.read_text() and "↻ sent body.session_id" in page.read_text()


def test_top_counts_a_trees_branches_into_its_root_row():
    table = _table(_tree_records())
    lines = live_view.lines(list(table.sessions.values()), _at("2026-11-30T10:07:00Z"), 80)
    root, other = lines[1:-1]
    assert root.split()[:5] == ["pi", "labe…", "+3", "r00000…", "6"]  # the count stays when the label is cut
    assert other.split()[:4] == ["pi", "label-o…", "other-…", "1"]
    wide = live_view.lines(list(table.sessions.values()), _at("2026-11-30T10:07:00Z"), 140)
    assert "label-r0000000 +3" in wide[1]
