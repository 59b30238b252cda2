"""Steering a running proxy: rule files edited while flows run, and the addon's commands called
through mitmweb's command API, as its command bar does."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import harness
from agent_session_ids.rules import active_rules, load_rules_dir
from harness import Mitmdump, header

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ADDON = str(ROOT / "addon" / "session_ids.py")

# Sends requests until the stop file exists (one request without one): the test decides when it
# has seen enough, not a clock.
CLIENT = """
import json, os, ssl, sys, time, urllib.request
proxy, ca, stop = sys.argv[1], sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({'https': proxy}), urllib.request.HTTPSHandler(context=ctx))
while True:
    body = json.dumps({'model': 'm', 'messages': [{'role': 'user', 'content': 'hi'}]}).encode()
    req = urllib.request.Request('https://opencode.ai/zen/v1/chat/completions', body, {'content-type': 'application/json'})
    opener.open(req, timeout=30).read()
    if not stop or os.path.exists(stop):
        break
    time.sleep(0.05)
"""
DEADLINE_S = 120.0  # only a condition that never comes true reaches it


def client(proxy, stop: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLIENT, proxy.proxy_url, str(proxy.ca_cert), str(stop or "")])


def one_request(proxy) -> None:
    assert client(proxy).wait(timeout=DEADLINE_S) == 0


def wait_for(predicate, timeout=DEADLINE_S, running: subprocess.Popen | None = None):
    """Poll until predicate() is true; False at the deadline, or as soon as `running` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if running is not None and running.poll() is not None:
            return bool(predicate())
        time.sleep(0.1)
    return False


def test_rule_edits_apply_live_and_a_bad_edit_keeps_the_good_rules(tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    with Mitmdump(scripts=[ADDON, harness.STANDIN_SCRIPT], sets=[f"session_rules={rules}"]) as proxy:
        stop = tmp_path / "stop"
        running = client(proxy, stop)
        try:
            assert wait_for(lambda: any(header(r, "x-opencode-client") for r in proxy.requests()), running=running)
            text = (rules / "opencode.yaml").read_text()
            (rules / "opencode.yaml").write_text(text.replace("x-opencode-client", "x-client-edited"))
            assert wait_for(lambda: header(proxy.requests()[-1], "x-client-edited"), running=running)
            seen = len(proxy.requests())
            (rules / "opencode.yaml").write_text(text.replace("if_present: keep", "if_present: sometimes", 1))
            assert wait_for(lambda: "rules not reloaded" in proxy.output(), running=running)
            noticed = len(proxy.requests())
            assert wait_for(lambda: len(proxy.requests()) > max(noticed + 10, 20), running=running)
            after_bad_edit = proxy.requests()[seen:]
            # every request from the bad edit on, in flight or after it was noticed, got a whole
            # rule set: the last good one
            assert all(header(r, "x-client-edited") and header(r, "x-opencode-session") for r in after_bad_edit)
        finally:
            stop.touch()
            running.wait(timeout=DEADLINE_S)
        assert running.returncode == 0
        output = proxy.output()
        assert output.count("rules not reloaded") == 1
        bad_line = text.splitlines().index(next(l for l in text.splitlines() if "if_present: keep" in l)) + 1
        assert (
            f"{rules / 'opencode.yaml'}:{bad_line}: 'if_present' must be one of: keep, replace (got 'sometimes')"
            in output
        )
        assert len(proxy.requests()) > 20 and not proxy.blocked_connects()


class Mitmweb(Mitmdump):
    """The same proxy with mitmweb's UI and its command API."""

    password = "agent-session-ids-test"

    def _argv(self, port: int) -> list[str]:
        argv = super()._argv(port)
        argv[0] = str(Path(argv[0]).with_name("mitmweb"))
        self.web_port = _free_port()
        argv += ["--no-web-open-browser", "--web-host", "127.0.0.1", "--web-port", str(self.web_port)]
        if _has_web_password():
            argv += ["--set", f"web_password={self.password}"]
        return argv

    def command(self, name: str, *arguments: str):
        """POST /commands/<name> as mitmweb's command bar does: an XSRF token in a cookie and a
        header (any hex value, the same in both), and on mitmproxy 12 the password."""
        xsrf = "a1" * 16
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.web_port}/commands/{name}",
            json.dumps({"arguments": list(arguments)}).encode(),
            {
                "content-type": "application/json",
                "X-XSRFToken": xsrf,
                "Cookie": f"_xsrf={xsrf}; _mitmproxy_xsrf={xsrf}",
                "Authorization": f"Bearer {self.password}",
            },
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        answer = json.loads(opener.open(req, timeout=30).read())
        assert "error" not in answer, answer
        return answer["value"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _has_web_password() -> bool:
    out = subprocess.run([str(Path(sys.executable).with_name("mitmweb")), "--options"], capture_output=True, text=True)
    return "web_password" in out.stdout


def test_commands_through_mitmwebs_command_api(tmp_path):
    with Mitmweb(scripts=[ADDON, harness.STANDIN_SCRIPT]) as web:
        one_request(web)
        requests = web.requests()
        assert len(requests) == 1
        sessions = web.command("sessionids.sessions")
        session = requests[0]["session_ids"]["session"]
        top, decided = sessions.split("How each session was decided:\n", 1)
        assert top.splitlines()[0].split()[:4] == ["AGENT", "SESSION", "PROJECT", "REQS"] and "TOTAL" in top
        assert session["id"] in decided and decided.splitlines()[1].split()[1] == "1"
        explained = web.command("sessionids.explain", f"~comment {session['id']}")
        assert "decided by fallback:" in explained and "opencode-session" in explained
        on = len(active_rules(load_rules_dir(ROOT / "rules")))  # the shipped rules that are on
        assert web.command("sessionids.reload").startswith(f"reloaded {on} rules")
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "b.yaml").write_text("rules: [\n")
        assert web.command("sessionids.check", str(bad)).startswith(f"{bad / 'b.yaml'}:2: YAML syntax error")


def test_a_script_reload_reloads_the_helper_modules_too(tmp_path):
    # mitmproxy re-runs only the -s file when it changes; the entry point drops the package's
    # modules first, so an edit to any of them takes effect with the reload.
    copy = tmp_path / "checkout"
    shutil.copytree(ROOT / "addon", copy / "addon", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "rules", copy / "rules")
    entry = copy / "addon" / "session_ids.py"
    with Mitmdump(scripts=[entry, harness.STANDIN_SCRIPT]) as proxy:
        one_request(proxy)
        assert proxy.requests()[-1]["comment"].startswith("session ")
        display = copy / "addon" / "agent_session_ids" / "view" / "display.py"
        source = display.read_text()
        assert 'text = f"session {' in source
        # both edits are dated well after the first load instead of waiting for the clock: Python's
        # bytecode cache (whole seconds) and mitmproxy's script watcher (mtime > the last load's)
        # both see a newer file
        later = time.time() + 10
        display.write_text(source.replace('text = f"session {', 'text = f"reloaded {'))
        os.utime(display, (later, later))
        entry.write_text(entry.read_text() + "\n# touched\n")
        os.utime(entry, (later, later))
        assert wait_for(lambda: proxy.output().count("Loading script") >= 3)
        # the reload has taken effect once a request says so (the log line comes before the load)
        comments = []

        def reloaded() -> bool:
            one_request(proxy)
            comments.append(proxy.requests()[-1]["comment"])
            return comments[-1].startswith("reloaded ")

        assert wait_for(reloaded), comments[-3:]
        assert "Error" not in proxy.output() and "Traceback" not in proxy.output()
