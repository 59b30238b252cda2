"""Issue 4, load and soak: N agent-like processes (tests/support/fake_agent.py, each one looks like pi),
each in its own cwd with its own pi session files (some in pairs sharing a cwd), each sending M
requests over new and kept-alive connections through one real mitmdump running the addon.

At the stand-in: 0 requests lost, 0 failed, 0 attributed to the wrong session. mitmdump's RSS is
sampled during the run and printed (no assertion on time or memory).

    SOAK_AGENTS=50 SOAK_REQUESTS=20 (defaults, the CI form); SOAK_REQUESTS=1000 for the long run.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import harness
from harness import Mitmdump, header

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS / "support") not in sys.path:
    sys.path.insert(0, str(TESTS / "support"))

from test_trust import ADDON, finish, run_agent, sent_session_id, standin_records  # noqa: E402

import fake_agent  # noqa: E402

pytestmark = pytest.mark.e2e

AGENTS = int(os.environ.get("SOAK_AGENTS", "50"))
REQUESTS = int(os.environ.get("SOAK_REQUESTS", "20"))
PARALLEL = int(os.environ.get("SOAK_PARALLEL", str(AGENTS)))


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _plan(tmp_path, home) -> list:
    """Each agent's session written to disk, beside its decoys, and the ids its requests may carry."""
    plan = []  # (tag, cwd, first user, n_assistant, expected ids)
    for i in range(AGENTS):
        # every 5th pair of agents shares a cwd
        shared = (i // 2) % 5 == 0
        cwd = tmp_path / (f"pair-{i // 2}" if shared else f"agent-{i}")
        cwd.mkdir(exist_ok=True)
        sid = str(uuid.uuid4())
        n = 1 + i % 3
        name = f"soak task {i}" if i % 4 == 0 else None
        # decoys: another session in the same cwd with a different first turn, and one with the same
        # first turn in another agent's cwd
        fake_agent.write_pi_session(
            str(home), str(cwd), str(uuid.uuid4()), f"decoy of {i}", 1, ts="2026-05-01T00:00:00.000Z"
        )
        fake_agent.write_pi_session(str(home), str(cwd), sid, f"soak session {i}", n, name)
        label = {sid}
        if name:
            label.add(f"soak-task-{i}-{sid.replace('-', '')[-8:]}")
        plan.append((f"soak-{i}", cwd, f"soak session {i}", n, label))
    return plan


def test_soak_many_agents_no_request_lost_failed_or_misattributed(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    plan = _plan(tmp_path, home)
    rss: list[tuple[float, int]] = []
    with Mitmdump(scripts=[ADDON, harness.STANDIN_SCRIPT], sets=["flow_detail=0"]) as proxy:
        stop = threading.Event()

        def sample():
            t0 = time.monotonic()
            while not stop.is_set():
                value = rss_kb(proxy.pid)
                if value:
                    rss.append((time.monotonic() - t0, value))
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        results = {}
        for start in range(0, len(plan), PARALLEL):
            batch = plan[start : start + PARALLEL]
            procs = {
                tag: run_agent(
                    proxy,
                    home,
                    cwd,
                    wait=False,
                    tag=tag,
                    first_user=first,
                    n_assistant=n,
                    requests=REQUESTS,
                    connection="mixed",
                    timeout=60,
                )
                for tag, cwd, first, n, _ in batch
            }
            for tag, p in procs.items():
                results[tag] = finish(p, timeout=max(600, REQUESTS * 5))
        elapsed = time.monotonic() - t0
        stop.set()
        sampler.join()
        records = standin_records(proxy)
        output = proxy.output()
    sent = sum(1 for lines in results.values() for x in lines if "seq" in x)
    failed = [x for lines in results.values() for x in lines if "seq" in x and x["status"] != 200]
    lost = misattributed = unattributed = 0
    all_ids = set().union(*(expected for *_, expected in plan))
    wrong, missing = [], []
    for tag, _cwd, _first, _n, expected in plan:
        got = [r for r in records if header(r, "x-fake-agent") == tag]
        seqs = sorted(int(header(r, "x-fake-seq")) for r in got)
        lost += REQUESTS - len(set(seqs))
        for r in got:
            value = sent_session_id(r)
            meta = r["session_ids"] or {}
            why = (meta.get("session") or {}).get("source") or meta.get("error")
            if value in expected:
                continue
            if value is None or value not in all_ids:
                # no session_id, or a fallback: the request went out without its session
                unattributed += 1
                missing.append((tag, value, why))
            else:
                misattributed += 1  # another session's ID
                wrong.append((tag, value, why))
    figures = {
        "agents": AGENTS,
        "requests per agent": REQUESTS,
        "requests tried": sent,
        "received": len(records),
        "failed": len(failed),
        "lost": lost,
        "misattributed": misattributed,
        "without their session": unattributed,
        "seconds": round(elapsed, 1),
        "requests/s": round(sent / elapsed, 1),
    }
    if rss:
        values = [v for _, v in rss]
        figures["rss_mb"] = {
            "first": round(values[0] / 1024, 1),
            "min": round(min(values) / 1024, 1),
            "max": round(max(values) / 1024, 1),
            "last": round(values[-1] / 1024, 1),
            "samples": len(values),
        }
    print("\nsoak figures:", json.dumps(figures))
    assert "Traceback" not in output, output[-3000:]
    assert not failed, failed[:5]
    assert lost == 0
    assert misattributed == 0, wrong[:10]
    assert unattributed == 0, (unattributed, missing[:10])
    assert len(records) == sent == AGENTS * REQUESTS
