"""`agent-session-ids proxy start|stop|status|restart`: the proxy in the background.

It is mitmdump with this addon and the shipped rules on 127.0.0.1:PORT, its log in
<confdir>/agent-session-ids/proxy-PORT.log and its pid in proxy-PORT.pid (the folder 0700, the
files 0600, no symlink followed). Whether a proxy runs this addon is asked of the proxy itself
(status.py's reserved host), straight over a socket to 127.0.0.1:PORT: no proxy variable
(HTTP_PROXY, NO_PROXY, ALL_PROXY, either spelling) can send the question elsewhere or around it.

Only this user's proxy is trusted: the answer counts only when the socket that accepted the
question is this user's. On Linux that is its row in /proc/net/tcp{,6} (the accepted socket
carries its listener's uid); elsewhere (macOS) lsof must list a listener of this user's on the
port (lsof shows no other user's sockets to a user).

The pid file names the proxy's supervisor (supervisor.py), which runs mitmdump as its child and
restarts it when it dies. A pid is signalled only when it is verified to be this proxy: this user's
supervisor whose command line carries mitmdump's with this addon on this port and confdir (Linux:
/proc/PID/cmdline; elsewhere `ps -o uid=,command= -p PID`), and, when the proxy answers, the pid it
reports itself (its mitmdump) is that supervisor's child. (A pid file an older version wrote names
mitmdump itself: verified the same way, the reported pid then its own.) Its group is signalled only
when it leads its own (`proxy start` makes it so; mitmdump stays in it); never pid 0, 1 or below.
"""

from __future__ import annotations

import errno
import fcntl
import http.client
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .. import PROBE_HOST
from ..private_files import open_private, private_folder, write_private
from ..resolution.tcp_address import hex_address as hex_bytes
from ..shown import shown
from . import supervisor
from .config import script_flags
from .place import DEFAULT_PORT, CliError, Place  # noqa: F401 - the commands' shared names

START_WAIT_S = 30.0
STOP_WAIT_S = 10.0
PID_MAX = 1 << 22  # Linux's highest; a pid file naming more is not a pid file of ours
PROBE_URL = f"http://{PROBE_HOST}/status"  # absolute form: a question for the proxy, never forwarded
LISTEN, ESTABLISHED = "0A", "01"  # /proc/net/tcp's st column
LOOPBACK = ipaddress.ip_address("127.0.0.1")
ANY_V4, ANY_V6 = ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::")
MAPPED = ipaddress.ip_address("::ffff:127.0.0.1")
SCRIPT_TAIL = os.path.join("agent_session_ids", "script.py")


def hex_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    """The address as /proc/net/tcp{,6} prints it."""
    return hex_bytes(ip, port).decode()


def probe(place: Place, timeout: float = 2.0) -> dict | None:
    """This user's proxy's own status (status.py), typed; None when nothing on the port answers as
    this addon over a socket of this user's."""
    connection = http.client.HTTPConnection(place.host, place.port, timeout=timeout)  # reads no *_PROXY
    try:
        connection.connect()
        assert connection.sock is not None
        if _served_by(place.port, connection.sock.getsockname()[1], place.host) != os.getuid():
            return None  # another user's listener, or one that cannot be seen: never taken for the proxy
        connection.request("GET", PROBE_URL)
        answer = connection.getresponse()
        status = json.loads(answer.read(1 << 20)) if answer.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        connection.close()
    return _typed(status) if isinstance(status, dict) and status.get("addon") == "agent-session-ids" else None


def _typed(status: dict) -> dict:
    """The status answer as the commands use it: its text shown (it comes from another program),
    a pid only when it is one, lists of strings only."""
    pid = status.get("pid")
    texts = lambda key: [shown(x, 200) for x in status.get(key) or [] if isinstance(x, str)]  # noqa: E731
    return {
        "addon": "agent-session-ids",
        "version": shown(status.get("version"), 80),
        "pid": pid if type(pid) is int and 1 < pid <= PID_MAX else None,
        "rules": texts("rules") if isinstance(status.get("rules"), list) else [],
        "hosts": texts("hosts") if isinstance(status.get("hosts"), list) else [],
    }


def _rows(port: int):
    """(local address, remote address, state, uid) of the /proc/net/tcp{,6} rows whose local
    port is `port`. Raises OSError when there is no /proc/net/tcp."""
    tail = f":{port:04X}"
    with open("/proc/net/tcp") as v4:
        lines = v4.readlines()[1:]
    try:
        with open("/proc/net/tcp6") as v6:
            lines += v6.readlines()[1:]
    except OSError:
        pass  # no IPv6
    for line in lines:
        fields = line.split()
        if len(fields) > 7 and fields[1].endswith(tail):
            yield fields[1], fields[2], fields[3], int(fields[7])


def _served_by(port: int, client_port: int, host: str = "127.0.0.1") -> int | None:
    """The uid of the socket that accepted this command's connection from `client_port` to `host`;
    None when it cannot be seen. Elsewhere than Linux: this user's uid when lsof lists a listener of
    this user's on the port."""
    try:
        ip = ipaddress.ip_address(host)
        ips = {ip, ipaddress.ip_address(f"::ffff:{ip}")} if ip.version == 4 else {ip}
        mine = {hex_address(x, port) for x in ips}
        theirs = {hex_address(x, client_port) for x in ips}
        return next(
            (
                uid
                for local, remote, state, uid in _rows(port)
                if state == ESTABLISHED and local in mine and remote in theirs
            ),
            None,
        )
    except OSError:
        return os.getuid() if _lsof_listeners(port) else None


def _lsof_listeners(port: int) -> list[int]:
    """The pids lsof lists as listening on the port among this user's processes (macOS)."""
    try:
        done = subprocess.run(
            ["lsof", "-nP", "-a", f"-iTCP:{port}", "-sTCP:LISTEN", "-u", str(os.getuid()), "-t"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [int(x) for x in done.stdout.split() if x.isdigit()]


def _listener_uids(port: int) -> set[int]:
    """The uids of the sockets listening where 127.0.0.1:port is answered (Linux; empty elsewhere)."""
    where = {hex_address(ip, port) for ip in (LOOPBACK, ANY_V4, ANY_V6, MAPPED)}
    try:
        return {uid for local, _, state, uid in _rows(port) if state == LISTEN and local in where}
    except OSError:
        return set()


def port_holder(port: int, host: str = "127.0.0.1") -> str | None:
    """What listens on host:port and is not this user's proxy, in words; None when the port is free."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return None
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                return f"port {port} cannot be used ({e.strerror})"
    strangers = sorted(_listener_uids(port) - {os.getuid()})
    if strangers:
        return f"port {port} is held by another user's program (uid {strangers[0]}), never taken for your proxy"
    owner = _listener(port)
    return f"port {port} is held by {owner or 'another program'}, which is not agent-session-ids"


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
            if len(fields) > 9 and fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
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
                return f"pid {entry.name} ({shown(comm, 40)})"
        except OSError:
            continue
    return None


def _recorded_pid(place: Place) -> int | None:
    """The pid the pid file names; None when there is no pid file. Raises CliError (after removing
    the file) when it names no pid a proxy can have: 0 and below name process groups or every
    process, 1 is init."""
    try:
        text = place.pid_file.read_text(errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CliError(f"cannot read {place.pid_file} ({e.strerror or e})") from None
    try:
        pid = int(text)
    except ValueError:
        pid = None
    if pid is None or not 1 < pid <= PID_MAX:
        place.pid_file.unlink(missing_ok=True)
        raise CliError(
            f"{place.pid_file} held {shown(text, 40)!r}, which is no proxy's pid; removed it, signalled nothing"
        )
    return pid


def _command_line(pid: int) -> tuple[int, str] | None:
    """(uid, command line with its words joined by spaces) of a process, or None when it is gone."""
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return uid, f.read().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None  # Linux: the process is gone
    except OSError:
        return None
    try:  # no /proc (macOS)
        done = subprocess.run(["ps", "-o", "uid=,command=", "-p", str(pid)], capture_output=True, text=True, timeout=10)
        uid_text, _, command = done.stdout.strip().partition(" ")
        return (int(uid_text), command.strip() + " ") if done.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def is_this_proxy(pid: int, place: Place) -> bool:
    """Is process `pid` this user's mitmdump with this addon on this port and confdir?"""
    found = _command_line(pid)
    if found is None:
        return False
    uid, command = found
    command = f" {command}"
    return (
        uid == os.getuid()
        and f" -p {place.port} " in command
        and f"confdir={place.confdir} " in command
        and SCRIPT_TAIL in command
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def mitmdump_argv(place: Place, extra: list[str]) -> list[str]:
    """mitmdump of this Python, with the addon's script, on the place's listen host and port (which
    win over the config file's; its other options are read by mitmdump itself)."""
    script = Path(__file__).resolve().parent.parent / "script.py"
    return [
        sys.executable,
        "-c",
        "import sys; from mitmproxy.tools.main import mitmdump; sys.exit(mitmdump())",
        "--listen-host",
        place.listen_host,
        "-p",
        str(place.port),
        "--set",
        f"confdir={place.confdir}",
        "-s",
        str(script),
        *script_flags(place.confdir),
        *_lazy(extra),
        *extra,
    ]


def _lazy(extra: list[str]) -> list[str]:
    """The reserved host is answered without a server: no upstream connection at CONNECT (unless
    the options given say otherwise)."""
    return [] if any("connection_strategy" in a for a in extra) else ["--set", "connection_strategy=lazy"]


def start(place: Place, extra: list[str] | None = None) -> tuple[dict, bool]:
    """Start the proxy unless one runs there already; (its status, whether this call started it)."""
    try:
        private_folder(place.folder)
        lock_fd = open_private(place.lock_file)
    except OSError as e:
        raise CliError(
            f"cannot write to {place.folder} ({e.strerror or e}); give another folder with --confdir"
        ) from None
    with os.fdopen(lock_fd, "ab") as lock:  # two starts at once: the second waits, then finds the first's
        fcntl.flock(lock, fcntl.LOCK_EX)
        status = probe(place)
        if status is not None:
            return status, False
        running = supervisor.running_pid(place)
        if running is not None:  # between two runs of mitmdump: the supervisor's next one is awaited
            return supervisor.awaited(place, running), False
        held = port_holder(place.port, place.host)
        if held:
            raise CliError(
                f"{held}; end that program, or use another port: agent-session-ids proxy start --port {place.port + 1}"
            )
        try:
            log = open_private(place.log_file)
        except OSError as e:
            raise CliError(f"cannot write the log {place.log_file} ({e.strerror or e})") from None
        with os.fdopen(log, "ab") as log_file:
            child = subprocess.Popen(
                supervisor.argv(place, extra or []),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        try:
            write_private(place.pid_file, f"{child.pid}\n".encode())
        except OSError as e:
            _end(child.pid)
            raise CliError(f"cannot write the pid file {place.pid_file} ({e.strerror or e})") from None
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
    """Stop the proxy the pid file names, once it is verified to be this proxy; else say why not."""
    pid = _recorded_pid(place)
    status = probe(place)
    running = status is not None
    if pid is None:
        if running:
            return (
                f"the proxy on port {place.port} was not started by 'proxy start' (no pid file); stop it where it runs"
            )
        return f"no proxy is running on port {place.port}"
    reported = status.get("pid") if status else None
    if not _verified(pid, place, reported):
        place.pid_file.unlink(missing_ok=True)
        what = "is not this proxy (left alone)" if _alive(pid) else "has ended"
        after = (
            f"; the proxy on port {place.port} was not started by 'proxy start': stop it where it runs"
            if running
            else f"; no proxy is running on port {place.port}"
        )
        return f"the pid file {place.pid_file} was stale: pid {pid} {what}; removed it{after}"
    _end(pid)
    place.pid_file.unlink(missing_ok=True)
    return f"stopped the proxy on port {place.port} (pid {pid})"


def _verified(pid: int, place: Place, reported: int | None) -> bool:
    """Is `pid` this proxy: its supervisor, whose child answers (when one answers), or a mitmdump
    an older version started, which answers with its own pid."""
    if supervisor.is_supervisor(pid, place):
        return reported is None or supervisor.parent_of(reported) == pid
    return is_this_proxy(pid, place) and reported in (None, pid)


def _end(pid: int) -> None:
    """SIGTERM, then SIGKILL after STOP_WAIT_S: to the proxy's process group when it leads its own
    (`proxy start` starts it in a session of its own), else to the proxy alone. Never pid 0, 1 or
    below: those would name the caller's group, or every process."""
    if pid <= 1:
        raise CliError(f"pid {pid} is no proxy's pid; signalled nothing")
    try:
        send = os.killpg if os.getpgid(pid) == pid else os.kill
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, STOP_WAIT_S), (signal.SIGKILL, 5.0)):
        try:
            send(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError as e:
            raise CliError(f"cannot signal the proxy (pid {pid}): {e.strerror}") from None
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                reaped, _ = os.waitpid(pid, os.WNOHANG)
                if reaped:
                    return
            except ChildProcessError:
                pass  # not our child: ask whether it lives
            if not _alive(pid):
                return
            time.sleep(0.05)


def _last_line(path: Path) -> str:
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "no log"
    return shown(lines[-1].strip(), 300) if lines else "no output"


def describe(status: dict, place: Place) -> str:
    """One line on a proxy from its status answer (typed and shown by probe; shown again here)."""
    rules = ", ".join(status.get("rules") or []) or "none"
    pid, kept = (f" (pid {status['pid']})" if status.get("pid") else ""), ""
    state = supervisor.read_state(place) if status.get("pid") else {}
    if (
        state.get("running") and supervisor.parent_of(status["pid"]) == state["supervisor"]
    ):  # the pid to stop is the supervisor's
        pid = f" (pid {state['supervisor']})"
        kept = f"; kept up by its supervisor: mitmdump pid {status['pid']}, {state.get('restarts') or 0} restarts"
    return shown(f"agent-session-ids {status.get('version')} runs on {place.url}{pid}; rules: {rules}{kept}")
