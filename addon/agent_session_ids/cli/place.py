"""Where one proxy lives, and the parser every command uses (its errors in one line)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from .errors import CliError  # the commands' shared names

DEFAULT_PORT = 8080


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        raise CliError(f"{self.prog}: {message} (see agent-session-ids --help)")


@dataclass(frozen=True)
class Place:
    """Where one proxy lives: its port and its confdir, and the files it keeps there."""

    port: int = DEFAULT_PORT
    confdir: Path = Path("~/.mitmproxy").expanduser()

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
        return f"http://127.0.0.1:{self.port}"
