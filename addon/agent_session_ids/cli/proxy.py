"""`agent-session-ids proxy start|stop|status|restart`: the proxy in the background.

It is mitmdump with this addon and the shipped rules on 127.0.0.1:PORT, its log in
<confdir>/agent-session-ids/proxy-PORT.log and its pid in proxy-PORT.pid. Whether a proxy runs
this addon is asked of the proxy itself (status.py's reserved host), never guessed from a pid.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ..status import PROBE_HOST
from .place import DEFAULT_PORT, CliError, Place  # noqa: F401 - the commands' shared names

START_WAIT_S = 30.0
STOP_WAIT_S = 10.0


def probe(place: Place, timeout: float = 2.0) -> dict | None:
    """The proxy's own status (status.py), or None when nothing on the port answers as this addon."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": place.url}))
    try:
        with opener.open(f"http://{PROBE_HOST}/status", timeout=timeout) as answer:
            status = json.loads(answer.read(1 << 20))
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) and status.get("addon") == "agent-session-ids" else None


def port_holder(port: int) -> str | None:
    """What listens on 127.0.0.1:port, in words; None when the port is free."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return None
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                return f"port {port} cannot be used ({e.strerror})"
    owner = _listener(port)
    return f"port {port} is held by {owner}" if owner else f"port {port} is held by another program"


def _listener(port: int) -> str | None:
    """The pid and name of the process listening on the port (Linux; processes this user can read)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry.name}/fd")
            if any(os.readlink(f"/proc/{entry.name}/fd/{fd}") in inodes for fd in fds):
                comm = Path(f"/proc/{entry.name}/comm").read_text().strip()
                return f"pid {entry.name} ({comm})"
        except OSError:
            continue
    return None


def _pid_of(place: Place) -> int | None:
    try:
        pid = int(place.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # a stale pid file
    except PermissionError:
        pass
    return pid


def mitmdump_argv(place: Place, extra: list[str]) -> list[str]:
    """mitmdump of this Python, with the addon's script, on 127.0.0.1:port."""
    script = Path(__file__).resolve().parent.parent / "script.py"
    return [sys.executable, "-c", "import sys; from mitmproxy.tools.main import mitmdump; sys.exit(mitmdump())",
            "--listen-host", "127.0.0.1", "-p", str(place.port), "--set", f"confdir={place.confdir}",
            "-s", str(script), *_lazy(extra), *extra]


def _lazy(extra: list[str]) -> list[str]:
    """The reserved host is answered without a server: no upstream connection at CONNECT (unless
    the options given say otherwise)."""
    return [] if any("connection_strategy" in a for a in extra) else ["--set", "connection_strategy=lazy"]


def start(place: Place, extra: list[str] | None = None) -> tuple[dict, bool]:
    """Start the proxy unless one runs there already; (its status, whether this call started it)."""
    try:
        place.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise CliError(f"cannot write to {place.folder} ({e.strerror}); give another folder with --confdir") from None
    with open(place.lock_file, "a") as lock:  # two starts at once: the second waits, then finds the first's
        fcntl.flock(lock, fcntl.LOCK_EX)
        status = probe(place)
        if status is not None:
            return status, False
        held = port_holder(place.port)
        if held:
            raise CliError(f"{held}, which is not agent-session-ids; stop it, or use another port: "
                           f"agent-session-ids proxy start --port {place.port + 1}")
        with open(place.log_file, "ab") as log:
            child = subprocess.Popen(mitmdump_argv(place, extra or []), stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        place.pid_file.write_text(f"{child.pid}\n")
        deadline = time.monotonic() + START_WAIT_S
        while time.monotonic() < deadline:
            status = probe(place, timeout=1.0)
            if status is not None:
                return status, True
            if child.poll() is not None:
                place.pid_file.unlink(missing_ok=True)
                raise CliError(f"the proxy exited at start ({_last_line(place.log_file)}); see {place.log_file}")
            time.sleep(0.1)
        _end(child.pid)  # never a half-started proxy left behind
        place.pid_file.unlink(missing_ok=True)
        raise CliError(f"the proxy did not answer within {START_WAIT_S:.0f} s; see {place.log_file}")


def stop(place: Place) -> str:
    pid = _pid_of(place)
    if pid is None:
        place.pid_file.unlink(missing_ok=True)
        if probe(place) is not None:
            return (f"the proxy on port {place.port} was not started by 'proxy start' (no pid file); "
                    f"stop it where it runs")
        return f"no proxy is running on port {place.port}"
    _end(pid)
    place.pid_file.unlink(missing_ok=True)
    return f"stopped the proxy on port {place.port} (pid {pid})"


def _end(pid: int) -> None:
    """SIGTERM, then SIGKILL after STOP_WAIT_S; the process group, as it was started in its own."""
    for sig, wait in ((signal.SIGTERM, STOP_WAIT_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                reaped, _ = os.waitpid(pid, os.WNOHANG)
                if reaped:
                    return
            except ChildProcessError:
                pass  # not our child: ask whether it lives
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def _last_line(path: Path) -> str:
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "no log"
    return lines[-1].strip()[:300] if lines else "no output"


def describe(status: dict, place: Place) -> str:
    rules = ", ".join(status.get("rules") or []) or "none"
    return (f"agent-session-ids {status.get('version')} runs on {place.url} (pid {status.get('pid')}); "
            f"rules: {rules}")
