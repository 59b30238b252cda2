"""Issue 29, items 1, 2, 5, 6 and 13: the commands' trust in what runs on their port. `proxy stop`
signals only a pid verified to be this proxy; only this user's listener is this user's proxy, and
its answer is shown, never obeyed; proxy variables never hide the proxy from the commands; the
state folder is this user's alone; the status endpoint tells another user nothing private.

Real parts throughout: the console script, a real mitmdump with the addon, real strangers (`sleep`),
a real listener of uid 65534 (setpriv; needs root, else those tests skip and say so).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import harness

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

CLI = str(Path(sys.executable).with_name("agent-session-ids"))
NOBODY = ["setpriv", f"--reuid={harness.OTHER_UID}", f"--regid={harness.OTHER_GID}", "--clear-groups", "--"]
ESC = "\x1b"

# A status server as another program could run one: it answers every request with `STATUS`.
FAKE_STATUS = r"""
import http.server, sys
body = sys.argv[2].encode()
class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Answer).serve_forever()
"""

# The status request as any local program can make it, straight to the proxy; prints the answer.
ASK_STATUS = r"""
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=20)
c.request("GET", "http://agent-session-ids.invalid/status")
print(c.getresponse().read().decode())
"""

HOSTILE = {
    "addon": "agent-session-ids",
    "version": "9\x1b]52;c;cHduZWQ=\x07\x1b[2J",
    "pid": "12\x1b[31m",
    "rules": ["rule\x1b]0;title\x07", "\u202eevil"],
    "hosts": ["h\x1b[2Jost.example"],
}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Cli:
    """The command on one port and confdir, with no proxy variable of the caller's."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.confdir = tmp_path / "confdir"
        self.folder = self.confdir / "agent-session-ids"
        self.pid_file = self.folder / f"proxy-{self.port}.pid"
        self.env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
        self.started: list[int] = []  # the proxies this test started, by pid

    def argv(self, *words: str) -> list[str]:
        where = ["--port", str(self.port), "--confdir", str(self.confdir)]
        if words[0] in ("proxy", "service"):
            return [CLI, words[0], words[1], *where, *words[2:]]
        return [CLI, words[0], *where, *words[1:]]

    def __call__(self, *words: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.argv(*words),
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start(self) -> int:
        started = self("proxy", "start")
        assert started.returncode == 0 and started.stdout.startswith("started: "), started
        self.started.append(int(self.pid_file.read_text()))
        return self.started[-1]


@pytest.fixture
def cli(tmp_path):
    c = Cli(tmp_path)
    yield c
    subprocess.run(c.argv("proxy", "stop"), env=c.env, capture_output=True, timeout=60)
    for pid in c.started:  # a test that failed with the pid file rewritten leaves no proxy behind
        if alive(pid):
            os.killpg(pid, signal.SIGKILL)  # the supervisor and its mitmdump


@pytest.fixture
def stranger():
    """An unrelated process in a process group of its own, as a reboot leaves one at a reused pid."""
    p = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    yield p
    p.kill()
    p.wait()


def one_line(result: subprocess.CompletedProcess) -> str:
    out = (result.stdout + result.stderr).strip()
    assert "Traceback" not in out and len(out.splitlines()) == 1, result
    return out


# --------------------------------------------------------------------------- 1: proxy stop


def test_proxy_stop_leaves_a_stranger_named_by_a_stale_pid_file_alone(cli, stranger):
    cli.folder.mkdir(parents=True)
    cli.pid_file.write_text(f"{stranger.pid}\n")
    stopped = cli("proxy", "stop")
    line = one_line(stopped)
    assert alive(stranger.pid), f"proxy stop killed a stranger: {line}"
    assert "stale" in line and str(stranger.pid) in line and not cli.pid_file.exists(), line


def test_proxy_restart_leaves_a_stranger_alone_and_the_running_proxy_stays(cli, stranger):
    pid = cli.start()
    cli.pid_file.write_text(f"{stranger.pid}\n")
    restarted = cli("proxy", "restart")
    assert restarted.returncode == 0 and "stale" in restarted.stdout and "already running" in restarted.stdout, (
        restarted
    )
    assert alive(stranger.pid) and alive(pid)
    cli.pid_file.write_text(f"{pid}\n")  # the real one is stopped
    assert f"stopped the proxy on port {cli.port} (pid {pid})" in cli("proxy", "stop").stdout
    assert not alive(pid)


def _bad_pid_file_run(cli, content: str) -> tuple[subprocess.CompletedProcess, bool, bool]:
    """`proxy stop` with `content` in the pid file, run in a pid namespace of its own (so that a
    kill(-1) or a kill of its own group can hit nothing outside it), beside a sibling in its process
    group and a process in a group of its own; (the run, whether each of the two lived)."""
    cli.folder.mkdir(parents=True, exist_ok=True)
    cli.pid_file.write_text(content)
    script = (
        f"sleep 1000 & sibling=$!; setsid sleep 1000 & loner=$!; sleep 0.2; "
        f"{shlex.join(cli.argv('proxy', 'stop'))} >out 2>err; echo $? >rc; "
        f"sleep 0.5; kill -0 $sibling 2>/dev/null && echo sibling >>alive; "
        f"kill -0 $loner 2>/dev/null && echo loner >>alive; kill $sibling $loner 2>/dev/null; true"
    )
    work = Path(tempfile.mkdtemp())
    try:
        subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script],
            cwd=work,
            env=cli.env,
            timeout=120,
            start_new_session=True,
            capture_output=True,
        )
        result = subprocess.CompletedProcess(
            [], int((work / "rc").read_text() or 99), (work / "out").read_text(), (work / "err").read_text()
        )
        lived = (work / "alive").read_text().split() if (work / "alive").exists() else []
        return result, "sibling" in lived, "loner" in lived
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("content", ["0\n", "1\n", "-1\n", "99999999999\n", "pid?\x1b[2J\n", ""])
def test_a_pid_file_naming_no_proxy_signals_nothing_and_gets_one_line(cli, content):
    if os.getuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare: a pid file of 1 is only tried inside a pid namespace of its own")
    result, sibling, loner = _bad_pid_file_run(cli, content)
    line = one_line(result)
    assert sibling and loner, f"proxy stop with {content!r} in the pid file signalled others: {line}"
    assert ESC not in line and not cli.pid_file.exists(), line
    assert result.returncode == 1 and "signalled nothing" in line, line


# --------------------------------------------------------------------------- 5: proxy variables


@pytest.mark.parametrize(
    "variables",
    [
        {"NO_PROXY": "*"},
        {"no_proxy": "*"},
        {
            "http_proxy": "http://127.0.0.1:9",
            "HTTP_PROXY": "http://127.0.0.1:9",
            "ALL_PROXY": "http://127.0.0.1:9",
            "all_proxy": "http://127.0.0.1:9",
        },
    ],
)
def test_proxy_variables_never_hide_the_running_proxy_from_the_commands(cli, tmp_path, variables):
    pid = cli.start()
    env = {**cli.env, **variables}
    status = cli("proxy", "status", env=env)
    assert status.returncode == 0 and f"(pid {pid})" in status.stdout, status
    doctor = cli("doctor", env=env)
    assert "OK   proxy: agent-session-ids" in doctor.stdout, doctor
    assert cli("proxy", "start", env=env).stdout.startswith("already running: ")
    ran = cli("run", "--", "sh", "-c", "echo ran through $HTTPS_PROXY", env=env)
    assert ran.returncode == 0 and f"ran through http://127.0.0.1:{cli.port}" in ran.stdout, ran
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pi").write_text("#!/bin/sh\necho pi through $HTTPS_PROXY\n")
    (bin_dir / "pi").chmod(0o755)
    launched = cli("launch", "pi", env={**env, "PATH": f"{bin_dir}:{env['PATH']}"})
    assert launched.returncode == 0 and f"pi through http://127.0.0.1:{cli.port}" in launched.stdout, launched
    assert alive(pid) and int(cli.pid_file.read_text()) == pid, "a second proxy was started"


# --------------------------------------------------------------------------- 6: private files


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_proxy_start_on_a_fresh_confdir_makes_the_folder_0700_and_its_files_0600(cli):
    old = os.umask(0o022)
    try:
        cli.start()
    finally:
        os.umask(old)
    assert mode(cli.folder) == 0o700
    for name in ("log", "pid", "lock"):
        path = cli.folder / f"proxy-{cli.port}.{name}"
        assert mode(path) == 0o600, f"{path}: {oct(mode(path))}"


def test_proxy_start_tightens_a_folder_an_older_version_made_0755(cli):
    cli.folder.mkdir(parents=True, mode=0o755)
    cli.folder.chmod(0o755)
    (cli.folder / f"proxy-{cli.port}.log").write_text("old\n")
    (cli.folder / f"proxy-{cli.port}.log").chmod(0o644)
    cli.start()
    assert mode(cli.folder) == 0o700 and mode(cli.folder / f"proxy-{cli.port}.log") == 0o600


def test_doctor_on_a_fresh_confdir_creates_nothing(cli):
    doctor = cli("doctor")
    assert "Traceback" not in doctor.stderr, doctor
    assert not cli.confdir.exists(), f"doctor made {sorted(map(str, cli.confdir.rglob('*')))}"
    assert f"{cli.folder} can be made" in doctor.stdout, doctor.stdout
    cli.folder.mkdir(parents=True)
    before = sorted(cli.folder.iterdir())
    cli("doctor")
    assert sorted(cli.folder.iterdir()) == before


def test_doctor_beside_a_running_proxy_checks_tls_with_the_bundle_and_writes_nothing(cli):
    cli.start()
    (cli.folder / "ca-bundle.pem").unlink(missing_ok=True)
    before = {p.name: p.stat().st_mtime_ns for p in cli.folder.iterdir() if not p.name.endswith(".log")}
    doctor = cli("doctor")
    assert "OK   TLS (Python, Rust, curl: SSL_CERT_FILE bundle)" in doctor.stdout, doctor
    after = {p.name: p.stat().st_mtime_ns for p in cli.folder.iterdir() if not p.name.endswith(".log")}
    assert after == before, "doctor wrote to the state folder"


def test_a_symlink_at_the_pid_file_path_leaves_its_target_untouched(cli, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    cli.folder.mkdir(parents=True)
    cli.pid_file.symlink_to(victim)
    cli.start()
    assert victim.read_text() == "precious\n"
    assert not cli.pid_file.is_symlink() and mode(cli.pid_file) == 0o600


def test_a_symlink_at_the_log_path_is_refused_in_one_line_and_its_target_untouched(cli, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    cli.folder.mkdir(parents=True)
    (cli.folder / f"proxy-{cli.port}.log").symlink_to(victim)
    started = cli("proxy", "start")
    assert started.returncode == 1 and "cannot write the log" in one_line(started), started
    assert victim.read_text() == "precious\n" and not cli.pid_file.exists()


# --------------------------------------------------------------------------- 13: whose listener


def _fake_status(port: int, status: dict, as_nobody: bool) -> subprocess.Popen:
    script = Path(tempfile.mkdtemp()) / "fake_status.py"
    script.parent.chmod(0o755)
    script.write_text(FAKE_STATUS)
    script.chmod(0o644)
    python = "/usr/bin/python3" if as_nobody and os.path.exists("/usr/bin/python3") else sys.executable
    argv = [*(NOBODY if as_nobody else []), python, str(script), str(port), json.dumps(status)]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the fake status server did not start: {server.stderr.read()!r}")
        import socket

        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.05)
    pytest.fail("the fake status server did not listen")


@pytest.fixture
def fake_server():
    started: list[subprocess.Popen] = []
    yield lambda *a: started.append(_fake_status(*a)) or started[-1]
    for server in started:
        server.kill()
        server.wait()


def test_another_users_listener_is_never_taken_for_the_proxy(cli, fake_server):
    why = harness.other_user_unavailable()
    if why:
        pytest.skip(why)
    fake_server(cli.port, HOSTILE, True)
    wanted = f"port {cli.port} is held by another user's program (uid {harness.OTHER_UID})"
    for words in (("proxy", "status"), ("proxy", "start"), ("run", "--", "true")):
        result = cli(*words)
        line = one_line(result)
        assert result.returncode == 1 and wanted in line and "already running" not in line, (words, result)
    doctor = cli("doctor")
    assert doctor.returncode == 1 and f"FAIL proxy: {wanted}" in doctor.stdout, doctor
    assert ESC not in doctor.stdout + doctor.stderr


def test_a_status_answer_with_escape_sequences_is_shown_never_obeyed(cli, fake_server):
    fake_server(cli.port, HOSTILE, False)
    for words in (("proxy", "status"), ("proxy", "start"), ("doctor",)):
        result = cli(*words)
        out = result.stdout + result.stderr
        assert ESC not in out and "\x07" not in out and "\u202e" not in out, (words, out)
    status = cli("proxy", "status")
    assert status.returncode == 0 and "\\x1b]52;c;" in status.stdout and "\\u202eevil" in status.stdout, status
    assert "pid" not in status.stdout, "a pid that is not a number was used"
    assert "already running" in cli("proxy", "start").stdout


# --------------------------------------------------------------------------- 2: the status endpoint


def test_the_status_endpoint_tells_another_user_nothing_private(cli):
    why = harness.other_user_unavailable()
    if why:
        pytest.skip(why)
    pid = cli.start()
    script = Path(tempfile.mkdtemp()) / "ask_status.py"
    script.parent.chmod(0o755)
    script.write_text(ASK_STATUS)
    script.chmod(0o644)
    theirs = subprocess.run(
        [*NOBODY, "/usr/bin/python3", str(script), str(cli.port)],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli.env,
    )
    assert theirs.returncode == 0, theirs
    assert set(json.loads(theirs.stdout)) == {"addon", "version"}, theirs.stdout
    mine = json.loads(
        subprocess.run(
            [sys.executable, str(script), str(cli.port)], capture_output=True, text=True, timeout=60, env=cli.env
        ).stdout
    )
    mitmdump = [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    assert mine["pid"] in mitmdump and mine["confdir"] == str(cli.confdir), mine  # the supervisor's child
