"""mitmproxy's own config file in the confdir: the one place for the proxy's options.

mitmdump reads `config.yaml`, then `config.yml` (each one that exists; the later one wins, and its
`-p` and `--listen-host` flags win over both), so the proxy takes its `session_*` options from there
by itself. The commands read it here for the two options they need to find the proxy: listen_port
and listen_host. A thin adapter: plain data out, one CliError line for a file that mitmdump would
refuse. PyYAML is imported only when a file is there: `env` runs in every new shell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..shown import shown
from .errors import CliError

NAMES = ("config.yaml", "config.yml")  # mitmproxy/tools/main.py: loaded in this order, the later wins
# listen hosts on which the proxy also answers on 127.0.0.1 ("" and the wildcards: every interface)
LOOPBACK_REACHABLE = ("", "0.0.0.0", "::", "127.0.0.1", "localhost")


@dataclass(frozen=True)
class Config:
    where: Path  # confdir/config.yaml: the file in use, or where one would go
    paths: tuple[Path, ...] = ()  # the files read, in mitmproxy's order
    options: dict = field(default_factory=dict)  # every option they set, the later file winning

    @property
    def listen_port(self) -> int | None:
        return self.options.get("listen_port")

    @property
    def listen_host(self) -> str | None:
        return self.options.get("listen_host")


def read(confdir: Path) -> Config:
    """The config file(s) in `confdir`. Raises CliError (file, line, fix) for one mitmdump would refuse."""
    options: dict = {}
    paths = tuple(p for p in (confdir / name for name in NAMES) if p.is_file())
    for path in paths:
        options.update(_parsed(path))
    return Config(confdir / NAMES[0] if not paths else paths[-1], paths, options)


def _parsed(path: Path) -> dict:
    import yaml  # only here: a confdir without a config file never pays for PyYAML

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"cannot read {path} ({getattr(e, 'strerror', None) or e}); fix or remove it") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "not YAML"
        raise CliError(
            f"{path}{at}: {problem}; write it as mitmproxy options, one per line: listen_port: 8080"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CliError(
            f"{path}: holds a {type(data).__name__}, not options; write one per line, such as: listen_port: 8080"
        )
    _check(path, text, data)
    return data


def _check(path: Path, text: str, data: dict) -> None:
    port, host = data.get("listen_port"), data.get("listen_host")
    if port is not None and (type(port) is not int or not 0 < port < 65536):
        raise CliError(f"{path}{_line_of(text, 'listen_port')}: listen_port {port!r} is not a port; give 1 to 65535")
    if host is not None and not isinstance(host, str):
        raise CliError(f"{path}{_line_of(text, 'listen_host')}: listen_host {host!r} is not an address; give 127.0.0.1")


def _line_of(text: str, key: str) -> str:
    """ " line N" of the key's line, when it stands at the start of one."""
    pattern = re.compile(rf"^['\"]?{key}['\"]?\s*:")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return f" line {number}"
    return ""


def reach_host(listen_host: str, source: str) -> str:
    """The address the commands reach a proxy listening on `listen_host` at: 127.0.0.1 wherever
    it also answers there, else that address itself (an IP; a name other than localhost is refused:
    the commands check that the answering socket is this user's by its address)."""
    if listen_host in LOOPBACK_REACHABLE:
        return "127.0.0.1"
    import ipaddress

    try:
        return str(ipaddress.ip_address(listen_host))
    except ValueError:
        raise CliError(
            f"listen_host {listen_host!r} ({source}) is not an IP address; give one, such as 127.0.0.1 or 0.0.0.0"
        ) from None


def shadowed(config: Config, args: list[str]) -> str | None:
    """Why `--set NAME=VALUE` among mitmdump's arguments would not take effect: mitmdump reads the
    config file after the --set options, so the file's value of NAME wins (its -p and
    --listen-host flags win over the file)."""
    names = [args[at + 1].partition("=")[0] for at, arg in enumerate(args[:-1]) if arg == "--set"]
    names += [arg.partition("=")[2].partition("=")[0] for arg in args if arg.startswith("--set=")]
    clash = [name for name in names if name in config.options]
    if not clash:
        return None
    return (
        f"--set {clash[0]} would not take effect: {config.where} sets it, and mitmproxy reads that file after "
        f"--set; change it there"
    )


def script_flags(confdir: Path) -> list[str]:
    """`-s PATH` for each of the file's `scripts`: a `-s` flag (the addon's own) replaces the file's
    list in mitmdump, so the commands that start one give them again, after the addon."""
    config = read(confdir)
    scripts = config.options.get("scripts") or []
    if not isinstance(scripts, list):
        raise CliError(f"{config.where}: scripts must be a list of files")
    return [flag for s in scripts for flag in ("-s", str(config.where.parent / Path(str(s)).expanduser()))]


def doctor_line(config: Config) -> tuple[str, str]:
    """(state, detail) of doctor's line on the config file in use."""
    if not config.paths:
        return "ok", f"none; options such as listen_port and session_privacy go in {config.where}"
    said = ", ".join(f"{k}: {v!r}" for k, v in config.options.items()) or "no options"
    return "ok", shown(f"{', '.join(map(str, config.paths))} sets {said}", 500)
