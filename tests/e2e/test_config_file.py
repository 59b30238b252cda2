"""Issue 31, items 2 and 5: mitmproxy's own config.yaml in the confdir is the one place for options.
Every command takes listen_port from it with no flag, the proxy its session_* options; options
given to a running proxy are never dropped silently; the light commands import nothing of
mitmproxy. Real parts: the `agent-session-ids` console script, a real proxy (mitmdump) with the
gateway stand-in loaded from config.yaml's own `scripts`, and a pi-like client process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import harness

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")]

CLI = str(Path(sys.executable).with_name("agent-session-ids"))
FAKE_AGENT = str(Path(__file__).resolve().parent.parent / "support" / "fake_agent.py")
SID = "019dbbc7-c8c5-748c-8710-3fdf6fefc083"
# runs a command the way the console script does, then says whether any mitmproxy module was imported
LIGHT = (
    "import sys; from agent_session_ids.cli.run import main; sys.argv = ['agent-session-ids', *sys.argv[1:]]\n"
    "try:\n    code = main()\nexcept SystemExit as e:\n    code = e.code\n"
    "print('MITMPROXY', sorted(m for m in sys.modules if m.startswith('mitmproxy'))[:3], code, file=sys.stderr)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    names = ("NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY") and k not in names}
    return {**env, **extra}


def ask(*argv: str, env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *argv], env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, **kw
    )


def named_pi_session(home: Path, cwd: Path) -> None:
    """A pi session of `cwd` named "Secret Project", whose first user turn is "fix the login bug"."""
    folder = home / ".pi" / "agent" / "sessions" / ("--" + str(cwd).lstrip("/").replace("/", "-") + "--")
    folder.mkdir(parents=True)
    lines = [
        {"type": "session", "version": 3, "id": SID, "timestamp": "2026-05-06T12:00:00.000Z", "cwd": str(cwd)},
        {"type": "message", "message": {"role": "user", "content": [{"type": "text", "text": "fix the login bug"}]}},
        {"type": "message", "message": {"role": "assistant", "content": [], "stopReason": "stop"}},
        {"type": "session_info", "name": "Secret Project"},
    ]
    (folder / f"2026-05-06T12-00-00-000Z_{SID}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.fixture
def configured(tmp_path):
    """A fresh confdir whose config.yaml sets listen_port (a free port), session_privacy and the
    gateway stand-in as a script; the proxy a test starts there is stopped afterwards."""
    port, confdir = free_port(), tmp_path / "confdir"
    confdir.mkdir()
    (confdir / "config.yaml").write_text(
        f"listen_port: {port}\nsession_privacy: true\nscripts:\n  - {harness.STANDIN_SCRIPT}\n"
    )
    env = clean_env(STANDIN_LOG=str(tmp_path / "standin.jsonl"))
    yield port, confdir, env, tmp_path
    ask("proxy", "stop", "--confdir", str(confdir), env=env)


def test_run_starts_the_proxy_on_the_config_files_port_and_it_honours_session_privacy(configured):
    port, confdir, env, tmp = configured
    home, cwd = tmp / "home", tmp / "project"
    cwd.mkdir()
    named_pi_session(home, cwd)
    agent = {
        "proxy": f"http://127.0.0.1:{port}",
        "ca": str(confdir / "mitmproxy-ca-cert.pem"),  # made by the proxy `run` starts
        "name": "pi",
        "first_user": "fix the login bug",
        "n_assistant": 1,
    }
    ran = ask(
        "run",
        "--confdir",
        str(confdir),
        "--",
        sys.executable,
        FAKE_AGENT,
        json.dumps(agent),
        env={**env, "HOME": str(home)},
        cwd=cwd,
    )
    assert ran.returncode == 0 and '"status": 200' in ran.stdout, (ran.stdout, ran.stderr)
    bodies = [
        json.loads(r["body"])
        for r in harness.read_standin_log(env["STANDIN_LOG"])
        if r.get("kind", "request") == "request"
    ]
    label = bodies[-1]["session_id"]
    # session_privacy: the name's hash, never the name (without it: secret-project-6fefc083)
    assert label.startswith("n") and label.endswith("-6fefc083") and "secret" not in label, label

    status = ask("proxy", "status", "--confdir", str(confdir), env=env)
    assert status.returncode == 0 and f"runs on http://127.0.0.1:{port} " in status.stdout, status
    lines = ask("env", "--confdir", str(confdir), env=env).stdout.splitlines()
    assert f"export HTTPS_PROXY='http://127.0.0.1:{port}'" in lines
    doctor = ask("doctor", "--confdir", str(confdir), env=env).stdout.splitlines()
    assert any(x.startswith("OK   proxy:") and f"127.0.0.1:{port}" in x for x in doctor), doctor
    config_line = next(x for x in doctor if "config file:" in x)
    assert str(confdir / "config.yaml") in config_line and f"listen_port: {port}" in config_line
    assert "session_privacy: True" in config_line


def test_launch_and_proxy_start_take_the_config_files_port_with_no_flag(configured):
    port, confdir, env, tmp = configured
    started = ask("proxy", "start", "--confdir", str(confdir), env=env)
    assert started.returncode == 0 and "started: agent-session-ids" in started.stdout, started
    assert f"127.0.0.1:{port}" in started.stdout
    bin_dir = tmp / "bin"  # a `pi` on PATH that shows the proxy it was given
    bin_dir.mkdir()
    (bin_dir / "pi").write_text(f"#!{sys.executable}\nimport os\nprint(os.environ['HTTPS_PROXY'])\n")
    (bin_dir / "pi").chmod(0o755)
    launched = ask("launch", "--confdir", str(confdir), "pi", env={**env, "PATH": f"{bin_dir}:{env['PATH']}"})
    assert launched.returncode == 0 and launched.stdout.strip() == f"http://127.0.0.1:{port}", launched


def test_options_given_to_a_running_proxy_are_not_dropped_silently_and_restart_applies_them(configured):
    port, confdir, env, _ = configured
    assert ask("proxy", "start", "--confdir", str(confdir), env=env).returncode == 0
    again = ask("proxy", "start", "--confdir", str(confdir), "--", "--set", "session_rename=keep", env=env)
    assert again.returncode == 1 and again.stderr.count("\n") == 1, again
    assert "--set session_rename=keep were NOT applied" in again.stderr
    assert f"agent-session-ids proxy restart --confdir {confdir} -- --set session_rename=keep" in again.stderr
    restarted = ask("proxy", "restart", "--confdir", str(confdir), "--", "--set", "session_rename=keep", env=env)
    assert restarted.returncode == 0 and "started:" in restarted.stdout, restarted
    pid = int((confdir / "agent-session-ids" / f"proxy-{port}.pid").read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"session_rename=keep" in argv and argv[argv.index(b"-p") + 1] == str(port).encode()


def test_bare_agent_session_ids_with_its_proxy_up_says_so_in_one_line(configured):
    port, confdir, env, _ = configured
    assert ask("proxy", "start", "--confdir", str(confdir), env=env).returncode == 0
    bare = ask("--set", f"confdir={confdir}", env=env)
    assert bare.returncode == 1 and bare.stderr.count("\n") == 1 and "Errno" not in bare.stderr, bare
    assert f"a proxy of yours already runs on http://127.0.0.1:{port}" in bare.stderr
    assert f"agent-session-ids proxy status --confdir {confdir}" in bare.stderr


def test_bare_agent_session_ids_on_a_port_another_program_holds_names_it(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        bare = ask("-p", str(port), "--set", f"confdir={tmp_path}", env=clean_env())
    assert bare.returncode == 1 and bare.stderr.count("\n") == 1 and "Errno" not in bare.stderr, bare
    assert f"port {port} is held by pid {os.getpid()}" in bare.stderr


def test_the_light_commands_import_nothing_of_mitmproxy(configured):
    _, confdir, env, _ = configured
    assert ask("proxy", "start", "--confdir", str(confdir), env=env).returncode == 0
    for argv in (
        ["env", "--confdir", str(confdir)],
        ["proxy", "status", "--confdir", str(confdir)],
        ["statusline", "--session", "s", "--file", str(confdir / "usage.jsonl")],
        ["--version"],
    ):
        done = subprocess.run([sys.executable, "-c", LIGHT, *argv], env=env, capture_output=True, text=True, timeout=60)
        assert done.stderr.splitlines()[-1] == "MITMPROXY [] 0", (argv, done.stdout, done.stderr)
