"""Where one proxy lives, and the parser every command uses (its errors in one line)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from .errors import CliError  # the commands' shared names

DEFAULT_PORT = 8080


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block, prefixed once: with this command's name
        raise CliError(f"{message} (see {self.prog} --help)", prog=self.prog)

    def _check_value(self, action, value):  # argparse's hook for choices (3.11 to 3.13): a close one named
        choices = action.choices
        if choices is not None and value not in choices:
            raise argparse.ArgumentError(action, invalid_choice(value, choices))


def invalid_choice(value, choices) -> str:
    import difflib

    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"invalid choice: {value!r}{hint} (choose from {', '.join(map(str, choices))})"


@dataclass(frozen=True)
class Place:
    """Where one proxy lives: its port and its confdir, and the files it keeps there."""

    port: int = DEFAULT_PORT
    confdir: Path = Path("~/.mitmproxy").expanduser()
    listen_host: str = "127.0.0.1"  # what the proxy binds (config.yaml or --listen-host)

    @property
    def host(self) -> str:
        """Where the commands reach the proxy: 127.0.0.1 unless it listens on another address alone."""
        from .config import reach_host

        return reach_host(self.listen_host, "listen_host")

    @property
    def folder(self) -> Path:
        return self.confdir / "agent-session-ids"

    @property
    def pid_file(self) -> Path:
        return self.folder / f"proxy-{self.port}.pid"

    @property
    def log_file(self) -> Path:
        return self.folder / f"proxy-{self.port}.log"

    @property
    def lock_file(self) -> Path:
        return self.folder / f"proxy-{self.port}.lock"

    @property
    def ca_cert(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    @property
    def url(self) -> str:
        return f"http://[{self.host}]:{self.port}" if ":" in self.host else f"http://{self.host}:{self.port}"
