"""The proxy's supervisor: `proxy start` runs it detached, in a session of its own (so it leads its
process group); it runs mitmdump as its child, in that group, and restarts it at once when it dies,
unless it was stopped (`proxy stop` and `proxy restart` signal the group). Without systemd or
launchd, a proxy that crashed is back within the time mitmdump takes to start.

- A child that dies again soon after its start (a crash loop: a broken config.yaml, a port taken
  meanwhile) is restarted after a back-off that doubles up to BACKOFF_MAX_S, with one log line per
  crash-loop episode, not one per death.
- A child that never answered at all (the first start failed) ends the supervisor: `proxy start`,
  which waits for the first answer, then says why, from the log's last line.
- The log is bounded: past LOG_BYTES (AGENT_SESSION_IDS_LOG_BYTES) it is copied to proxy-PORT.log.1
  and truncated in place (copy-truncate). mitmdump writes to the file itself (O_APPEND, so each write
  lands at the new end), never through this process: a supervisor that is slow or gone can never
  stall the proxy's writes, and so never its flows. The cost: lines written in the instant between
  the copy and the truncation are lost.
- A small private state file (proxy-PORT.supervisor.json: its pid, the child's, the restarts, the last
  exit and when) tells `proxy status` and `doctor` how it goes.

Its command line carries the marker below and mitmdump's whole command line (port, confdir, script),
so that `proxy stop` can verify it, as it verifies mitmdump itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..private_files import open_private, write_private
from ..shown import shown
from . import proxy
from .place import Place

MARK = "agent_session_ids.cli.supervisor"
STEADY_S = 10.0  # a child that lived this long was not crash-looping
BACKOFF_MAX_S = 60.0
TICK_S = 0.1  # how often the child is looked at: a death is seen within this
LOG_CHECK_S = 1.0
LOG_BYTES = 8 << 20
LOG_KEEP = 1  # old logs kept: proxy-PORT.log.1
CHILD_STOP_S = 8.0  # then SIGKILL (proxy stop's own SIGKILL of the group comes after 10 s)
LOG_BYTES_VARIABLE = "AGENT_SESSION_IDS_LOG_BYTES"


def state_file(place: Place) -> Path:
    return place.folder / f"proxy-{place.port}.supervisor.json"


def argv(place: Place, extra: list[str]) -> list[str]:
    """The supervisor of this Python and this package, with mitmdump's command line after `--`."""
    root = str(Path(__file__).resolve().parents[2])
    code = f"import sys; sys.path.insert(0, {root!r}); from {MARK} import main; sys.exit(main())"
    where = [str(place.port), str(place.confdir), place.listen_host]
    return [sys.executable, "-c", code, *where, "--", *proxy.mitmdump_argv(place, extra)]


def is_supervisor(pid: int, place: Place) -> bool:
    """Is process `pid` this user's supervisor of this port, confdir and script?"""
    found = proxy._command_line(pid)
    return found is not None and MARK in found[1] and proxy.is_this_proxy(pid, place)


def parent_of(pid: int) -> int | None:
    """The parent pid of a process (Linux: /proc/PID/stat; elsewhere ps); None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None
    except (OSError, ValueError, IndexError):
        return None
    try:
        done = subprocess.run(["ps", "-o", "ppid=", "-p", str(pid)], capture_output=True, text=True, timeout=10)
        return int(done.stdout.strip()) if done.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def read_state(place: Place) -> dict:
    """The state file's content (typed), with "running": whether its supervisor runs (verified)."""
    try:
        state = json.loads(state_file(place).read_bytes()[: 1 << 16])
    except (OSError, ValueError):
        return {}
    if not isinstance(state, dict):
        return {}
    pid = state.get("supervisor")
    state["running"] = type(pid) is int and 1 < pid <= proxy.PID_MAX and is_supervisor(pid, place)
    return state


def running_pid(place: Place) -> int | None:
    """The pid of this proxy's running supervisor, as the pid file names it (verified); else None."""
    try:
        pid = proxy._recorded_pid(place)
    except proxy.CliError:
        return None
    return pid if pid is not None and is_supervisor(pid, place) else None


def awaited(place: Place, pid: int) -> dict:
    """The status of the mitmdump the running supervisor `pid` starts next; CliError when it
    crash-loops, ends, or does not answer within proxy.START_WAIT_S."""
    deadline = time.monotonic() + proxy.START_WAIT_S
    while time.monotonic() < deadline:
        status = proxy.probe(place, timeout=1.0)
        if status is not None:
            return status
        if read_state(place).get("crash_loop"):
            raise proxy.CliError(
                f"the proxy's supervisor (pid {pid}) restarts mitmdump, which keeps exiting soon after its start "
                f"({last_line(place.log_file)}); see {place.log_file}, then: "
                f"agent-session-ids proxy restart --port {place.port}"
            )
        if not proxy._alive(pid):
            break
        time.sleep(0.1)
    raise proxy.CliError(f"the proxy's supervisor (pid {pid}) has no mitmdump answering; see {place.log_file}")


def restarting(place: Place) -> str:
    """Why nothing answers while this proxy's supervisor runs (between two runs of mitmdump); "" when none runs."""
    pid = running_pid(place)
    if pid is None:
        return ""
    state = read_state(place)
    how = "keeps exiting soon after its start" if state.get("crash_loop") else "is being restarted"
    return (
        f"no proxy answers on {place.url}: its supervisor (pid {pid}) runs, and mitmdump {how} "
        f"(last exit: {shown(state.get('last_exit'), 80)}); see {place.log_file}"
    )


def exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def last_line(path: Path, tail: int = 1 << 14) -> str:
    """The last line of the log that is not the supervisor's own, shown."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - tail))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return "no log"
    theirs = [x.strip() for x in lines if x.strip() and "agent-session-ids supervisor:" not in x]
    return shown(theirs[-1], 300) if theirs else "no output"


def summary(place: Place, answering: bool) -> tuple[str, str]:
    """(ok, warn or fail; one line) on the supervisor, for doctor; ("", "") when there is none to tell of."""
    state = read_state(place)
    if not state:
        return "", ""
    restarts = state.get("restarts") or 0
    last = f"; last exit: {shown(state.get('last_exit'), 80)} at {_when(state.get('last_exit_at'))}" if restarts else ""
    if not state["running"]:
        return (
            "ok" if answering else "warn",
            f"not running (it ended at {_when(state.get('ended_at'))}, after {restarts} restarts{last})",
        )
    if state.get("crash_loop"):
        return "fail", (
            f"pid {state['supervisor']}: mitmdump keeps exiting soon after its start, restarted with a back-off "
            f"({restarts} restarts{last}); see {place.log_file}"
        )
    return "ok", f"pid {state['supervisor']} keeps mitmdump (pid {state.get('child')}) up; {restarts} restarts{last}"


def _when(at: object) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if isinstance(at, (int, float)) else "?"


class LogBound:
    """The log the supervisor and mitmdump write to (fd 1, O_APPEND), kept under `limit` bytes."""

    def __init__(self, path: Path, fd: int, limit: int) -> None:
        self.path, self.fd, self.limit = path, fd, limit
        self.next_check = 0.0

    def write(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with contextlib.suppress(OSError):  # a log that cannot be written never stops the proxy
            os.write(self.fd, f"[{stamp}] agent-session-ids supervisor: {text}\n".encode(errors="replace"))

    def check(self) -> None:
        now = time.monotonic()
        if now < self.next_check:
            return
        self.next_check = now + LOG_CHECK_S
        try:
            if os.fstat(self.fd).st_size >= self.limit:
                self.rotate()
        except OSError as e:
            self.write(f"cannot rotate {self.path}: {e.strerror or e}")
            self.next_check = now + 60  # not again at once

    def rotate(self) -> None:
        """Copy the log to .1 (the older ones shifted), then truncate it in place. Only when the
        file at the path is still the one written to (no other file placed there)."""
        for n in range(LOG_KEEP, 1, -1):
            older = self.path.with_name(f"{self.path.name}.{n - 1}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n}"))
        source = open_private(self.path, os.O_RDONLY)
        try:
            if (os.fstat(source).st_dev, os.fstat(source).st_ino) != (
                os.fstat(self.fd).st_dev,
                os.fstat(self.fd).st_ino,
            ):
                raise OSError(f"{self.path} is not the file the proxy writes to")
            kept = self.path.with_name(f"{self.path.name}.1")
            tmp = kept.with_name(f".{kept.name}.{os.getpid()}.tmp")
            target = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(target, "wb") as out, os.fdopen(os.dup(source), "rb") as src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            os.replace(tmp, kept)
            os.ftruncate(self.fd, 0)
        finally:
            os.close(source)
        self.write(f"the log passed {self.limit} bytes: its older lines are in {kept.name}")


class Supervisor:
    def __init__(self, place: Place, child_argv: list[str], log: LogBound) -> None:
        self.place, self.child_argv, self.log = place, child_argv, log
        self.child: subprocess.Popen | None = None
        self.child_started = 0.0
        self.answered = False  # the first child answered: from then on a death is restarted
        self.stop_at: float | None = None  # when a stop was asked
        self.told: int | None = None  # the child sent SIGTERM for it
        self.quick = 0  # deaths in a row soon after their start
        self.state: dict = {"supervisor": os.getpid(), "child": None, "restarts": 0, "crash_loop": False}

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        signal.signal(signal.SIGHUP, lambda *_: None)  # no terminal to hang up: never an end (nor for the child)
        self._spawn()
        while self.stop_at is None or self.child is not None:
            code = self.child.poll() if self.child else None
            if code is None:
                self._tick()
                continue
            self.child = None
            if self.stop_at is not None:
                break
            if not self.answered:  # the first start failed: proxy start tells why
                self._save(last_exit=exit_text(code), last_exit_at=time.time(), child=None)
                self._end()
                return 1
            if not self._wait(self._died(code)):
                break
            self._spawn()
        self._end()
        return 0

    def _tick(self) -> None:
        if self.child is not None and self.stop_at is not None:  # also a child started as the stop came
            late = time.monotonic() - self.stop_at > CHILD_STOP_S
            if late or self.told != self.child.pid:
                self.child.send_signal(signal.SIGKILL if late else signal.SIGTERM)
                self.told = self.child.pid
        if self.child is not None and not self.answered:
            self.answered = proxy.probe(self.place, timeout=1.0) is not None
        if self.quick and time.monotonic() - self.child_started >= STEADY_S:
            self.quick = 0  # the crash loop is over
            self._save(crash_loop=False)
        self.log.check()
        time.sleep(TICK_S)

    def _spawn(self) -> None:
        self.child = subprocess.Popen(
            self.child_argv, stdin=subprocess.DEVNULL, close_fds=True, preexec_fn=_with_parent(os.getpid())
        )
        self.child_started = time.monotonic()
        self._save(child=self.child.pid, child_started_at=time.time())

    def _died(self, code: int) -> float:
        """Note a death; the delay before the next start."""
        lived = time.monotonic() - self.child_started
        self.quick = self.quick + 1 if lived < STEADY_S else 0
        delay = 0.0 if self.quick < 2 else min(BACKOFF_MAX_S, 2.0 ** (self.quick - 2))
        how = exit_text(code)
        if self.quick < 2:
            self.log.write(f"mitmdump (pid {self.state['child']}) ended ({how}) after {lived:.0f} s; restarting it")
        elif self.quick == 2:  # one line per episode
            self.log.write(
                f"mitmdump keeps exiting soon after its start ({how}: {last_line(self.place.log_file)}); "
                f"restarting it with a back-off of up to {BACKOFF_MAX_S:.0f} s until it runs"
            )
        self._save(
            restarts=self.state["restarts"] + 1,
            last_exit=how,
            last_exit_at=time.time(),
            crash_loop=self.quick >= 2,
            child=None,
        )
        return delay

    def _wait(self, delay: float) -> bool:
        """Sleep `delay` unless a stop is asked; whether to start again."""
        until = time.monotonic() + delay
        while self.stop_at is None and time.monotonic() < until:
            time.sleep(min(TICK_S, max(0.0, until - time.monotonic())))
        return self.stop_at is None

    def _stop(self, signum: int, frame: object) -> None:
        if self.stop_at is None:
            self.stop_at = time.monotonic()
        if self.child is not None and self.child.returncode is None:
            self.child.send_signal(signal.SIGTERM)
            self.told = self.child.pid

    def _save(self, **changes: object) -> None:
        self.state.update(changes)
        with contextlib.suppress(OSError):  # only for status and doctor
            write_private(state_file(self.place), json.dumps(self.state).encode())

    def _end(self) -> None:
        self._save(child=None, ended_at=time.time())
        try:  # a pid file naming this process is stale from now on
            if self.place.pid_file.read_text().strip() == str(os.getpid()):
                self.place.pid_file.unlink()
        except OSError:
            pass


def _with_parent(parent: int):
    """Linux: the child gets SIGTERM when the supervisor dies (SIGKILL, OOM), so that no mitmdump
    holds the port unsupervised, where `proxy stop` could not verify it. Elsewhere: nothing."""
    if not sys.platform.startswith("linux"):
        return None

    def die_with_parent() -> None:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died before: too late to be told
            os._exit(1)

    return die_with_parent


def main(args: list[str] | None = None) -> int:
    """supervisor PORT CONFDIR LISTEN_HOST -- MITMDUMP ARGV..."""
    args = list(sys.argv[1:] if args is None else args)
    port, confdir, listen_host, child_argv = int(args[0]), Path(args[1]), args[2], args[4:]
    place = Place(port, confdir, listen_host)
    try:
        limit = int(os.environ.get(LOG_BYTES_VARIABLE) or LOG_BYTES)
    except ValueError:
        limit = LOG_BYTES
    return Supervisor(place, child_argv, LogBound(place.log_file, sys.stdout.fileno(), max(limit, 1024))).run()
