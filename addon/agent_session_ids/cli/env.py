"""What a program needs to go through the proxy: the proxy variables, and the CA trust its runtime
reads. `env` prints them for a shell; `launch` and `run` set them for one process alone.

A runtime either adds a CA to its trust store (Node and Bun: NODE_EXTRA_CA_CERTS) or takes a
whole bundle in place of it (Rust, Python, curl: SSL_CERT_FILE); the bundle given is certifi's
roots (a mitmproxy dependency) plus the mitmproxy CA, so other hosts keep verifying.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..private_files import private_folder, write_private
from ..shown import shown
from .proxy import CliError, Place

if TYPE_CHECKING:
    from ..resolution.agents import AgentProfile

# how each runtime is told to trust the CA: variable -> "ca" (the mitmproxy CA) or "bundle"
TRUST: dict[str, dict[str, str]] = {
    "node": {"NODE_EXTRA_CA_CERTS": "ca"},
    "bun": {"NODE_EXTRA_CA_CERTS": "ca"},
    "rust": {"SSL_CERT_FILE": "bundle"},
    "python": {"SSL_CERT_FILE": "bundle", "REQUESTS_CA_BUNDLE": "bundle"},
}
# every runtime at once, for a shell (env)
SHELL_TRUST = {"NODE_EXTRA_CA_CERTS": "ca", "SSL_CERT_FILE": "bundle", "REQUESTS_CA_BUNDLE": "bundle"}
NO_PROXY = "localhost,127.0.0.1,::1"
# Each proxy variable is set (and unset) in both spellings: curl, Python and Node's undici read the
# lower-case one first, Go the upper-case one, so a spelling left to the user wins for some programs.
# ALL_PROXY is left alone: every client reads it only for a scheme without its own variable.
PROXY = {"HTTPS_PROXY": "url", "HTTP_PROXY": "url", "NO_PROXY": "loopback"}  # variable -> what it holds
PROXY_NAMES = tuple(spelling for name in PROXY for spelling in (name, name.lower()))
SHELLS = ("sh", "fish", "powershell")


def bundle_data(place: Place) -> bytes:
    """certifi's roots plus the mitmproxy CA. Raises OSError."""
    import certifi

    return Path(certifi.where()).read_bytes().rstrip(b"\n") + b"\n" + place.ca_cert.read_bytes()


def bundle(place: Place) -> Path:
    """The bundle, written next to the proxy's files when either part changed."""
    path = place.folder / "ca-bundle.pem"
    data = bundle_data(place)
    try:
        if path.read_bytes() == data:
            return path
    except OSError:
        pass
    try:  # a fresh confdir has the CA but not yet the state folder
        private_folder(place.folder)
        write_private(path, data)
    except OSError as e:
        raise CliError(f"cannot write {shown(str(path))}: {shown(e.strerror or str(e))}") from None
    return path


def variables(place: Place, trust: dict[str, str]) -> dict[str, str]:
    """The proxy and trust variables, for a proxy that has made its CA (it has started once)."""
    if not place.ca_cert.is_file():
        raise CliError(
            f"no mitmproxy CA at {shown(str(place.ca_cert))} yet; start the proxy once: agent-session-ids proxy start"
        )
    files = {"ca": os.path.abspath(place.ca_cert)}  # the program may run in another folder
    if "bundle" in trust.values():
        files["bundle"] = os.path.abspath(bundle(place))
    held = {"url": place.url, "loopback": NO_PROXY}
    out = {spelling: held[kind] for name, kind in PROXY.items() for spelling in (name, name.lower())}
    out.update({name: files[kind] for name, kind in trust.items()})
    return out


def ensure_proxy(place: Place, shell: str) -> None:
    """A proxy answering on the place, started when none answers (as `launch` does), so that an agent
    in a shell set up by `env` never meets a refused connection. When none can be started, CliError:
    `env` then prints nothing, and the shell's programs go direct rather than fail."""
    from . import proxy  # nothing of mitmproxy: the proxy runs in processes of its own

    known_shell(shell)  # a mistyped shell starts nothing
    try:
        proxy.start(place)
    except CliError as e:
        raise CliError(f"{e}; no proxy variable was set: this shell's programs go direct") from None


# how a profile has the proxy at each login, without a service manager: shell -> (file, line)
PROFILE_LINES = {
    "bash": ("~/.bashrc", 'eval "$(agent-session-ids env{flags})"'),
    "zsh": ("~/.zshrc", 'eval "$(agent-session-ids env{flags})"'),
    "fish": ("~/.config/fish/config.fish", "agent-session-ids env --shell fish{flags} | source"),
    "pwsh": ("$PROFILE", "agent-session-ids env --shell powershell{flags} | Out-String | Invoke-Expression"),
}


def profile_line(place: Place, shell_path: str) -> str:
    """Where and what to add to the user's shell profile (their $SHELL; bash's form when unknown)."""
    import shlex

    where, line = PROFILE_LINES.get(os.path.basename(shell_path or ""), PROFILE_LINES["bash"])
    default = Place()
    flags = (f" --port {place.port}" if place.port != default.port else "") + (
        f" --confdir {shlex.quote(str(place.confdir))}" if place.confdir != default.confdir else ""
    )
    return f"add this line to {where}: {line.format(flags=flags)}"


def known_shell(shell: str) -> None:
    if shell not in SHELLS:
        raise CliError(f"unknown shell {shell!r}; use one of: {', '.join(SHELLS)}")


def shell_lines(values: dict[str, str], shell: str, unset: bool) -> list[str]:
    known_shell(shell)
    quote = QUOTE[shell]
    lines = []
    for name, value in values.items():
        if shell == "fish":
            lines.append(f"set -e {name}" if unset else f"set -gx {name} {quote(value)}")
        elif shell == "powershell":
            lines.append(
                f"Remove-Item Env:{name} -ErrorAction SilentlyContinue" if unset else f"$env:{name} = {quote(value)}"
            )
        else:
            lines.append(f"unset {name}" if unset else f"export {name}={quote(value)}")
    return lines


def _quote_sh(value: str) -> str:
    """POSIX single quotes: nothing inside is special; a ' closes, so it is written '\\''."""
    return "'" + value.replace("'", "'\\''") + "'"


def _quote_fish(value: str) -> str:
    """fish single quotes: \\' and \\\\ are the only escapes inside (fish docs, "Quotes")."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# PowerShell's single-quote-character: ' and U+2018 to U+201B; inside a verbatim string any of them
# is written twice (PowerShell Language Specification, 2.3.5.2 "String literals")
POWERSHELL_QUOTES = "'\u2018\u2019\u201a\u201b"


def _quote_powershell(value: str) -> str:
    return "'" + "".join(ch * 2 if ch in POWERSHELL_QUOTES else ch for ch in value) + "'"


QUOTE = {"sh": _quote_sh, "fish": _quote_fish, "powershell": _quote_powershell}


def profile_of(name: str) -> AgentProfile:
    from ..resolution import agents  # a tenth of a second: for launch, not for env

    for profile in agents.PROFILES:
        if profile.name == name or profile.command == name:
            return profile
    known = ", ".join(p.command or p.name for p in agents.PROFILES)
    raise CliError(f"unknown agent {name!r}; launch one of: {known}, or any program with: agent-session-ids run -- CMD")


def program_of(name: str) -> str:
    """The program's path, found before anything is started for it."""
    program = shutil.which(name)
    if program is None:
        raise CliError(f"{name!r} is not on PATH; install it, or give its full path")
    return program


def exec_with(
    place: Place, program: str, argv: list[str], trust: dict[str, str], extra: tuple[tuple[str, str], ...] = ()
) -> None:
    """Replace this process by `program` (argv) with the proxy's variables: its exit code, its
    terminal and the signals sent to it are then its own."""
    env = {**os.environ, **variables(place, trust), **dict(extra)}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(program, argv, env)
