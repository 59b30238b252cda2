#!/usr/bin/env python3
"""The README's example of the usage report, made for real: real pi 0.87.1 through a real mitmdump
with the addon and the gateway stand-in, whose answers carry the figures of ``[[usage: ...]]``.

    python tests/support/usage_example.py OUT_DIR

Two pi sessions: one on OpenRouter over three prompts (a cold cache, warm turns, then a turn that
another provider served: a flip), one on an Opper provider. OUT_DIR gets ``usage.jsonl`` (the
ledger), ``report.txt``, ``report.json``, ``report.html`` and, when Chromium is installed,
``report.png`` (a screenshot of the HTML page).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "addon"))

import harness  # noqa: E402

PI = "0.87.1"
OPENROUTER = ["--provider", "openrouter", "--model", "anthropic/claude-sonnet-4"]


def run(proxy, home, work, args):
    env = harness.agent_env(proxy, home, pi_version=PI)
    result = harness.run_pi(PI, args, env, work, timeout=180)
    harness.assert_ran(result, proxy)


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "usage-example").resolve()
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="usage-example-"))
    addon = HERE.parents[1] / "addon" / "session_ids.py"
    try:
        with harness.Mitmdump(scripts=[addon, harness.STANDIN_SCRIPT]) as proxy:
            home, work = root / "home", root / "work"
            work.mkdir(parents=True)
            run(
                proxy,
                home,
                work,
                OPENROUTER
                + [
                    "--name",
                    "refactor auth",
                    "-p",
                    "refactor the auth module [[bash*2: true]] "
                    "[[usage: in=18200 cached=0 write=17900 out=410 cost=0.0737 provider=Anthropic]]",
                ],
            )
            run(
                proxy,
                home,
                work,
                OPENROUTER
                + [
                    "-c",
                    "-p",
                    "now its tests [[bash*3: true]] "
                    "[[usage: in=21400 cached=19850 write=1300 out=380 cost=0.0162 provider=Anthropic]]",
                ],
            )
            time.sleep(3)  # some idle time before the next turn
            run(
                proxy,
                home,
                work,
                OPENROUTER
                + ["-c", "-p", "and the docs [[usage: in=23100 cached=0 write=0 out=520 cost=0.0771 provider=Google]]"],
            )
            home2, work2 = root / "home2", root / "work2"
            work2.mkdir(parents=True)
            harness.write_opper_models_json(home2, PI)
            run(
                proxy,
                home2,
                work2,
                [
                    "--provider",
                    "opper",
                    "--model",
                    harness.OPPER_MODEL,
                    "-p",
                    "summarise the changelog [[bash: true]] "
                    "[[usage: in=6100 cached=5632 out=150 cost=0.00071 provider=gcp]]",
                ],
            )
            ledger = proxy.confdir / "agent-session-ids" / "usage.jsonl"
            deadline = time.monotonic() + 30
            while ledger.read_bytes().count(b"\n") < 10 and time.monotonic() < deadline:
                time.sleep(0.1)
            shutil.copyfile(ledger, out / "usage.jsonl")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    from agent_session_ids.cli import report

    for name, args in (("report.txt", []), ("report.json", ["--json"]), ("report-by-model.txt", ["--by", "model"])):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            report.main(["--file", str(out / "usage.jsonl"), *args])
        (out / name).write_text(buffer.getvalue())
    report.main(["--file", str(out / "usage.jsonl"), "--html", str(out / "report.html")])
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=1000,760",
                f"--screenshot={out / 'report.png'}",
                (out / "report.html").as_uri(),
            ],
            capture_output=True,
            timeout=120,
        )
    print((out / "report.txt").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
