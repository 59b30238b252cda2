"""Issue 31, items 3 to 5: a proxy that is always there without systemd. `proxy start` runs mitmdump
under a supervisor that restarts it when it dies (with a back-off and one log line when it
crash-loops) and bounds its log; `env` starts a proxy when none answers, or sets nothing and says
why; `service install` without a service manager gives the profile line; `doctor` runs each agent.

Real parts throughout: the console script, real mitmdump under the real supervisor, SIGKILL, a real
bash evaluating `env`, real pi 1.6.0 (the harness installs it from npm) through the gateway stand-in.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import harness

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

CLI = str(Path(sys.executable).with_name("agent-session-ids"))
DEADLINE_S = 60.0
CRASH_LOOP_LINE = "keeps exiting soon after its start"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def wait_for(condition, what: str, deadline: float = DEADLINE_S):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        got = condition()
        if got:
            return got
        time.sleep(0.05)
    pytest.fail(f"not within {deadline:.0f} s: {what}")


class Proxy:
    """`proxy start` and friends on one port and confdir, with no proxy variable of the caller's."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.port = free_port()
        self.confdir = tmp_path / "confdir"
        self.folder = self.confdir / "agent-session-ids"
        self.log = self.folder / f"proxy-{self.port}.log"
        self.env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")} | env
        self.supervisors: list[int] = []

    def __call__(self, *words: str, env: dict | None = None) -> subprocess.CompletedProcess:
        where = ["--port", str(self.port), "--confdir", str(self.confdir)]
        argv = (
            [CLI, *words[:2], *where, *words[2:]]
            if words[0] in ("proxy", "service")
            else [CLI, *words[:1], *where, *words[1:]]
        )
        return subprocess.run(
            argv, env=env or self.env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL
        )

    def start(self, *extra: str) -> int:
        started = self("proxy", "start", *(["--", *extra] if extra else []))
        assert started.returncode == 0 and started.stdout.startswith("started: "), started
        self.supervisors.append(self.supervisor())
        return self.supervisors[-1]

    def supervisor(self) -> int:
        return int((self.folder / f"proxy-{self.port}.pid").read_text())

    def state(self) -> dict:
        return json.loads((self.folder / f"proxy-{self.port}.supervisor.json").read_text())

    def mitmdump(self) -> int | None:
        """The pid the proxy answers with, when it answers."""
        status = self("proxy", "status")
        if status.returncode != 0:
            return None
        return int(status.stdout.split("mitmdump pid ")[1].split(",")[0])

    def cleanup(self) -> None:
        self("proxy", "stop")
        for pid in self.supervisors:  # a test that failed halfway leaves nothing behind
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def proxy(tmp_path):
    p = Proxy(tmp_path)
    yield p
    p.cleanup()


def test_a_proxy_whose_mitmdump_is_killed_answers_again_and_proxy_stop_ends_it_for_good(proxy):
    supervisor = proxy.start()
    first = proxy.mitmdump()
    assert first in children(supervisor), (first, children(supervisor))
    os.kill(first, signal.SIGKILL)
    killed = time.monotonic()
    second = wait_for(lambda: (pid := proxy.mitmdump()) and pid != first and pid, "the proxy answering again")
    print(f"\nthe proxy answered again {time.monotonic() - killed:.2f} s after its mitmdump was killed")
    assert second in children(supervisor) and proxy.supervisor() == supervisor
    assert proxy.state()["restarts"] == 1 and proxy.state()["last_exit"] == "killed by SIGKILL"
    assert "ended (killed by SIGKILL)" in proxy.log.read_text()
    doctor = proxy("doctor").stdout
    assert f"OK   supervisor: pid {supervisor} keeps mitmdump (pid {second}) up; 1 restarts" in doctor, doctor
    stopped = proxy("proxy", "stop")
    assert stopped.returncode == 0 and f"stopped the proxy on port {proxy.port} (pid {supervisor})" in stopped.stdout
    time.sleep(5)  # for good: nothing restarts it
    assert not answers(proxy.port) and not alive(supervisor) and not alive(second) and not alive(first)
    assert proxy("proxy", "status").returncode == 1


def test_a_supervisor_killed_with_sigkill_leaves_no_unsupervised_mitmdump_and_the_next_env_starts_one(proxy):
    supervisor = proxy.start()
    mitmdump = proxy.mitmdump()
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: not alive(mitmdump) and not answers(proxy.port), "its mitmdump ended with it")
    env = proxy("env")  # as the next shell's profile: the stale pid file is no obstacle
    assert env.returncode == 0 and "export HTTPS_PROXY=" in env.stdout, env
    assert proxy.supervisor() != supervisor and proxy.mitmdump()
    proxy.supervisors.append(proxy.supervisor())


def test_a_crash_looping_mitmdump_gets_one_log_line_and_runs_again_once_repaired(proxy):
    supervisor = proxy.start()
    config = proxy.confdir / "config.yaml"
    config.write_text("mode: [no-such-mode]\n")  # mitmdump refuses to start with it (the commands read only listen_*)
    os.kill(proxy.mitmdump(), signal.SIGKILL)
    wait_for(lambda: proxy.state()["restarts"] >= 5, "five restarts of a mitmdump that cannot start")
    assert proxy.state()["crash_loop"] and alive(supervisor)
    start = proxy("proxy", "start")  # no second supervisor: it says what goes on, in one line
    assert start.returncode == 1 and CRASH_LOOP_LINE in start.stderr and start.stderr.count("\n") == 1, start
    doctor = proxy("doctor")
    assert f"FAIL supervisor: pid {supervisor}: mitmdump {CRASH_LOOP_LINE}" in doctor.stdout, doctor.stdout
    status = proxy("proxy", "status")
    assert status.returncode == 1 and f"its supervisor (pid {supervisor}) runs" in status.stderr, status
    config.unlink()  # repaired: the next try (the back-off is short yet) runs
    wait_for(lambda: proxy.mitmdump(), "the proxy answering once its config is repaired")
    assert proxy.log.read_text().count(CRASH_LOOP_LINE) == 1, proxy.log.read_text()[-3000:]
    assert proxy.supervisor() == supervisor


def test_the_proxy_log_is_rotated_past_its_bound_and_flows_are_logged_at_the_default_detail(tmp_path):
    proxy = Proxy(tmp_path, AGENT_SESSION_IDS_LOG_BYTES="65536")
    try:
        proxy.start()
        with open(proxy.log, "a") as log:  # as a long day of flows would
            log.write("an old flow line\n" * 5000)
        kept = proxy.log.with_name(proxy.log.name + ".1")
        wait_for(kept.exists, "the log rotated")
        assert "an old flow line" in kept.read_text() and os.stat(kept).st_mode & 0o777 == 0o600
        wait_for(lambda: proxy.log.stat().st_size < 65536, "the log truncated")
        request = (
            "GET http://agent-session-ids.invalid/status HTTP/1.1\r\nHost: agent-session-ids.invalid\r\n"
            "X-Marker: a-header-value\r\nConnection: close\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as s:
            s.sendall(request.encode())
            assert s.recv(100).startswith(b"HTTP/1.1 200")
        text = wait_for(
            lambda: "GET http://agent-session-ids.invalid/status" in (t := proxy.log.read_text()) and t, "a flow line"
        )
        assert "a-header-value" not in text, "the log has request headers: a flow detail above mitmdump's default"
        assert "an old flow line" not in text
    finally:
        proxy.cleanup()


def test_proxy_stop_leaves_the_supervisor_of_another_port_alone(proxy, tmp_path):
    supervisor = proxy.start()
    other = Proxy(tmp_path)  # the same confdir, another port, its pid file naming the first's supervisor
    (other.folder / f"proxy-{other.port}.pid").write_text(f"{supervisor}\n")
    stopped = other("proxy", "stop")
    assert stopped.returncode == 0 and "stale" in stopped.stdout and "left alone" in stopped.stdout, stopped
    assert alive(supervisor) and proxy.mitmdump()


def test_a_bash_shell_that_evals_env_with_no_proxy_running_runs_pi_without_a_refused_connection(proxy, tmp_path):
    """The proxy `env` starts is a plain one, as in a profile; its config.yaml sends its upstream
    traffic to a second mitmdump holding the gateway stand-in, which answers pi."""
    with harness.Mitmdump(scripts=[harness.STANDIN_SCRIPT]) as gateway:
        proxy.confdir.mkdir(parents=True)
        (proxy.confdir / "config.yaml").write_text(f"mode: ['upstream:{gateway.proxy_url}']\nssl_insecure: true\n")
        home, work = tmp_path / "home", tmp_path / "work"
        home.mkdir()
        work.mkdir()
        pi_env = {
            **{k: v for k, v in proxy.env.items() if not k.upper().startswith(("NODE_", "SSL_CERT", "PI_"))},
            "HOME": str(home),
            "PATH": os.pathsep.join([str(harness.pi_shim_dir("1.6.0")), harness.node_bin_dir(), os.environ["PATH"]]),
            "PI_OFFLINE": "1",
            "PI_TELEMETRY": "0",
            **harness.FAKE_KEYS,
        }
        assert not answers(proxy.port)
        where = f"--port {proxy.port} --confdir {proxy.confdir}"
        script = (
            f'eval "$({CLI} env {where})" || exit 3\n'
            'pi --provider openrouter --model openai/gpt-4o-mini -p "through a profile\'s env"'
        )
        agent = subprocess.run(
            ["bash", "-c", script], env=pi_env, capture_output=True, text=True, timeout=180, cwd=work,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        proxy.supervisors.append(proxy.supervisor())
        assert agent.returncode == 0 and "ECONNREFUSED" not in agent.stdout + agent.stderr, (agent.stdout, agent.stderr)
        seen = [r for r in gateway.requests() if "through a profile's env" in r["body"]]
        assert seen and harness.header(seen[0], "x-session-id"), gateway.requests()


def test_env_where_no_proxy_can_start_prints_nothing_and_says_why_in_one_line(proxy):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", proxy.port))
        holder.listen()
        env = proxy("env")
        assert env.returncode == 1 and env.stdout == "", env
        assert env.stderr.count("\n") == 1 and f"port {proxy.port} is held by" in env.stderr, env.stderr
        assert "programs go direct" in env.stderr and "Traceback" not in env.stderr
        unset = proxy("env", "--unset")  # never starts anything
        assert unset.returncode == 0 and "unset HTTPS_PROXY" in unset.stdout
    assert not (proxy.folder / f"proxy-{proxy.port}.pid").exists()


def test_service_install_without_a_service_manager_gives_the_profile_line(proxy):
    if subprocess.run(["systemctl", "--user", "show-environment"], capture_output=True).returncode == 0:
        pytest.skip("a systemd user manager runs here: service install would install")
    done = proxy("service", "install", env={**proxy.env, "SHELL": "/bin/bash"})
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done
    line = f'eval "$(agent-session-ids env --port {proxy.port} --confdir {proxy.confdir})"'
    assert "no user service manager runs here" in done.stderr and f"~/.bashrc: {line}" in done.stderr, done.stderr
    fish = proxy("service", "install", env={**proxy.env, "SHELL": "/usr/bin/fish"})
    assert "config.fish: agent-session-ids env --shell fish" in fish.stderr, fish.stderr


def test_doctor_fails_an_agent_that_crashes_on_version_and_oks_the_real_pi(proxy, tmp_path):
    crashing = tmp_path / "crashing"
    crashing.mkdir()
    (crashing / "pi").write_text(  # what pi 1.6.0 prints under Node 20
        "#!/bin/sh\n"
        "echo 'file:///pi/dist/cli.js:3' >&2\n"
        "echo \"import { enableCompileCache } from 'node:module';\" >&2\n"
        "echo '         ^^^^^^^^^^^^^^^^^^' >&2\n"
        "echo \"SyntaxError: The requested module 'node:module' does not provide an export named "
        "'enableCompileCache'\" >&2\n"
        "echo '    at ModuleJob._instantiate (node:internal/modules/esm/module_job:180:21)' >&2\n"
        "echo >&2\necho 'Node.js v20.19.0' >&2\nexit 1\n"
    )
    (crashing / "pi").chmod(0o755)
    bad = proxy("doctor", env={**proxy.env, "PATH": f"{crashing}:{os.environ['PATH']}"})
    (line,) = [x for x in bad.stdout.splitlines() if "agent pi:" in x]
    assert line.startswith("FAIL") and line.endswith("does not provide an export named 'enableCompileCache'"), line
    assert bad.returncode == 1
    real = harness.pi_shim_dir("1.6.0")
    good = proxy("doctor", env={**proxy.env, "PATH": f"{real}:{os.environ['PATH']}"})
    (line,) = [x for x in good.stdout.splitlines() if "agent pi:" in x]
    assert line.startswith(f"OK   agent pi: {real}/pi 1.6.0"), line
    # and real pi under a Node older than it needs, where the PATH has one
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    if node and int(node.lstrip("v").split(".")[0]) < 22:
        old = tmp_path / "old-node"
        old.mkdir()
        (old / "pi").write_text(f'#!/bin/sh\nexec node "{harness.pi_entry("1.6.0")}" "$@"\n')
        (old / "pi").chmod(0o755)
        under = proxy("doctor", env={**proxy.env, "PATH": f"{old}:{os.environ['PATH']}"})
        (line,) = [x for x in under.stdout.splitlines() if "agent pi:" in x]
        assert line.startswith("FAIL") and f"node on PATH: {node}" in line and "enableCompileCache" in line, line
