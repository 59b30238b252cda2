"""A plain `pip install .` (not editable) gives a working package: it imports, its checker finds
the shipped rules, and `agent-session-ids` starts mitmdump with the addon (issue 9, defect 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest

import harness
import odd_requests
from agent_session_ids.rules import load_rules_dir
from harness import Mitmdump

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the project pip-installed from a copy of the checkout (no `-e`). Its
    dependencies (mitmproxy, pyyaml) come from the test's own environment through a .pth line, so
    no download is needed; the package itself must come from the install."""
    where = tmp_path_factory.mktemp("plain")
    source = where / "src"
    files = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / name.decode()
        if src.is_file():
            dst = source / name.decode()
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    env_dir = where / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "outer_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    result = subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "-q", str(source)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return env_dir


def test_the_installed_package_imports_from_its_install_and_checks_the_shipped_rules(installed):
    python = installed / "bin" / "python"
    out = subprocess.run(
        [
            python,
            "-c",
            "import agent_session_ids.addon, agent_session_ids.resolution.resolver as r, "
            "agent_session_ids.rules as rules; print(r.__file__); print(rules.default_rules_dir())",
        ],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    module_file, rules_dir = out.stdout.split()
    assert module_file.startswith(str(installed)), module_file
    assert rules_dir.startswith(str(installed)), rules_dir
    assert sorted(os.listdir(rules_dir)) == sorted(p.name for p in (ROOT / "rules").iterdir())
    check = subprocess.run(
        [installed / "bin" / "agent-session-ids-check"], capture_output=True, text=True, cwd="/", timeout=120
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith(f"ok: {len(load_rules_dir(ROOT / 'rules'))} rules in {rules_dir}")


class _InstalledProxy(Mitmdump):
    """mitmdump started by the installed `agent-session-ids` command, the stand-in loaded after it."""

    def __init__(self, command: Path, **kw) -> None:
        super().__init__(scripts=[harness.STANDIN_SCRIPT], **kw)
        self.command = command

    def _argv(self, port: int) -> list[str]:
        return [str(self.command)] + super()._argv(port)[1:]


def test_the_installed_command_runs_the_proxy_with_the_shipped_rules(installed):
    with _InstalledProxy(installed / "bin" / "agent-session-ids") as proxy:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
        raw = odd_requests.build_h1(
            "POST", "/api/v1/chat/completions", "openrouter.ai", [("Content-Type", "application/json")], body
        )
        status, _ = odd_requests.send_h1(proxy.port, str(proxy.ca_cert), "openrouter.ai", raw)
        assert status == 200
        (request,) = proxy.requests()
        sent = json.loads(request["body"])
        assert isinstance(sent.get("session_id"), str) and sent["session_id"], (sent, proxy.output()[-2000:])
        assert f"{installed}" in proxy.output() and "shipped_rules" in proxy.output()


def test_the_installed_command_starts_reports_and_stops_the_background_proxy(installed, tmp_path):
    """`proxy start|status|stop` and `run` from the plain install (issue 19): its own script file,
    its shipped rules, and no process left behind."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    command = str(installed / "bin" / "agent-session-ids")
    where = ["--port", port, "--confdir", str(tmp_path / "confdir")]
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY") and k != "PYTHONPATH"}
    env["STANDIN_LOG"] = str(tmp_path / "standin.jsonl")

    def cli(*words):
        return subprocess.run([command, *words], env=env, capture_output=True, text=True, timeout=120, cwd="/")

    started = cli("proxy", "start", *where, "--", "-s", str(harness.STANDIN_SCRIPT))
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "openrouter-session-id" in started.stdout
        pid = int((tmp_path / "confdir" / "agent-session-ids" / f"proxy-{port}.pid").read_text())
        assert f"{installed}" in Path(f"/proc/{pid}/cmdline").read_text()  # the install's script, not the checkout's
        assert cli("proxy", "status", *where).returncode == 0
        shown = cli("run", *where, "--", "sh", "-c", "echo $HTTPS_PROXY")
        assert shown.returncode == 0 and shown.stdout.strip() == f"http://127.0.0.1:{port}"
    finally:
        stopped = cli("proxy", "stop", *where)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
