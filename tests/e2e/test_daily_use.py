"""Issue 19: every day with nothing to remember. The `agent-session-ids` command as a user runs it
(the console script of this environment, a real process): `proxy start|status|stop|restart`,
`launch` and `run`, `env`, `doctor`. The only stand-in is the gateway one, loaded after the addon
through `proxy start -- -s`. Real pi 1.6.0 is launched in a fresh HOME with no variable set by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import harness

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

CLI = str(Path(sys.executable).with_name("agent-session-ids"))
OPENROUTER = ["--provider", "openrouter", "--model", "openai/gpt-4o-mini"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cli:
    """The command with one port and confdir, and the stand-in's log in its environment."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.confdir = tmp_path / "confdir"
        self.log = tmp_path / "standin.jsonl"
        self.env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
        self.env["STANDIN_LOG"] = str(self.log)

    def args(self) -> list[str]:
        return ["--port", str(self.port), "--confdir", str(self.confdir)]

    def __call__(self, *words: str, env: dict | None = None, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        command, rest = words[0], list(words[1:])
        if command in ("proxy", "service"):
            argv = [CLI, command, rest[0], *self.args(), *rest[1:]]
        elif command in ("launch", "run", "env", "doctor"):
            argv = [CLI, command, *self.args(), *rest]
        else:
            argv = [CLI, command, *rest]
        return subprocess.run(
            argv, env=env or self.env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw
        )

    def start(self) -> subprocess.CompletedProcess:
        return self("proxy", "start", "--", "-s", str(harness.STANDIN_SCRIPT))

    def pid(self) -> int | None:
        path = self.confdir / "agent-session-ids" / f"proxy-{self.port}.pid"
        return int(path.read_text()) if path.exists() else None

    def requests(self) -> list[dict]:
        return [r for r in harness.read_standin_log(self.log) if r.get("kind", "request") == "request"]


@pytest.fixture
def cli(tmp_path):
    c = Cli(tmp_path)
    yield c
    c("proxy", "stop")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_start_status_stop_and_nothing_left_behind(cli):
    started = cli.start()
    assert started.returncode == 0 and started.stdout.startswith("started: agent-session-ids"), started
    pid = cli.pid()
    assert pid and alive(pid)
    again = cli.start()  # refuses a second proxy on the port: the running one is used
    assert again.returncode == 0 and again.stdout.startswith("already running: "), again
    assert cli.pid() == pid
    status = cli("proxy", "status")
    assert status.returncode == 0 and "openrouter-session-id" in status.stdout and f":{cli.port}" in status.stdout
    stopped = cli("proxy", "stop")
    assert stopped.returncode == 0 and f"pid {pid}" in stopped.stdout
    assert not alive(pid), "proxy stop left the proxy running"
    assert cli.pid() is None
    # stopping what does not run says so, and is no error; status is one
    assert cli("proxy", "stop").stdout.startswith("no proxy is running")
    after = cli("proxy", "status")
    assert after.returncode == 1 and "agent-session-ids proxy start" in after.stderr and "Traceback" not in after.stderr


def test_two_starts_at_once_give_one_proxy_and_a_stale_pid_file_is_handled(cli):
    folder = cli.confdir / "agent-session-ids"
    folder.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (folder / f"proxy-{cli.port}.pid").write_text(f"{dead.pid}\n")  # a proxy that died long ago
    starts = [
        subprocess.Popen(
            [CLI, "proxy", "start", *cli.args(), "--", "-s", str(harness.STANDIN_SCRIPT)],
            env=cli.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in starts]
    assert [p.returncode for p in starts] == [0, 0], outs
    assert sorted(o[0].split(":")[0] for o in outs) == ["already running", "started"], outs
    status = json.loads(
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"""
import json, urllib.request
o = urllib.request.build_opener(urllib.request.ProxyHandler({{'http': 'http://127.0.0.1:{cli.port}'}}))
print(o.open('http://agent-session-ids.invalid/status', timeout=5).read().decode())""",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    )
    supervisor = cli.pid()  # the pid file names the supervisor; mitmdump, its child, answers
    assert str(status["pid"]) in Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()


def test_a_port_held_by_another_program_is_named(cli):
    with socket.socket() as other:
        other.bind(("127.0.0.1", cli.port))
        other.listen()
        started = cli.start()
        assert started.returncode == 1 and "Traceback" not in started.stderr
        assert f"port {cli.port} is held by pid {os.getpid()}" in started.stderr, started.stderr
        assert "--port" in started.stderr  # the fix
        doctor = cli("doctor")
        assert doctor.returncode == 1 and "is not agent-session-ids" in doctor.stdout
    assert cli.pid() is None


def test_launch_pi_in_a_fresh_home_starts_the_proxy_and_a_second_launch_reuses_it(cli, tmp_path):
    shim = harness.pi_shim_dir("1.6.0")
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {
        **{k: v for k, v in cli.env.items() if not k.upper().startswith(("NODE_", "SSL_CERT", "PI_"))},
        "HOME": str(home),
        "PATH": os.pathsep.join([str(shim), harness.node_bin_dir(), os.environ["PATH"]]),
        "PI_OFFLINE": "1",
        "PI_TELEMETRY": "0",
        **harness.FAKE_KEYS,
    }
    cli.start()  # with the stand-in after the addon; launch finds this proxy and uses it
    pid = cli.pid()
    for prompt in ("first launch", "second launch"):
        run = cli("launch", "pi", *OPENROUTER, "-p", prompt, env=env, cwd=work)
        assert run.returncode == 0, (run.stdout, run.stderr)
    assert cli.pid() == pid, "the second launch started another proxy"
    records = cli.requests()
    sent = [json.loads(r["body"])["session_id"] for r in records if r["path"] == "/api/v1/chat/completions"]
    assert len(sent) == 2 and len(set(sent)) == 2, sent  # two sessions, each with its own id
    for record in records:
        assert record["session_ids"]["session"]["agent"] == "pi", record["session_ids"]
        assert record["session_ids"]["session"]["source"].startswith("request header x-session-id")


def test_run_with_nothing_running_starts_the_proxy_and_it_stays_up(cli, tmp_path):
    show = "import os, sys; print(os.environ['HTTPS_PROXY'], os.environ['SSL_CERT_FILE']); sys.exit(7)"
    run = cli("run", "--", sys.executable, "-c", show)
    assert run.returncode == 7, (run.stdout, run.stderr)  # the program's own exit code
    proxy_url, bundle = run.stdout.split()
    assert proxy_url == f"http://127.0.0.1:{cli.port}"
    assert (cli.confdir / "mitmproxy-ca-cert.pem").read_text() in Path(bundle).read_text()  # roots + the CA
    pid = cli.pid()
    assert pid and alive(pid), "run did not leave the proxy up for the next agents"
    again = cli("run", "--", sys.executable, "-c", "pass")
    assert again.returncode == 0 and cli.pid() == pid  # the second reuses it
    assert cli("proxy", "status").returncode == 0


def test_env_lines_point_a_shell_at_the_proxy(cli, tmp_path):
    assert cli.start().returncode == 0
    work = tmp_path / "work"
    work.mkdir()
    client = tmp_path / "client.py"
    client.write_text(
        "import json, urllib.request\n"
        "body = json.dumps({'model': 'm', 'messages': [{'role': 'user', 'content': 'hi'}]}).encode()\n"
        "request = urllib.request.Request('https://openrouter.ai/api/v1/chat/completions', body,\n"
        "                                 {'content-type': 'application/json'})\n"
        "print(urllib.request.urlopen(request).status)\n"
    )
    script = f'eval "$({CLI} env {" ".join(cli.args())})" && {sys.executable} {client}'
    run = subprocess.run(["sh", "-c", script], env=cli.env, capture_output=True, text=True, timeout=60, cwd=work)
    assert run.returncode == 0 and run.stdout.strip() == "200", (run.stdout, run.stderr)
    (record,) = cli.requests()
    assert json.loads(record["body"])["session_id"].startswith("process-")  # the script is no agent
    # and a real agent: pi 1.6.0 in a fresh HOME, its shell set by the eval alone
    home = tmp_path / "home"
    home.mkdir()
    pi_env = {
        **{k: v for k, v in cli.env.items() if not k.upper().startswith(("NODE_", "SSL_CERT", "PI_"))},
        "HOME": str(home),
        "PATH": os.pathsep.join([str(harness.pi_shim_dir("1.6.0")), harness.node_bin_dir(), os.environ["PATH"]]),
        "PI_OFFLINE": "1",
        "PI_TELEMETRY": "0",
        **harness.FAKE_KEYS,
    }
    agent = subprocess.run(
        ["sh", "-c", f'eval "$({CLI} env {" ".join(cli.args())})" && pi {" ".join(OPENROUTER)} -p "through the eval"'],
        env=pi_env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=work,
        stdin=subprocess.DEVNULL,
    )
    assert agent.returncode == 0, (agent.stdout, agent.stderr)
    (pi_record,) = [r for r in cli.requests() if "through the eval" in r["body"]]
    assert pi_record["session_ids"]["session"]["agent"] == "pi"
    assert pi_record["session_ids"]["session"]["source"].startswith("request header x-session-id")
    unset = cli("env", "--unset", "--shell", "fish")
    assert "set -e HTTPS_PROXY" in unset.stdout
    bad = cli("env", "--shell", "tcsh")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "fish" in bad.stderr


def test_doctor_is_green_when_all_is_well_and_names_each_fix(cli, tmp_path):
    assert cli.start().returncode == 0
    well = {**cli.env, "HTTPS_PROXY": f"http://127.0.0.1:{cli.port}", "NO_PROXY": "localhost,127.0.0.1"}
    green = cli("doctor", env=well)
    assert green.returncode == 0, green.stdout
    assert "FAIL" not in green.stdout and "OK   TLS (Python" in green.stdout
    # a gateway host in NO_PROXY
    bypass = cli("doctor", env={**well, "NO_PROXY": "localhost,.openrouter.ai"})
    assert bypass.returncode == 1 and "openrouter.ai bypass the proxy" in bypass.stdout
    # a CA file that is not the proxy's
    ca = cli.confdir / "mitmproxy-ca-cert.pem"
    real = ca.read_bytes()
    other = tmp_path / "other"
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"""
from mitmproxy.certs import CertStore
CertStore.from_store({str(other)!r}, 'mitmproxy', 2048)""",
        ],
        check=True,
        timeout=60,
    )
    ca.write_bytes((other / "mitmproxy-ca-cert.pem").read_bytes())
    try:
        mismatch = cli("doctor", env=well)
        assert mismatch.returncode == 1 and "FAIL TLS" in mismatch.stdout and "proxy restart" in mismatch.stdout
    finally:
        ca.write_bytes(real)
    # the proxy stopped
    cli("proxy", "stop")
    stopped = cli("doctor", env=well)
    assert stopped.returncode == 1 and "no proxy answers" in stopped.stdout
    assert f"fix: agent-session-ids proxy start --port {cli.port}" in stopped.stdout
    as_json = json.loads(cli("doctor", "--json", env=well).stdout)
    assert {c["name"]: c["state"] for c in as_json}["proxy"] == "fail"


def test_bad_input_gets_one_line_and_no_traceback(cli):
    for words in (("launch", "no-such-agent"), ("proxy", "bogus"), ("run",), ("proxy", "status")):
        result = cli(*words)
        assert result.returncode != 0, words
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, (words, result.stderr)
    bad_port = subprocess.run([CLI, "proxy", "start", "--port", "70000"], capture_output=True, text=True, timeout=30)
    assert bad_port.returncode == 1 and "not a port" in bad_port.stderr
    missing = cli("run", "--", "/nonexistent/agent")  # nothing to run: no proxy is started for it
    assert missing.returncode == 1 and "is not on PATH" in missing.stderr and cli.pid() is None
    assert cli("proxy", "status").returncode == 1
    typo = cli("reprot")  # a mistyped command, not a filter for a proxy in the foreground
    assert typo.returncode == 1 and typo.stderr.count("\n") == 1 and "did you mean report?" in typo.stderr


class _NoProxy:
    """What agent_clients' env builders read of a proxy, only for the parts that are not proxy
    variables: those are removed again, so that launch alone sets them."""

    proxy_url = "http://unused.invalid"
    ca_cert = "/unused"


PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE")


def _shim(folder: Path, name: str, argv: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\nexec " + " ".join(f'"{a}"' for a in argv) + ' "$@"\n')
    path.chmod(0o755)
    return folder


def test_launch_claude_code_with_no_variable_set_by_hand(cli, tmp_path, claude):
    launched(cli, tmp_path, "claude")


def test_launch_codex_with_no_variable_set_by_hand(cli, tmp_path, codex):
    launched(cli, tmp_path, "codex")


def launched(cli, tmp_path, agent: str) -> None:
    """The real client (installed by its fixture) through `launch`, in a fresh HOME."""
    import agent_clients as ac

    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    if agent == "claude":
        env = ac.claude_env(_NoProxy(), home)
        shims = _shim(tmp_path / "bin", "claude", [str(ac.claude_binary())])
        words = ["launch", "claude", "-p", "launched claude"]
        api = "anthropic-messages"
    else:
        env = ac.codex_env(_NoProxy(), home)
        shims = _shim(tmp_path / "bin", "codex", [harness.node_path(), str(ac.codex_js())])
        words = ["launch", "codex", "exec", *ac.CODEX_EXEC_FLAGS, "launched codex"]
        api = "openai-responses"
    for name in PROXY_VARIABLES:
        env.pop(name, None)
    env["PATH"] = os.pathsep.join([str(shims), env["PATH"]])
    env["STANDIN_LOG"] = str(cli.log)
    assert cli.start().returncode == 0
    run = cli(*words, env=env, cwd=work)
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-2000:])
    records = [r for r in cli.requests() if r["api"] == api]
    assert records, [r["path"] for r in cli.requests()]
    session = records[0]["session_ids"]["session"]
    assert session["agent"] == agent and not session["fallback"], session
    assert json.loads(records[0]["body"])["session_id"]


def test_the_service_unit_is_accepted_and_the_launchd_agent_is_a_valid_plist(cli, tmp_path):
    import plistlib

    unit = cli("service", "unit", "--platform", "linux")
    assert unit.returncode == 0 and "Restart=on-failure" in unit.stdout and f'"-p" "{cli.port}"' in unit.stdout
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package)")
    path = tmp_path / "agent-session-ids.service"
    path.write_text(unit.stdout)
    verify = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr
    broken = tmp_path / "broken.service"
    broken.write_text(unit.stdout.replace('ExecStart="/', 'ExecStart="no/such/'))
    assert subprocess.run([analyze, "verify", str(broken)], capture_output=True, timeout=60).returncode != 0
    plist = plistlib.loads(cli("service", "unit", "--platform", "macos").stdout.encode())
    assert plist["KeepAlive"] == {"SuccessfulExit": False} and plist["RunAtLoad"] is True
    assert os.path.realpath(plist["ProgramArguments"][0]) == os.path.realpath(sys.executable)
    assert str(cli.port) in plist["ProgramArguments"]


def test_service_install_without_a_user_service_manager_points_to_proxy_start(cli):
    manager = (
        subprocess.run(["systemctl", "--user", "show-environment"], capture_output=True, timeout=30)
        if shutil.which("systemctl")
        else None
    )
    if manager is not None and manager.returncode == 0:
        pytest.skip("a user service manager runs here: a test does not install a real unit")
    result = cli("service", "install")
    assert result.returncode == 1 and "no user service manager runs here" in result.stderr
    assert "agent-session-ids proxy start" in result.stderr and result.stderr.count("\n") == 1
