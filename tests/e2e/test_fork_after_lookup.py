"""Issue 9, defect 7: a fork after the lookup, through a real mitmdump.

A pi-like client (tests/support/fake_agent.py's request helpers) in folder A sends one request continuing
session A and reads the answer: the addon has looked its process up by then, since it waits for
the lookup before it forwards a request. Only then the client forks. The child goes to folder B and
sends, on the same connection, a request that continues session B:

- "keep": the parent keeps its copy of the socket while the child sends; once the child is gone,
  the parent sends again;
- "close": the parent closes its copy first, and goes on;
- "exit": the parent exits first.

The child must never get A's session: while both hold the socket, neither can be told apart (a
per-process fallback ID); a child left alone with the socket is resolved as itself, to B.

Run as a script, this file is that client: python test_fork_after_lookup.py '<json config>'.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS / "support") not in sys.path:
    sys.path.insert(0, str(TESTS / "support"))

import fake_agent  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "addon" / "session_ids.py"
FALLBACK_PREFIXES = ("process-", "connection-", "ephemeral-")


def client(cfg: dict) -> int:
    """The parent's request, the fork, the child's request (and, for "keep", the parent's again)."""
    fake_agent.set_name("pi")
    sock = fake_agent.proxy_socket(cfg)
    sock.sendall(fake_agent.raw_request(cfg, 0))
    fake_agent.emit({"tag": cfg["tag"], "seq": 0, "status": fake_agent.read_response(sock), "pid": os.getpid()})
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: wait for the parent's go (or its exit), then send as the other session
        os.close(go_w)
        os.read(go_r, 1)
        child = dict(cfg["child"], proxy=cfg["proxy"])
        os.chdir(child["cwd"])
        try:
            sock.sendall(fake_agent.raw_request(child, 1))
            fake_agent.emit(
                {"tag": child["tag"], "seq": 1, "status": fake_agent.read_response(sock), "pid": os.getpid()}
            )
        finally:
            os._exit(0)
    os.close(go_r)
    mode = cfg["parent"]
    if mode == "exit":
        os._exit(0)  # its socket closes as it exits, before the pipe's write end: then the child sends
    if mode == "close":
        sock.close()
    os.write(go_w, b"x")
    os.waitpid(pid, 0)
    if mode == "keep":
        sock.sendall(fake_agent.raw_request(cfg, 2))
        fake_agent.emit({"tag": cfg["tag"], "seq": 2, "status": fake_agent.read_response(sock), "pid": os.getpid()})
    return 0


if __name__ == "__main__":
    sys.exit(client(json.loads(sys.argv[1])))


# --------------------------------------------------------------------------- the tests

import pytest  # noqa: E402

import harness  # noqa: E402
from harness import header  # noqa: E402

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(sys.platform != "linux", reason="the process lookup reads Linux /proc"),
]


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not harness._drop(k)}
    env.update(HOME=str(home), PYTHONDONTWRITEBYTECODE="1")
    return env


def _records(proxy) -> dict[tuple[str, str], dict]:
    out = {}
    for r in harness.read_standin_log(proxy.standin_log):
        if r.get("kind", "request") == "request":
            out[(header(r, "x-fake-agent"), header(r, "x-fake-seq"))] = r
    return out


def _sent_id(record: dict) -> str | None:
    return json.loads(base64.b64decode(record["body_b64"])).get("session_id")


@pytest.fixture(scope="module")
def proxy():
    with harness.Mitmdump(scripts=[ADDON, harness.STANDIN_SCRIPT], sets=["flow_detail=0"]) as p:
        yield p


@pytest.mark.parametrize("parent", ["keep", "close", "exit"])
def test_a_child_forked_after_the_lookup_never_gets_its_parents_session(proxy, tmp_path, parent):
    home = tmp_path / "home"
    a_cwd, b_cwd = tmp_path / "a", tmp_path / "b"
    for d in (home, a_cwd, b_cwd):
        d.mkdir()
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    fake_agent.write_pi_session(str(home), str(a_cwd), a, "session of A", 1)
    fake_agent.write_pi_session(str(home), str(b_cwd), b, "session of B", 1)
    tag = f"fork-after-{parent}"
    cfg = {
        "proxy": proxy.proxy_url,
        "timeout": 30,
        "tag": tag,
        "first_user": "session of A",
        "n_assistant": 1,
        "parent": parent,
        "child": {"cwd": str(b_cwd), "tag": f"{tag}-child", "first_user": "session of B", "n_assistant": 1},
    }
    run = subprocess.run(
        [sys.executable, __file__, json.dumps(cfg)],
        cwd=str(a_cwd),
        env=_env(home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [json.loads(x) for x in run.stdout.splitlines() if x.startswith("{")]
    want = {(tag, 0), (f"{tag}-child", 1)} | ({(tag, 2)} if parent == "keep" else set())
    assert {(x["tag"], x["seq"]) for x in lines if x["status"] == 200} == want, (lines, run.stderr)

    records = _records(proxy)
    first, kid = records[(tag, "0")], records[(f"{tag}-child", "1")]
    meta = kid["session_ids"]
    assert _sent_id(first) == a
    got = _sent_id(kid)
    assert got != a, (
        f"the child forked after the lookup (pid {meta['process']['pid']}, in {b_cwd}) "
        f"got its parent's session: {meta['session']['source']}"
    )
    if parent == "keep":
        # parent and child both hold the socket: who sent cannot be told
        assert got.startswith(FALLBACK_PREFIXES), (got, meta["session"]["source"])
        assert "shared" in meta["session"]["source"], meta["session"]["source"]
        again = records[(tag, "2")]
        assert _sent_id(again) == a, again["session_ids"]["session"]["source"]  # alone again
    else:
        # the child alone holds the socket: it is the process behind the connection now
        assert meta["process"]["pid"] == lines[1]["pid"] and meta["process"]["cwd"] == str(b_cwd), meta["process"]
        assert got == b, meta["session"]["source"]
