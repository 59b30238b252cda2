"""The mitmweb view, checked in a real browser.

A real mitmweb (from the venv of sys.executable) loads the addon and the gateway stand-in; one
OpenRouter-shaped request goes through it; headless Chromium (Debian's `chromium`) opens the flow
in mitmweb, and the test asserts that the flow's comment and the "Session IDs" view (before →
after) are shown. A screenshot is kept in tests/artifacts/mitmweb-flow.png.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: NUL-separated
JSON on fds 3 and 4), so no port, websocket client or extra Python package is needed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from mitmproxy.utils import emoji

import harness

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
SCREENSHOT = ARTIFACTS / "mitmweb-flow.png"
COMMENT_SCREENSHOT = ARTIFACTS / "mitmweb-comment.png"
ADDON_SCRIPT = REPO / "addon" / "session_ids.py"
VIEW_NAME = "Session IDs"


# --------------------------------------------------------------------------- chromium


def _chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing and running as root, else skipped."""
    found = _chromium_binary()
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip("chromium is not installed and installing it needs root (apt-get install -y chromium)")
    if not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and there is no apt-get to install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    started = time.monotonic()
    # the emoji font only makes the flow's marker legible in the screenshot
    # waiting for dpkg's lock, which the other Python's run in CI may hold installing the same
    install = [
        "apt-get",
        "-o",
        "DPkg::Lock::Timeout=600",
        "install",
        "-y",
        "--no-install-recommends",
        "chromium",
        "fonts-noto-color-emoji",
    ]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:  # perhaps no package lists yet
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, timeout=300)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    found = _chromium_binary()
    if result.returncode != 0 or not found:
        pytest.skip(f"could not install chromium with apt-get: {(result.stderr or result.stdout)[-500:]}")
    sys.stderr.write(f"\n[test_mitmweb] installed chromium in {time.monotonic() - started:.0f}s\n")
    return found


class Browser:
    """Headless Chromium, driven over the DevTools protocol on a pipe."""

    def __init__(self, binary: str, width: int = 1600, height: int = 1000) -> None:
        self._profile = tempfile.mkdtemp(prefix="chromium-e2e-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        argv = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--no-proxy-server",
            "--hide-scrollbars",
            f"--user-data-dir={self._profile}",
            f"--window-size={width},{height}",
            "--remote-debugging-pipe",
            "about:blank",
        ]

        def wire_pipes() -> None:  # in the child: fd 3 = commands in, fd 4 = replies out
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        self._log = open(Path(self._profile) / "chromium.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # close_fds would close 3 and 4 after wire_pipes(); Python's own fds are not inheritable.
            preexec_fn=wire_pipes,
            close_fds=False,
            start_new_session=True,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._next_id = 0
        self._replies: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        self.session = self._attach_page()
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_child, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        q = self._replies.get(message["id"])
                    if q is not None:
                        q.put(message)

    def send(self, method: str, params: dict | None = None, session: str | None = "page", timeout: float = 30):
        with self._lock:
            self._next_id += 1
            msg_id = self._next_id
            q = self._replies[msg_id] = queue.Queue()
        message = {"id": msg_id, "method": method, "params": params or {}}
        if session == "page":
            session = self.session
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        try:
            reply = q.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"chromium did not answer {method} in {timeout}s:\n{self.log()}") from None
        finally:
            with self._lock:
                self._replies.pop(msg_id, None)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def _attach_page(self) -> str:
        deadline = time.monotonic() + 30
        while True:
            targets = self.send("Target.getTargets", session=None)["targetInfos"]
            pages = [t for t in targets if t["type"] == "page"]
            if pages:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"chromium opened no page:\n{self.log()}")
            time.sleep(0.1)
        return self.send("Target.attachToTarget", {"targetId": pages[0]["targetId"], "flatten": True}, session=None)[
            "sessionId"
        ]

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30, what: str = ""):
        """Poll a JS expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(expression)
            except RuntimeError as e:
                last = e
            else:
                if last:
                    return last
            time.sleep(0.25)
        text = self.evaluate("document.body ? document.body.innerText : ''")
        raise AssertionError(f"timed out waiting for {what or expression} (last: {last!r}); page text:\n{text}")

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        # whole or not at all: the other Python's run in CI writes the same file at the same time
        part = path.with_name(f".{path.name}.{os.getpid()}")
        part.write_bytes(base64.b64decode(data))
        os.replace(part, path)

    def log(self) -> str:
        try:
            return (Path(self._profile) / "chromium.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close", session=None, timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own process group only
            self.proc.wait(timeout=10)
        for fd in (self._to_child, self._from_child):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)


# --------------------------------------------------------------------------- mitmweb


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mitmproxy_major() -> int:
    from mitmproxy import version

    return int(version.VERSION.split(".")[0])


class Mitmweb:
    def __init__(self, scripts: list[Path]) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="mitmweb-e2e-"))
        self.confdir = self.workdir / "confdir"
        self.confdir.mkdir()
        self.port, self.web_port = _free_port(), _free_port()
        self.password = secrets.token_hex(16) if _mitmproxy_major() >= 12 else None
        binary = Path(sys.executable).parent / "mitmweb"
        argv = [
            str(binary if binary.exists() else shutil.which("mitmweb")),
            "--no-web-open-browser",
            "--web-host",
            "127.0.0.1",
            "--web-port",
            str(self.web_port),
            "--listen-host",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--set",
            f"confdir={self.confdir}",
            "--set",
            "connection_strategy=lazy",
        ]
        for column in ("tls", "icon", "path", "method", "status", "size", "time", "comment"):
            argv += ["--set", f"web_columns={column}"]
        if self.password:  # 12.x asks for a token; 11.0.2 has no web auth
            argv += ["--set", f"web_password={self.password}"]
        for script in scripts:
            argv += ["-s", str(script)]
        env = {
            k: v
            for k, v in os.environ.items()
            if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
        }
        env.update(STANDIN_LOG=str(self.workdir / "standin.jsonl"), PYTHONUNBUFFERED="1")
        self._out = open(self.workdir / "mitmweb.out", "wb")  # noqa: SIM115 - held for the process, closed with it
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
            start_new_session=True,
        )
        self._wait()

    @property
    def ca_cert(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}/"

    def output(self) -> str:
        return (self.workdir / "mitmweb.out").read_text(errors="replace")

    def _wait(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mitmweb exited with {self.proc.returncode}:\n{self.output()}")
            if self.ca_cert.exists() and all(_can_connect(p) for p in (self.port, self.web_port)):
                return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"mitmweb did not start in {timeout}s:\n{self.output()}")

    def api(self, path: str):
        request = urllib.request.Request(self.url + path.lstrip("/"))
        if self.password:
            request.add_header("Authorization", f"Bearer {self.password}")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            return json.loads(response.read())

    def page_url(self, fragment: str) -> str:
        token = f"?token={self.password}" if self.password else ""
        return f"{self.url}{token}#{fragment}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own process group only
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._out.close()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def mitmweb():
    web = Mitmweb([ADDON_SCRIPT, harness.STANDIN_SCRIPT])
    try:
        yield web
    finally:
        web.cleanup()


@pytest.fixture
def browser(chromium):
    b = Browser(chromium)
    try:
        yield b
    finally:
        b.close()


def _send_openrouter_request(web: Mitmweb) -> dict:
    context = ssl.create_default_context(cafile=str(web.ca_cert))
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"https": f"http://127.0.0.1:{web.port}"}),
        urllib.request.HTTPSHandler(context=context),
    )
    body = {
        "model": "openai/gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a coding agent."},
            {"role": "user", "content": "Refactor the login handler."},
        ],
    }
    request = urllib.request.Request(
        "https://openrouter.ai/api/v1/chat/completions",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"content-type": "application/json", "authorization": "Bearer sk-or-test"},
    )
    with opener.open(request, timeout=30) as response:
        assert response.status == 200
        return json.loads(response.read())


# --------------------------------------------------------------------------- the test


def test_mitmweb_shows_comment_and_before_after_view(mitmweb, browser):
    _send_openrouter_request(mitmweb)
    # What the gateway got: the body field the OpenRouter rule sets.
    (record,) = [
        r for r in harness.read_standin_log(mitmweb.workdir / "standin.jsonl") if r.get("kind", "request") == "request"
    ]
    label = json.loads(record["body"])["session_id"]
    assert label and record["comment"], record
    flow_id = record["flow_id"]

    # The flow as mitmweb's UI gets it: the comment and marker, not the metadata.
    flows = {f["id"]: f for f in mitmweb.api("/flows")}
    comment = flows[flow_id]["comment"]
    assert label in comment and "body.session_id" in comment, comment
    assert flows[flow_id]["marked"] in (":label:", emoji.emoji[":label:"])  # 12.x sends the emoji
    view = mitmweb.api(f"/flows/{flow_id}/request/content/auto.json")
    if "view_name" in view:  # 12.x: {text, view_name, ...}
        assert view["view_name"] == VIEW_NAME, view
    else:  # 11.x: {lines: [[[style, text], ...], ...], description}
        view["text"] = "\n".join("".join(text for _, text in line) for line in view["lines"])
    assert "Changes (1)" in view["text"], view  # the default view for this request is ours

    # The browser: open the flow's request tab straight from the URL.
    browser.navigate(mitmweb.page_url(f"/flows/{flow_id}/request"))
    text = browser.wait_for(
        "document.body.innerText.includes('Changes (1)') && document.body.innerText", what="the Session IDs view"
    )
    assert re.search(r"body\.session_id: \(not set\)\s+→\s+" + re.escape(label), text), text
    for line in (
        "Matched rules (1)",
        "openrouter",
        "rules/openrouter.yaml:",
        "decided by:",
        "fallback",
        "pid:",
        "cwd:",
    ):
        assert line in text, (line, text)
    # the content view's title names the view that mitmweb picked by itself ("View: auto")
    titles = browser.evaluate(
        "[...document.querySelectorAll('.contentview h5, .contentview .controls')].map(e => e.innerText).join('\\n')"
    )
    assert VIEW_NAME in titles, titles
    # the comment column of the flow list shows the comment
    assert comment in text, (comment, text)
    browser.screenshot(SCREENSHOT)
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and SCREENSHOT.stat().st_size > 20_000

    # The Comment tab shows it too (clicked: 11.x does not follow a changed URL fragment).
    browser.evaluate(
        "[...document.querySelectorAll('.flow-detail nav a')].find(a => a.innerText.trim() === 'Comment').click()"
    )
    shown = browser.wait_for(
        "(document.querySelector('.flow-detail a.active') || {}).innerText === 'Comment'"
        " && document.querySelector('.flow-detail section').innerText",
        what="the Comment tab",
    )
    assert comment in shown, shown
    browser.screenshot(COMMENT_SCREENSHOT)
