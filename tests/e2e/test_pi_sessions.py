"""Every case of session resolution, with a real pi (0.73.1, 0.87.1 and 1.6.0) through a real
mitmdump running the addon, and the gateway stand-in recording what arrived.

The tests branch on what each pi does, not on its version (see harness.pi_sends_session_id & co.):
0.73.1 names no session; 0.87.1 names it in every request (``x-session-id`` toward OpenRouter,
``x-opencode-session`` toward OpenCode) but writes its file with the first answer; 1.6.0 names it
too and writes its file, ``--name`` included, before its first request."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import harness
from harness import Mitmdump, agent_env, header, pi_session_files, read_jsonl, run_pi

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ADDON = str(ROOT / "addon" / "session_ids.py")
OPENROUTER = ["--provider", "openrouter", "--model", "openai/gpt-4o-mini"]


@pytest.fixture
def proxy():
    with Mitmdump(scripts=[ADDON, harness.STANDIN_SCRIPT]) as p:
        yield p


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def workdir(tmp_path, name="work") -> Path:
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    return d


def pi(pi_version, proxy, home, cwd, args, **kw):
    env = agent_env(proxy, home, pi_version=pi_version)
    result = run_pi(pi_version, args, env, cwd, **kw)
    assert result.returncode == 0, (result.stdout, result.stderr, proxy.output()[-3000:])
    assert not proxy.blocked_connects()
    return result


def first_user_text(record: dict) -> str:
    body = json.loads(record["body"])
    for m in body.get("messages") or body.get("input") or []:
        if m.get("role") == "user":
            c = m["content"]
            return c if isinstance(c, str) else c[0]["text"]
    raise AssertionError(f"no user message in {record['body'][:200]}")


def session_id(record: dict) -> str:
    return json.loads(record["body"])["session_id"]


def ids_for(records, prompt_start: str) -> list[str]:
    return [session_id(r) for r in records if first_user_text(r).startswith(prompt_start)]


def file_uuid(path: Path) -> str:
    return read_jsonl(path)[0]["id"]


def state_bound(proxy, key: str) -> str | None:
    """The ID bound to an agent session id in the state file (written within a second)."""
    path = Path(proxy.confdir) / "agent-session-ids" / "state.json"
    for _ in range(50):
        if path.exists():
            bound = {k.split(":", 1)[1]: v[0] for k, v in json.loads(path.read_text())["bound"].items()}
            if key in bound:
                return bound[key]
        time.sleep(0.1)
    return None


def test_new_sessions_first_request_carries_the_id_of_its_later_requests(pi_version, proxy, home, tmp_path):
    cwd = workdir(tmp_path)
    pi(pi_version, proxy, home, cwd, OPENROUTER + ["-p", "previous session [[bash: echo one]]"])
    (previous_file,) = pi_session_files(home, cwd)
    previous = ids_for(proxy.requests(), "previous session")
    assert len(previous) == 2 and len(set(previous)) == 1

    pi(pi_version, proxy, home, cwd, OPENROUTER + ["-p", "new session [[bash: echo two]]"])
    new_file = next(p for p in pi_session_files(home, cwd) if p != previous_file)
    new = ids_for(proxy.requests(), "new session")
    assert len(new) == 2 and len(set(new)) == 1, new
    # the naive heuristic (the newest file at the first request) would have sent the previous session
    assert new[0] != previous[0] and new[0] != file_uuid(previous_file)
    if harness.pi_sends_session_id(pi_version):  # pi named its session in x-session-id
        assert new[0] == file_uuid(new_file)
        new_records = [r for r in proxy.requests() if first_user_text(r).startswith("new session")]
        assert [header(r, "x-session-id") for r in new_records] == new
    else:
        assert new[0].startswith("ephemeral-")
        assert state_bound(proxy, file_uuid(new_file)) == new[0]
    first = next(r for r in proxy.requests() if first_user_text(r).startswith("new session"))
    assert first["session_ids"]["session"]["id"] == new[0]
    assert f"session {new[0]} (pi, " in first["comment"]


def test_second_new_session_in_the_same_cwd_gets_a_new_id(pi_version, proxy, home, tmp_path):
    cwd = workdir(tmp_path)
    for _ in range(2):
        pi(pi_version, proxy, home, cwd, OPENROUTER + ["-p", "same words [[bash: echo same]]"])
    sent = [session_id(r) for r in proxy.requests()]
    assert len(sent) == 4
    assert sent[0] == sent[1] and sent[2] == sent[3] and sent[0] != sent[2]


def test_continue_carries_the_continued_sessions_id_from_its_first_request(pi_version, proxy, home, tmp_path):
    cwd = workdir(tmp_path)
    pi(pi_version, proxy, home, cwd, OPENROUTER + ["-p", "original task [[bash: echo a]]"])
    original = session_id(proxy.requests()[0])
    pi(pi_version, proxy, home, cwd, OPENROUTER + ["-p", "unrelated other session"])
    pi(
        pi_version,
        proxy,
        home,
        cwd,
        OPENROUTER + ["--session", str(pi_session_files(home, cwd)[0]), "-p", "resumed via --session [[bash: echo b]]"],
    )
    records = proxy.requests()
    resumed = [session_id(r) for r in records[3:]]
    assert resumed == [original, original]
    if harness.pi_sends_session_id(pi_version):  # one ID, equal to pi's own
        assert original == file_uuid(pi_session_files(home, cwd)[0])
    # -c continues the newest file: the one just resumed
    pi(pi_version, proxy, home, cwd, OPENROUTER + ["-c", "-p", "continued with -c"])
    assert session_id(proxy.requests()[-1]) == original


def test_a_sub_agent_pi_in_the_same_cwd_keeps_its_own_id(pi_version, proxy, home, tmp_path):
    cwd = workdir(tmp_path)
    (cwd / "child.txt").write_text("child task [[bash: echo child]]")
    command = 'pi --provider openrouter --model openai/gpt-4o-mini -p "$(cat child.txt)"'
    pi(pi_version, proxy, home, cwd, OPENROUTER + ["-p", f"parent task [[bash: {command}]]"])
    records = proxy.requests()
    parent, child = ids_for(records, "parent task"), ids_for(records, "child task")
    assert len(parent) == 2 and len(child) == 2
    assert len(set(parent)) == 1 and len(set(child)) == 1 and parent[0] != child[0]
    assert len(pi_session_files(home, cwd)) == 2


def test_two_pi_processes_at_once_keep_their_own_ids(pi_version, proxy, home, tmp_path):
    # two in one cwd and one in another, all running at the same time
    a, b = workdir(tmp_path, "a"), workdir(tmp_path, "b")
    env = agent_env(proxy, home, pi_version=pi_version)
    runs = [
        (a, "first in a [[delay: 1]][[bash: echo 1]]"),
        (a, "second in a [[delay: 1]][[bash: echo 2]]"),
        (b, "only in b [[delay: 1]][[bash: echo 3]]"),
    ]
    procs = [
        subprocess.Popen(
            harness.pi_command(pi_version) + OPENROUTER + ["-p", prompt],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for cwd, prompt in runs
    ]
    for p in procs:
        out, err = p.communicate(timeout=90)
        assert p.returncode == 0, err
    records = proxy.requests()
    sent = {prompt: ids_for(records, prompt.split(" [[")[0]) for _, prompt in runs}
    for prompt, values in sent.items():
        assert len(values) == 2 and len(set(values)) == 1, (prompt, values)
    assert len({values[0] for values in sent.values()}) == 3


def test_no_session_gets_one_id_for_the_process_that_no_file_shares(pi_version, proxy, home, tmp_path):
    cwd = workdir(tmp_path)
    pi(pi_version, proxy, home, cwd, OPENROUTER + ["-p", "kept session [[bash: echo k]]"])
    pi(pi_version, proxy, home, cwd, OPENROUTER + ["--no-session", "-p", "throwaway [[bash*2: echo t]]"])
    throwaway = ids_for(proxy.requests(), "throwaway")
    assert len(throwaway) == 3 and len(set(throwaway)) == 1
    files = pi_session_files(home, cwd)
    assert len(files) == 1  # --no-session wrote nothing
    assert throwaway[0] not in {file_uuid(files[0]), session_id(proxy.requests()[0])}
    if harness.pi_sends_session_id(pi_version):  # pi names even a session it does not keep
        sent = [header(r, "x-session-id") for r in proxy.requests() if first_user_text(r).startswith("throwaway")]
        assert sent == throwaway
    else:
        assert throwaway[0].startswith("ephemeral-")


def rpc(pi_version, proxy, home, cwd, commands: list[dict]) -> None:
    """Drive `pi --mode rpc`, waiting for each prompt's agent_end before the next command."""
    env = agent_env(proxy, home, pi_version=pi_version)
    p = subprocess.Popen(
        harness.pi_command(pi_version) + OPENROUTER + ["--mode", "rpc"],
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for command in commands:
            p.stdin.write(json.dumps(command) + "\n")
            p.stdin.flush()
            done = "agent_end" if command["type"] == "prompt" else "response"
            deadline = time.time() + 60
            while time.time() < deadline:
                line = p.stdout.readline()
                assert line, p.stderr.read()
                event = json.loads(line)
                if event.get("type") == done and (done == "agent_end" or event.get("id") == command["id"]):
                    break
            else:
                raise AssertionError(f"no {done} for {command}")
        p.stdin.close()
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_name_set_mid_session_is_used_from_the_next_request(pi_version, proxy, home, tmp_path):
    cwd = workdir(tmp_path)
    rpc(
        pi_version,
        proxy,
        home,
        cwd,
        [
            {"id": "p1", "type": "prompt", "message": "naming test [[bash: echo x]]"},
            {"id": "n1", "type": "set_session_name", "name": "Refactor Auth Module"},
            {"id": "p2", "type": "prompt", "message": "after the name"},
        ],
    )
    sent = [session_id(r) for r in proxy.requests()]
    assert len(sent) == 3
    assert sent[0] == sent[1] and "refactor" not in sent[0]
    stable = proxy.requests()[0]["session_ids"]["session"]["id"]
    assert sent[2] == "refactor-auth-module-" + stable.replace("-", "")[-8:]
    assert proxy.requests()[2]["session_ids"]["session"]["name"] == "Refactor Auth Module"


def test_name_given_at_start_applies_once_pi_has_written_it(pi_version, proxy, home, tmp_path):
    cwd = workdir(tmp_path)
    if harness.pi_has_name_flag(pi_version):
        pi(pi_version, proxy, home, cwd, OPENROUTER + ["--name", "My Feature", "-p", "named at start [[bash: echo n]]"])
    else:  # 0.73.1 has no --name; naming before the first message is the same thing
        rpc(
            pi_version,
            proxy,
            home,
            cwd,
            [
                {"id": "n0", "type": "set_session_name", "name": "My Feature"},
                {"id": "p1", "type": "prompt", "message": "named at start [[bash: echo n]]"},
            ],
        )
    first, second = (session_id(r) for r in proxy.requests())
    stable = proxy.requests()[0]["session_ids"]["session"]["id"]
    named = "my-feature-" + stable.replace("-", "")[-8:]
    if harness.pi_writes_file_at_start(pi_version):  # the file, name included, is there at once
        assert first == named
        assert stable == file_uuid(pi_session_files(home, cwd)[0])
    else:
        assert first == stable  # the name is only in pi's memory at the first request
    assert second == named
    assert proxy.requests()[1]["session_ids"]["session"]["name"] == "My Feature"


def test_a_session_keeps_its_first_id_across_a_proxy_restart(pi_version, proxy, home, tmp_path):
    cwd = workdir(tmp_path)
    pi(pi_version, proxy, home, cwd, OPENROUTER + ["-p", "before restart [[bash: echo r]]"])
    one_shot = workdir(tmp_path, "one-shot")
    pi(pi_version, proxy, home, one_shot, OPENROUTER + ["-p", "a single request"])
    before = [session_id(r) for r in proxy.requests()]
    proxy.restart()
    pi(pi_version, proxy, home, cwd, OPENROUTER + ["-c", "-p", "after restart"])
    pi(pi_version, proxy, home, one_shot, OPENROUTER + ["-c", "-p", "after restart too"])
    after = [session_id(r) for r in proxy.requests()[3:]]
    assert after == [before[0], before[2]]
    if harness.pi_sends_session_id(pi_version):  # pi's own ids, which need no state to survive
        assert after == [file_uuid(pi_session_files(home, d)[0]) for d in (cwd, one_shot)]
    state = Path(proxy.confdir) / "agent-session-ids" / "state.json"
    if not harness.pi_writes_file_at_start(pi_version):
        # a first request came before its file: the addon kept what it decided then
        assert state.exists()
    if state.exists():  # pi 1.6.0: every request named a file that was there, nothing to keep
        assert oct(state.stat().st_mode & 0o777) == "0o600"


def test_a_program_that_is_not_an_agent_gets_a_per_process_fallback(proxy, tmp_path):
    client = (
        "import json, ssl, sys, urllib.request\n"
        "ctx = ssl.create_default_context(cafile=sys.argv[2])\n"
        "opener = urllib.request.build_opener(urllib.request.ProxyHandler({'https': sys.argv[1]}),"
        " urllib.request.HTTPSHandler(context=ctx))\n"
        "for host, path in [('openrouter.ai', '/api/v1/chat/completions')] * 2 + [('api.opper.ai', '/v3/compat/chat/completions')]:\n"
        "    body = json.dumps({'model': 'm', 'messages': [{'role': 'user', 'content': 'hi'}]}).encode()\n"
        "    req = urllib.request.Request(f'https://{host}{path}', body, {'content-type': 'application/json'})\n"
        "    opener.open(req).read()\n"
    )
    for _ in range(2):
        subprocess.run([sys.executable, "-c", client, proxy.proxy_url, str(proxy.ca_cert)], check=True, timeout=60)
    r = proxy.requests()
    assert len(r) == 6
    first, second = [session_id(x) for x in r[0:2]], [session_id(x) for x in r[3:5]]
    assert first[0] == first[1] and second[0] == second[1] and first[0] != second[0]
    assert first[0].startswith("process-")
    import uuid as _uuid

    _uuid.UUID(header(r[2], "x-opper-trace-id"))
    assert header(r[2], "x-opper-trace-id") == header(r[2], "x-opper-parent-span-id")
    assert r[0]["session_ids"]["session"]["fallback"] is True


def test_pi_to_opencode_and_opper(pi_version, proxy, home, tmp_path):
    cwd = workdir(tmp_path)
    harness.write_opper_models_json(home, pi_version)
    pi(
        pi_version,
        proxy,
        home,
        cwd,
        ["--provider", "opencode", "--model", "claude-sonnet-4-5", "-p", "zen task [[bash: echo z]]"],
    )
    zen = proxy.requests()
    assert {r["path"].split("?")[0] for r in zen} == {harness.pi_opencode_messages_path(pi_version)}
    values = [header(r, "x-opencode-session") for r in zen]
    assert len(values) == 2 and len(set(values)) == 1
    assert all(header(r, "x-opencode-client") == "pi" for r in zen)
    assert all("session_id" not in {k.lower() for k, _ in r["headers"]} for r in zen)
    if harness.pi_sends_session_id(pi_version):  # pi sent its own header: kept as it was
        assert values[0] == file_uuid(pi_session_files(home, cwd)[0])
        assert zen[0]["session_ids"]["session"]["id"] == values[0]
    else:  # ours: the last 30 chars of the stable ID
        assert values[0] == zen[0]["session_ids"]["session"]["id"][-30:] and len(values[0]) == 30

    pi(
        pi_version,
        proxy,
        home,
        cwd,
        ["--provider", "opper", "--model", harness.OPPER_MODEL, "-p", "opper task [[bash: echo o]]"],
    )
    pi(pi_version, proxy, home, cwd, ["--provider", "opper", "--model", harness.OPPER_MODEL, "-c", "-p", "more"])
    opper = proxy.requests()[2:]
    traces = [header(r, "x-opper-trace-id") for r in opper]
    assert len(traces) == 3 and len(set(traces)) == 1
    assert all(header(r, "x-opper-parent-span-id") == traces[0] for r in opper)
    assert traces[0] != values[0]
    if harness.pi_writes_file_at_start(pi_version):
        # the file is there from the first request: its trace is Opper's, uuid5 of the file's path
        from agent_session_ids.resolution import ids

        (opper_file,) = [p for p in pi_session_files(home, cwd) if file_uuid(p) != values[0]]
        assert traces[0] == ids.trace_uuid(str(opper_file))


def test_a_bad_rule_file_stops_start_up_with_one_line(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "mine.yaml").write_text("rules:\n  - name: x\n    match: {host: a.b}\n    set:\n      - hedaer: x\n")
    mitmdump = str(Path(sys.executable).with_name("mitmdump"))
    result = subprocess.run(
        [
            mitmdump,
            "--listen-host",
            "127.0.0.1",
            "-p",
            "0",
            "--set",
            f"confdir={tmp_path}",
            "-s",
            ADDON,
            "--set",
            f"session_rules={rules}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"{rules / 'mine.yaml'}:5: unknown key 'hedaer'" in output
    assert "Traceback" not in output
