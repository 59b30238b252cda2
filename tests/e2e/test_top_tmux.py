"""`agent-session-ids top` as a person uses it: in a terminal (a tmux pane of a private tmux server),
over a ledger this test writes and appends to as the proxy would, read off the screen.

- the sessions show; lines appended later show on a later refresh (a new session, another turn of
  a known one), a line appended in two writes is read once whole; a resize redraws to the new width;
  `q` quits with status 0;
- with no ledger it says so, picks the ledger up once it appears, and quits on `q`;
- the edges: the last column at 80 columns, more sessions than rows (the totals and hint stay).

Nothing here asserts timing: every wait polls the screen until a deadline.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

TMUX = "/usr/bin/tmux"
CLI = Path(sys.executable).with_name("agent-session-ids")
WAIT_S = 30  # the longest any screen is waited for
UTF8 = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
TITLES = ["AGENT", "SESSION", "PROJECT", "REQS", "AGO", "INPUT", "HIT", "SESS", "COST", "MODEL", "PROVIDER"]

if not (os.path.exists(TMUX) or shutil.which("tmux")):
    pytest.skip("tmux is not installed here (the terminal these tests drive top in)", allow_module_level=True)


# -- the ledger, as the proxy writes it ---------------------------------------------------------------


def ts(epoch: float) -> str:
    """The ledger's ``ts``: UTC to the millisecond, ``2026-11-21T10:00:00.123Z``."""
    moment = datetime.fromtimestamp(epoch, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def line(
    session: str,
    agent: str,
    cwd: str,
    provider: str = "Anthropic",
    label: str | None = None,
    model: str = "anthropic/claude-sonnet-4",
    at: float | None = None,
    **figures,
) -> bytes:
    record = {"ts": ts(time.time() if at is None else at), "session": session}
    if label is not None:
        record["label"] = label
    record.update(
        agent=agent,
        cwd=cwd,
        rule="openrouter-session-id",
        host="openrouter.ai",
        model=model,
        served_model=model,
        provider=provider,
        status=200,
        stream=True,
    )
    record.update({"input_tokens": 12000, "cache_read_tokens": 11040, "output_tokens": 240, "cost": 0.0041, **figures})
    return (json.dumps(record, ensure_ascii=False, separators=(", ", ": ")) + "\n").encode()


def append(path: Path, data: bytes) -> None:
    """One write at the end, as the proxy's ledger writer does."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


# -- the terminal --------------------------------------------------------------------------------------


class Pane:
    """One tmux pane on a private server (its own socket name, no user config), running a command."""

    def __init__(self, tmp: Path) -> None:
        self.name = f"asi-top-{os.getpid()}-{secrets.token_hex(4)}"
        self.config = tmp / "tmux.conf"
        # the pane stays after its command ends; no status bar, so the pane is the whole window
        self.config.write_text(
            "set -g remain-on-exit on\nset -g status off\nset -g history-limit 0\nset -g default-shell /bin/sh\n"
        )
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("TMUX")}, **UTF8}
        self.status_file = tmp / "top.status"
        self.started = False
        self.socket: Path | None = None

    def tmux(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            [TMUX, "-u", "-L", self.name, "-f", str(self.config), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        if check:
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    def start(self, argv: list[str], width: int, height: int, lang: dict[str, str] = UTF8) -> None:
        # the shell the pane runs writes the command's exit status to a file once it ends (tmux's own
        # #{pane_dead_status} is not always set: tmux 3.3a sometimes reaps its pane's process late)
        self.status_file.unlink(missing_ok=True)
        command = (
            " ".join(f"{k}={v}" for k, v in lang.items())
            + " "
            + shlex.join(argv)
            + f"; echo $? > {shlex.quote(str(self.status_file))}"
        )
        self.tmux("new-session", "-d", "-s", "top", "-x", str(width), "-y", str(height), command)
        self.started = True
        self.socket = Path(self.show("#{socket_path}"))

    def screen(self) -> list[str]:
        return self.tmux("capture-pane", "-p", "-t", "top").split("\n")

    def show(self, what: str) -> str:
        return self.tmux("display-message", "-p", "-t", "top", what).strip()

    def wait(self, done, why: str) -> list[str]:
        """The screen, once ``done(screen)`` holds; fails with the last screen past the deadline."""
        deadline = time.monotonic() + WAIT_S
        while True:
            screen = self.screen()
            if done(screen):
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"top never showed {why}; the screen:\n" + "\n".join(screen))
            time.sleep(0.1)

    def ticks(self, n: int) -> None:
        """Wait until top has redrawn at least ``n`` times more (its clock, on the first line, moved)."""
        seen = {clock(self.screen())}
        while len(seen) <= n:
            self.wait(lambda screen: clock(screen) not in seen, "its clock move on")
            seen.add(clock(self.screen()))

    def exit_status(self) -> str:
        """The status the pane's command exited with (waits for it to end)."""
        deadline = time.monotonic() + WAIT_S
        while True:
            text = self.status_file.read_text() if self.status_file.exists() else ""
            if text.endswith("\n") and self.show("#{pane_dead}") == "1":  # and the pane's shell is gone
                return text.strip()
            if time.monotonic() > deadline:
                pytest.fail("top did not end; the screen:\n" + "\n".join(self.screen()))
            time.sleep(0.1)

    def close(self) -> None:
        if self.started:
            self.tmux("kill-server", check=False)  # this test's own server (its private socket) only
        if self.socket is not None and self.socket.is_socket() and self.name in self.socket.name:
            self.socket.unlink(missing_ok=True)  # tmux 3.3a leaves it behind


@pytest.fixture
def pane(tmp_path):
    p = Pane(tmp_path)
    try:
        yield p
    finally:
        p.close()


def top_argv(ledger: Path, *more: str) -> list[str]:
    return [str(CLI), "top", "--file", str(ledger), *more]


def clock(screen: list[str]) -> str | None:
    m = re.search(r"· (\d\d:\d\d:\d\d)$", screen[0].rstrip())
    return m.group(1) if m else None


def rows(screen: list[str]) -> dict[str, list[str]]:
    """The session rows on the screen by their SESSION cell's first word: their words."""
    out = {}
    for text in screen:
        words = text.split()
        if len(words) >= 11 and words[0] in ("pi", "claude", "codex") and not text.startswith("TOTAL"):
            out[words[1]] = words
    return out


def cells(words: list[str]) -> dict[str, str]:
    """AGENT, SESSION (possibly several words), then the nine last columns by their titles."""
    return {"AGENT": words[0], "SESSION": " ".join(words[1:-9]), **dict(zip(TITLES[2:], words[-9:], strict=True))}


def fits(cell: str, full: str) -> bool:
    """`cell` is `full`, or `full` cut to fit its column: a start of it and `…`."""
    return cell == full or (len(cell) >= 2 and cell.endswith("…") and full.startswith(cell[:-1]))


def titles_line(screen: list[str]) -> str | None:
    return next((text for text in screen if text.startswith("AGENT ")), None)


def total_line(screen: list[str]) -> str | None:
    return next((text for text in screen if text.startswith("TOTAL ")), None)


# -- the tests ----------------------------------------------------------------------------------------------


def test_top_in_a_terminal_follows_the_ledger_redraws_on_resize_and_quits_on_q(pane, tmp_path):
    ledger = tmp_path / "usage.jsonl"
    append(ledger, line("s1", "pi", "/x/alpha", label="fix the parser"))
    pane.start(top_argv(ledger), 100, 30)

    screen = pane.wait(lambda s: "fix" in rows(s) and total_line(s), "the first session")
    assert re.fullmatch(
        r"agent-session-ids top · 1 sessions? active in the last 1h 00m · \d\d:\d\d:\d\d", screen[0].rstrip()
    ), screen[0]
    assert screen[1].rstrip() == f"ledger {ledger}"
    assert titles_line(screen).split() == TITLES
    s1 = cells(rows(screen)["fix"])
    assert (s1["AGENT"], s1["PROJECT"], s1["REQS"], s1["INPUT"], s1["HIT"], s1["SESS"], s1["COST"], s1["PROVIDER"]) == (
        "pi",
        "alpha",
        "1",
        "12.0k",
        "92%",
        "92%",
        "$0.0041",
        "Anthropic",
    ), s1
    assert fits(s1["SESSION"], "fix the parser") and fits(s1["MODEL"], "claude-sonnet-4"), s1
    assert any(text.startswith("q quit") for text in screen), screen

    # a second session, and a second turn of the first: one write, as the writer batches lines
    now = time.time()
    append(
        ledger,
        line(
            "s2",
            "claude",
            "/x/beta",
            provider="Google",
            model="claude-opus-4-8",
            at=now - 1,
            input_tokens=20000,
            cache_read_tokens=5000,
            cost=0.0125,
        )
        + line("s1", "pi", "/x/alpha", label="fix the parser", at=now, cost=0.0059),
    )
    screen = pane.wait(
        lambda s: "s2" in rows(s) and cells(rows(s).get("fix", ["?"] * 11))["REQS"] == "2",
        "the new session and the first one's second turn",
    )
    s1, s2 = cells(rows(screen)["fix"]), cells(rows(screen)["s2"])
    assert (s1["REQS"], s1["COST"], s1["SESS"]) == ("2", "$0.0100", "92%"), s1
    assert (s2["AGENT"], s2["PROJECT"], s2["REQS"], s2["INPUT"], s2["HIT"], s2["COST"], s2["PROVIDER"]) == (
        "claude",
        "beta",
        "1",
        "20.0k",
        "25%",
        "$0.0125",
        "Google",
    ), s2
    assert fits(s2["MODEL"], "claude-opus-4-8"), s2
    assert screen[0].startswith("agent-session-ids top · 2 sessions active")
    # the latest activity first: s1's second turn came after s2's
    order = [text.split()[1] for text in screen if text.split()[:1] in (["pi"], ["claude"])]
    assert order == ["fix", "s2"], screen
    total = total_line(screen).split()
    assert all(figure in total for figure in ("3", "44.0k", "$0.0225")), total  # 12000 × 2 + 20000; 0.01 + 0.0125

    # a line that reaches the file in two writes is read once it is whole, and only once
    third = line("s3", "pi", "/x/gamma", label="third", cost=0.002)
    append(ledger, third[:40])
    pane.ticks(2)  # top has read the file at least once more meanwhile
    screen = pane.screen()
    assert "third" not in rows(screen) and "unreadable" not in screen[1], screen
    append(ledger, third[40:])
    screen = pane.wait(lambda s: "third" in rows(s), "the line written in two pieces")
    assert cells(rows(screen)["third"])["REQS"] == "1" and cells(rows(screen)["third"])["PROJECT"] == "gamma"
    assert screen[1].rstrip() == f"ledger {ledger}", screen[1]  # no line was skipped as unreadable
    assert screen[0].startswith("agent-session-ids top · 3 sessions active")

    # a smaller terminal: the table is laid out again for 80 columns, every row still there
    pane.tmux("resize-window", "-t", "top", "-x", "80", "-y", "24")
    assert pane.show("#{pane_width}x#{pane_height}") == "80x24"
    screen = pane.wait(
        lambda s: (titles_line(s) or "").split() == TITLES and len(rows(s)) == 3 and max(len(t) for t in s) <= 80,
        "the table fitted to 80 columns",
    )
    assert all(len(text) <= 80 for text in screen), screen
    laid_out = {cells(words)["PROJECT"]: cells(words) for words in rows(screen).values()}
    assert set(laid_out) == {"alpha", "beta", "gamma"}, screen
    assert laid_out["alpha"]["REQS"] == "2" and laid_out["beta"]["COST"] == "$0.0125", laid_out
    assert total_line(screen) and clock(screen), screen

    pane.tmux("send-keys", "-t", "top", "q")
    assert pane.exit_status() == "0"


def test_top_in_a_terminal_without_a_ledger_waits_for_one_and_quits_on_q(pane, tmp_path):
    ledger = tmp_path / "later" / "usage.jsonl"
    pane.start(top_argv(ledger), 100, 30)
    screen = pane.wait(lambda s: any("nothing recorded yet" in t for t in s), "that nothing is recorded yet")
    assert screen[0].startswith("agent-session-ids top · 0 sessions active in the last 1h 00m"), screen
    assert titles_line(screen) is None

    ledger.parent.mkdir()  # the proxy's first rewritten request: the ledger appears
    append(ledger, line("first-one", "pi", "/x/delta"))
    screen = pane.wait(lambda s: "first-one" in rows(s), "the session of the ledger that appeared")
    assert not any("nothing recorded" in t for t in screen)
    assert cells(rows(screen)["first-one"])["PROJECT"] == "delta"

    pane.tmux("send-keys", "-t", "top", "q")
    assert pane.exit_status() == "0"


def test_top_in_a_terminal_shows_only_the_window(pane, tmp_path):
    ledger = tmp_path / "usage.jsonl"
    append(ledger, line("old-one", "pi", "/x/old", at=time.time() - 3 * 3600) + line("new-one", "claude", "/x/new"))
    pane.start(top_argv(ledger, "--window", "1h"), 100, 30)
    screen = pane.wait(lambda s: "new-one" in rows(s), "the session of the last hour")
    assert "old-one" not in rows(screen) and screen[0].startswith("agent-session-ids top · 1 session")
    # the old session comes back: its earlier turn, read before the window, counts again
    append(ledger, line("old-one", "pi", "/x/old"))
    screen = pane.wait(lambda s: "old-one" in rows(s), "the old session's new turn")
    assert cells(rows(screen)["old-one"])["REQS"] == "2", screen
    pane.tmux("send-keys", "-t", "top", "Q")
    assert pane.exit_status() == "0"


def test_top_in_a_terminal_follows_the_ledger_through_a_rotation(pane, tmp_path):
    """The proxy rotates a full ledger (usage.jsonl -> usage.jsonl.1, a new usage.jsonl): top reads the
    rest of the old file and the new one, each line once."""
    ledger = tmp_path / "usage.jsonl"
    append(ledger, line("s1", "pi", "/x/alpha", label="rotating"))
    pane.start(top_argv(ledger), 100, 30)
    pane.wait(lambda s: "rotating" in rows(s), "the first session")
    append(ledger, line("s1", "pi", "/x/alpha", label="rotating"))  # the old file's last line...
    os.replace(ledger, tmp_path / "usage.jsonl.1")  # ...then the rotation, before top has read it
    append(ledger, line("s1", "pi", "/x/alpha", label="rotating") + line("s2", "claude", "/x/beta", label="fresh"))
    screen = pane.wait(lambda s: "fresh" in rows(s), "the session of the new file")
    screen = pane.wait(
        lambda s: cells(rows(s).get("rotating", ["?"] * 11))["REQS"] == "3", "all three turns of the first session"
    )
    assert cells(rows(screen)["fresh"])["REQS"] == "1"
    pane.ticks(1)  # and it stays so: nothing is read twice
    screen = pane.screen()
    assert (cells(rows(screen)["rotating"])["REQS"], cells(rows(screen)["rotating"])["COST"]) == ("3", "$0.0123")
    assert "4" in total_line(screen).split(), total_line(screen)
    pane.tmux("send-keys", "-t", "top", "q")
    assert pane.exit_status() == "0"


# -- the edges of the screen -----------------------------------------------------------------------


def test_top_at_80_columns_shows_the_last_column_whole_or_cut_with_an_ellipsis(pane, tmp_path):
    ledger = tmp_path / "usage.jsonl"
    append(ledger, line("s1", "pi", "/x/alpha", provider="Anthropic"))
    pane.start(top_argv(ledger), 80, 24)
    screen = pane.wait(lambda s: "s1" in rows(s), "the session")
    assert cells(rows(screen)["s1"])["PROVIDER"] in ("Anthropic", "Anthro…", "Anthrop…", "Anthropi…"), screen
    hint = next(t for t in screen if t.startswith("q quit"))
    assert hint.rstrip().endswith(("changed", "…")), hint
    pane.tmux("send-keys", "-t", "top", "q")
    assert pane.exit_status() == "0"


def test_top_with_more_sessions_than_rows_keeps_the_totals_and_the_hint_on_screen(pane, tmp_path):
    ledger = tmp_path / "usage.jsonl"
    now = time.time()
    append(ledger, b"".join(line(f"s{i:02d}", "pi", f"/x/p{i}", at=now - 60 + i) for i in range(30)))
    pane.start(top_argv(ledger), 80, 24)
    screen = pane.wait(lambda s: "s29" in rows(s), "the sessions")
    assert any(re.match(r"… and \d+ more sessions", t) for t in screen), screen
    assert total_line(screen) is not None, screen
    assert any(t.startswith("q quit") for t in screen), screen
    pane.tmux("send-keys", "-t", "top", "q")
    assert pane.exit_status() == "0"


def test_top_in_a_c_locale_terminal_marks_a_flip_in_ascii(pane, tmp_path):
    # curses cannot draw ⚠ or · where the locale is C: it would drop them, and the flip's mark with them
    ledger = tmp_path / "usage.jsonl"
    now = time.time()
    append(
        ledger,
        line("s1", "pi", "/x/alpha", provider="Anthropic", at=now - 20)
        + line("s1", "pi", "/x/alpha", provider="Google", at=now - 10),
    )
    pane.start(top_argv(ledger), 100, 24, lang={"LANG": "C", "LC_ALL": "C"})
    screen = pane.wait(lambda s: "s1" in rows(s), "the session")
    assert cells(rows(screen)["s1"])["PROVIDER"] == "!Google", screen
    assert screen[0].startswith("agent-session-ids top - 1 session active"), screen[0]
    assert all(text.isascii() for text in screen), screen
    pane.tmux("send-keys", "-t", "top", "q")
    assert pane.exit_status() == "0"


def test_top_in_a_terminal_shows_a_session_of_a_ledger_rewritten_in_place_to_a_larger_size(pane, tmp_path):
    ledger = tmp_path / "usage.jsonl"
    append(ledger, line("before-one", "pi", "/x/before"))
    pane.start(top_argv(ledger), 100, 30)
    pane.wait(lambda s: "before-one" in rows(s), "the session before the rewrite")
    pane.ticks(1)  # top has read to the end of the file
    # emptied and written again in place (same file, never shorter than before): one pwrite over it
    rewritten = line("after-one", "claude", "/x/after", label="after-the-rewrite-of-the-ledger")
    assert len(rewritten) >= ledger.stat().st_size
    fd = os.open(ledger, os.O_WRONLY)
    try:
        os.pwrite(fd, rewritten, 0)
    finally:
        os.close(fd)
    screen = pane.wait(
        lambda s: any(cells(words)["PROJECT"] == "after" for words in rows(s).values()),
        "the session written after the rewrite",
    )
    assert "unreadable" not in screen[1], screen
    pane.tmux("send-keys", "-t", "top", "q")
    assert pane.exit_status() == "0"
