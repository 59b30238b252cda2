"""`agent-session-ids service install|uninstall|status|unit`: the proxy as a user service, so that
it is there after a reboot. A systemd user unit on Linux, a launchd agent on macOS; each runs the
same proxy as `proxy start`, in the foreground, and restarts it when it fails."""

from __future__ import annotations

import os
import plistlib
import re
import subprocess
import sys
from pathlib import Path

from ..private_files import open_private, private_folder
from ..shown import shown
from .proxy import CliError, Place, mitmdump_argv, probe

UNIT_NAME = "agent-session-ids.service"
LAUNCHD_LABEL = "dev.agent-session-ids.proxy"


# systemd.syntax(7) and systemd.service(5) "Command lines": a word in double quotes takes C escapes
# (so \\ and \" are written escaped); % starts a specifier (%%); $ a variable ($$), except in the
# executable's path, which is taken literally.
SYSTEMD_QUOTED = str.maketrans({"\\": "\\\\", '"': '\\"', "%": "%%"})
# systemd refuses an executable whose path holds a quote or a backslash
SYSTEMD_EXECUTABLE_REFUSES = "\\\"'"
# C0 and C1 controls (a newline would end the line) and the surrogates that stand for non-UTF-8 bytes
UNWRITABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _systemd_word(word: str, dollars: bool = True) -> str:
    quoted = word.translate(SYSTEMD_QUOTED)
    return '"' + (quoted.replace("$", "$$") if dollars else quoted) + '"'


def systemd_command(argv: list[str]) -> str:
    """ExecStart's value for argv, each word taken as it is. A path with a control character (a
    newline ends the line) cannot be written in a unit."""
    for word in argv:
        if UNWRITABLE.search(word):
            raise CliError(
                f"a systemd unit cannot hold {shown(word)}: it has a control character or a byte that is not UTF-8"
            )
    if any(ch in SYSTEMD_EXECUTABLE_REFUSES for ch in argv[0]):
        raise CliError(f"systemd cannot run {shown(argv[0])}: its path has a quote or a backslash")
    path, argv0 = _systemd_word(argv[0], dollars=False), _systemd_word(argv[0])
    # "@path argv0": argv[0] is substituted like every argument, the path never
    head = [f"@{path}", argv0] if path != argv0 else [path]
    return " ".join(head + [_systemd_word(word) for word in argv[1:]])


def systemd_unit(place: Place) -> str:
    command = systemd_command(mitmdump_argv(place, []))
    return f"""[Unit]
Description=agent-session-ids: the session-ID proxy for coding agents on 127.0.0.1:{place.port}
After=network.target

[Service]
ExecStart={command}
Restart=on-failure
RestartSec=2

[Install]
WantedBy=default.target
"""


def launchd_plist(place: Place) -> bytes:
    return plistlib.dumps(
        {
            "Label": LAUNCHD_LABEL,
            "ProgramArguments": mitmdump_argv(place, []),
            "RunAtLoad": True,
            "KeepAlive": {"SuccessfulExit": False},  # restarted when it fails, not when it is stopped
            "StandardOutPath": str(place.log_file),
            "StandardErrorPath": str(place.log_file),
        }
    )


def _platform() -> str:
    return "macos" if sys.platform == "darwin" else "linux"


def _unit_path(platform: str) -> Path:
    if platform == "macos":
        return Path("~/Library/LaunchAgents").expanduser() / f"{LAUNCHD_LABEL}.plist"
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(config) / "systemd" / "user" / UNIT_NAME


def _manager(platform: str) -> str | None:
    """Why no user service manager can be used here, or None when one answers."""
    argv = (
        ["launchctl", "print", f"gui/{os.getuid()}"]
        if platform == "macos"
        else ["systemctl", "--user", "show-environment"]
    )
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{argv[0]} cannot run ({e})"
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or [f"{argv[0]} failed"])[0]
    return None


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise CliError(f"{' '.join(argv)} failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")


def unit_text(place: Place, platform: str | None = None) -> str:
    platform = platform or _platform()
    if platform != "macos":
        return systemd_unit(place)
    try:
        return launchd_plist(place).decode()
    except ValueError as e:  # plistlib: no control characters in a string
        raise CliError(f"a launchd plist cannot hold the confdir {shown(str(place.confdir))}: {e}") from None


def install(place: Place) -> str:
    platform = _platform()
    why = _manager(platform)
    if why:  # a container, WSL, a server: the profile starts the proxy at login, its supervisor keeps it up
        from .env import profile_line

        raise CliError(
            f"no user service manager runs here ({shown(why, 200)}); to have the proxy at each login, "
            f"{profile_line(place, os.environ.get('SHELL', ''))} (it starts the proxy when none answers); "
            f"now: agent-session-ids proxy start --port {place.port}"
        )
    path = _unit_path(platform)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        private_folder(place.folder)
        os.close(open_private(place.log_file))  # launchd appends to it: made 0600 here, not by launchd
    except OSError as e:
        raise CliError(
            f"cannot write to {place.folder} ({e.strerror or e}); give another folder with --confdir"
        ) from None
    path.write_text(unit_text(place, platform))
    if platform == "macos":
        _run(["launchctl", "bootstrap", f"gui/{os.getuid()}", str(path)])
    else:
        _run(["systemctl", "--user", "daemon-reload"])
        _run(["systemctl", "--user", "enable", "--now", UNIT_NAME])
    return f"installed {path}; the proxy starts now and after each login"


def uninstall(place: Place) -> str:
    platform = _platform()
    path = _unit_path(platform)
    if not path.exists():
        return f"no service is installed ({path} does not exist)"
    if _manager(platform) is None:
        if platform == "macos":
            subprocess.run(["launchctl", "bootout", f"gui/{os.getuid()}/{LAUNCHD_LABEL}"], capture_output=True)
        else:
            subprocess.run(["systemctl", "--user", "disable", "--now", UNIT_NAME], capture_output=True)
    path.unlink()
    return f"removed {path}"


def status(place: Place) -> tuple[bool, str]:
    path = _unit_path(_platform())
    answer = probe(place)
    installed = f"installed at {path}" if path.exists() else "not installed"
    running = f"the proxy answers on {place.url}" if answer else f"no proxy answers on {place.url}"
    return path.exists() and answer is not None, f"service {installed}; {running}"
