#!/usr/bin/env python3
"""The status line's time, and top's, on a full ledger (issue 20).

Usage (from the repository root, with the Python the package is installed in)::

    python tests/benchmarks/bench_statusline.py              # 32 MiB ledger, 20 runs each
    python tests/benchmarks/bench_statusline.py --rotated 3  # + three full rotated files beside it

It prints numbers and asserts nothing. Each figure is a whole process, as Claude Code starts it
after every answer: `agent-session-ids statusline --session ID` on a ledger of ~32 MiB (the size at
which the proxy rotates it) holding 400 sessions, beside the interpreter's own start (`python -c
pass`) in the same run. `top --once` is timed the same way (its first frame: the window found by
bisection, the active sessions' earlier turns looked up), and one refresh of a running `top` after
100 appended lines, in this process.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "addon"))

from agent_session_ids.usage import ledger  # noqa: E402
from agent_session_ids.usage.live_ledger import LiveLedger  # noqa: E402

SESSIONS = [f"0198c2d0-7b1e-7c3a-9f00-{i:012x}" for i in range(400)]


def line(session: str, epoch: float, rng: random.Random) -> bytes:
    return ledger.encode(
        {
            "ts": ledger.timestamp(epoch),
            "session": session,
            "label": "fix the parser",
            "agent": "claude",
            "cwd": "/home/me/src/project",
            "rule": "openrouter-session",
            "host": "openrouter.ai",
            "model": "anthropic/claude-sonnet-4",
            "served_model": "anthropic/claude-4-sonnet-20250522",
            "provider": rng.choice(("Anthropic", "Google")),
            "status": 200,
            "stream": True,
            "input_tokens": 12000,
            "cache_read_tokens": 11040,
            "cache_write_tokens": 300,
            "output_tokens": 240,
            "cost": 0.0041,
        }
    )


def fill(path: str, size: int, start: float, rng: random.Random) -> float:
    """Writes `size` bytes of turns a second apart from `start`; the epoch after the last."""
    epoch, written, batch = start, 0, []
    with open(path, "wb") as f:
        while written < size:
            data = line(rng.choice(SESSIONS), epoch, rng)
            if written + len(data) > size:
                break
            batch.append(data)
            written += len(data)
            epoch += 1.0
            if len(batch) >= 1000:
                f.write(b"".join(batch))
                batch = []
        f.write(b"".join(batch))
    return epoch


def timed(argv: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
        out.append((time.perf_counter() - t) * 1000)
    return out


def show(name: str, ms: list[float]) -> None:
    ms = sorted(ms)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    print(f"{name:<52} median {statistics.median(ms):7.1f} ms   p90 {p90:7.1f} ms   ({len(ms)} runs)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=32, help="the current file's size (32: the rotation size)")
    parser.add_argument("--rotated", type=int, default=0, help="full rotated files beside it (the proxy keeps 3)")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    rng = random.Random(1)
    script = str(Path(sys.executable).with_name("agent-session-ids"))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "usage.jsonl")
        # the newest turns end now, so `top`'s window holds the last hour of them
        size = args.mib << 20
        turns_per_file = size // len(line(SESSIONS[0], time.time(), rng))
        start = time.time() - turns_per_file * (args.rotated + 1)
        for n in range(args.rotated, 0, -1):
            start = fill(f"{path}.{n}", size, start, rng)
        fill(path, size, start, rng)
        total = sum(os.path.getsize(f) for f in ledger.files(path))
        session = SESSIONS[7]
        found = subprocess.run(
            [script, "statusline", "--file", path, "--session", session], capture_output=True, text=True
        ).stdout.strip()
        print(f"ledger: {len(ledger.files(path))} files, {total / (1 << 20):.1f} MiB; one session's line: {found}")
        show("python -c pass (the interpreter's start)", timed([sys.executable, "-c", "pass"], args.runs))
        show(
            "statusline, a session of the ledger",
            timed([script, "statusline", "--file", path, "--session", session], args.runs),
        )
        show(
            "statusline, a session it does not know",
            timed([script, "statusline", "--file", path, "--session", "unknown"], args.runs),
        )
        show("top --once (its first frame)", timed([script, "top", "--once", "--file", path], max(3, args.runs // 4)))
        live = LiveLedger(path, 3600)
        live.refresh(time.time())
        with open(path, "ab") as f:
            f.write(b"".join(line(rng.choice(SESSIONS), time.time(), rng) for _ in range(100)))
        t = time.perf_counter()
        live.refresh(time.time())
        print(
            f"{'top, one refresh after 100 appended lines (in process)':<52} {(time.perf_counter() - t) * 1000:7.1f} ms"
        )
        live.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
