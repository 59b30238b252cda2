"""An idle proxy stays idle (issue 9, defect 1): after one request from an agent whose session
folder holds files with no user turn (older Claude Code's summary-only files, a pi file with only
its session line, an aborted Codex rollout), mitmdump uses next to no CPU.

The check is a condition on CPU time, read from /proc/<pid>/stat over an idle stretch; the spin
this guards against used a whole core (6.0 s of CPU in 6 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import harness
from harness import Mitmdump

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
ADDON = str(ROOT / "addon" / "session_ids.py")
FAKE_AGENT = str(TESTS / "support" / "fake_agent.py")
pytestmark = pytest.mark.e2e

IDLE_S = 5.0
# A spinning loop burns ~IDLE_S of CPU; an idle mitmdump (its 1 s rules poll) a few hundredths.
MAX_IDLE_CPU_S = 0.5


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def claude_folder(home: Path, cwd: Path) -> Path:
    name = "".join(c if c.isascii() and c.isalnum() else "-" for c in str(cwd))
    return home / ".claude" / "projects" / name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("case", ["claude", "pi", "pi-partial-line", "pi-partial-line-past-budget"])
def test_an_idle_proxy_stays_idle_after_a_request_to_a_folder_of_header_only_files(tmp_path, case):
    """Every way a store can be left "behind": header-only files, and (issue 17) a session file
    whose last line has no newline, as a pi that crashed mid-write leaves it, named by the request
    (`x-session-id`), small or past the tail budget read per request."""
    home, cwd = tmp_path / "home", tmp_path / "work"
    cwd.mkdir(parents=True)
    agent = case.split("-")[0]
    headers = {}
    if case.startswith("pi-partial-line"):
        folder = home / ".pi" / "agent" / "sessions" / ("--" + str(cwd).lstrip("/").replace("/", "-") + "--")
        folder.mkdir(parents=True)
        sid = "0199cccc-0000-7000-8000-000000000001"
        lines = [
            {"type": "session", "version": 3, "id": sid, "timestamp": "2026-11-29T10:00:00.000Z", "cwd": str(cwd)},
            {"type": "message", "id": "u1", "message": {"role": "user", "content": "a question"}},
        ]
        turn = json.dumps({"type": "message", "message": {"role": "assistant", "content": "x" * 1000}}) + "\n"
        filler = turn * ((5 << 20) // len(turn)) if case.endswith("past-budget") else ""
        (folder / f"2026-11-29T10-00-00-000Z_{sid}.jsonl").write_text(
            "".join(json.dumps(x) + "\n" for x in lines) + filler + '{"type":"message","id":"a2","partial'
        )
        headers = {"x-session-id": sid}
    elif agent == "claude":
        folder = claude_folder(home, cwd)
        folder.mkdir(parents=True)
        (folder / "0199aaaa-0000-7000-8000-000000000001.jsonl").write_text(
            "".join(json.dumps({"type": "summary", "summary": f"s{i}", "leafUuid": "x"}) + "\n" for i in range(3))
        )
    else:
        folder = home / ".pi" / "agent" / "sessions" / ("--" + str(cwd).lstrip("/").replace("/", "-") + "--")
        folder.mkdir(parents=True)
        for i in range(200):
            sid = f"0199aaaa-0000-7000-8000-{i:012d}"
            (folder / f"2026-11-29T10-00-{i % 60:02d}-000Z_{sid}.jsonl").write_text(
                json.dumps(
                    {
                        "type": "session",
                        "version": 3,
                        "id": sid,
                        "timestamp": "2026-11-29T10:00:00.000Z",
                        "cwd": str(cwd),
                    }
                )
                + "\n"
            )
    with Mitmdump(scripts=[ADDON, harness.STANDIN_SCRIPT], sets=["flow_detail=0"]) as proxy:
        cfg = {
            "proxy": proxy.proxy_url,
            "ca": str(proxy.ca_cert),
            "name": agent,
            "tag": "idle",
            "first_user": "a question no file holds",
            "n_assistant": 1,
            "requests": 2,
            "headers": headers,
        }
        env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
        env["HOME"] = str(home)
        run = subprocess.run(
            [sys.executable, FAKE_AGENT, json.dumps(cfg)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stdout + run.stderr
        records = proxy.requests()
        assert len(records) == 2
        # the request was resolved by the process path: the agent and its cwd were seen
        meta = records[-1]["session_ids"]
        assert meta["session"]["agent"] == agent and meta["process"]["cwd"] == str(cwd), meta
        if headers:  # the session file named by the request was the one read
            assert meta["session"]["file"].endswith(headers["x-session-id"] + ".jsonl"), meta
        before = cpu_seconds(proxy.pid)
        start = time.monotonic()
        while time.monotonic() - start < IDLE_S:
            time.sleep(0.25)
        used = cpu_seconds(proxy.pid) - before
        assert used < MAX_IDLE_CPU_S, f"mitmdump used {used:.2f} s of CPU in {IDLE_S} s of idle time"
