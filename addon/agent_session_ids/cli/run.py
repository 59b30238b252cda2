"""The `agent-session-ids` command.

    agent-session-ids proxy start|stop|status|restart [--port N] [--confdir DIR] [-- MITMPROXY OPTIONS]
    agent-session-ids launch AGENT [ARGS...]     a known agent, through the proxy (started if need be)
    agent-session-ids run -- CMD [ARGS...]       any program, the same way
    agent-session-ids env [--shell sh|fish|powershell] [--unset]   lines to eval in a shell (starts the proxy)
    agent-session-ids doctor [--json]            check the set-up; each problem with its fix
    agent-session-ids service install|uninstall|status|unit   the proxy as a user service
    agent-session-ids report ...                 the usage report (as agent-session-ids-report)
    agent-session-ids top [--once] [--window 1h]  the sessions live, as htop shows processes
    agent-session-ids statusline [--session ID]  one line for Claude Code's statusLine (JSON on stdin)
    agent-session-ids check [RULES_DIR]          check a rules folder
    agent-session-ids --version                  this program's version, mitmproxy's and Python's
    agent-session-ids [--web] [MITMPROXY OPTIONS]   the proxy in the foreground (mitmdump, or mitmweb)

Bad input gets one line that says what is wrong, and a non-zero exit.
"""

from __future__ import annotations

import os
import sys

# Each command imports what it needs when it runs: the status line, run after every answer of
# Claude Code, starts from here.
from .errors import CliError


def _Parser(**kwargs):
    from .place import Parser

    return Parser(**kwargs)


def _place(args):
    """The proxy's place: --port and --listen-host, else the config file's, else 8080 on 127.0.0.1."""
    from pathlib import Path

    from .config import reach_host, read
    from .place import DEFAULT_PORT, Place

    confdir = Path(args.confdir).expanduser() if args.confdir else Place().confdir
    config = read(confdir)
    if args.port is not None and not 0 < args.port < 65536:
        raise CliError(f"--port {args.port} is not a port; give one from 1 to 65535")
    host = args.listen_host if args.listen_host is not None else config.listen_host
    if host is None:
        host = "127.0.0.1"
    reach_host(host, "--listen-host" if args.listen_host is not None else str(config.where))
    return Place(args.port or config.listen_port or DEFAULT_PORT, confdir, host)


def _common(parser) -> None:
    parser.add_argument("--port", type=int, help="the proxy's port (config.yaml's listen_port, else 8080)")
    parser.add_argument("--listen-host", help="the proxy's address (config.yaml's listen_host, else 127.0.0.1)")
    parser.add_argument("--confdir", help="mitmproxy's confdir (~/.mitmproxy): the CA, the state, config.yaml")


def foreground(args: list[str]) -> int:
    """mitmdump (or mitmweb with --web) with the addon, on 127.0.0.1 unless --listen-host or the
    config file says otherwise; not when a proxy already has the port."""
    web = "--web" in args
    if web:
        args.remove("--web")
    place = _foreground_place(args)
    if (
        not any(a == "--listen-host" or a.startswith("--listen-host=") for a in args)
        and place.listen_host == "127.0.0.1"
    ):
        args = ["--listen-host", "127.0.0.1", *args]
    _not_shadowed(place, args)
    given = _given(args)
    if given.get("listen_port") != "0" and "@" not in given.get("mode", ""):  # else mitmdump picks the port
        _port_free(place, _status_flags(args))
    from pathlib import Path

    from mitmproxy.tools import main as tools

    from .config import script_flags

    run = tools.mitmweb if web else tools.mitmdump
    script = str(Path(__file__).resolve().parent.parent / "script.py")
    return run(["-s", script, *script_flags(place.confdir), *args]) or 0


# mitmdump's flags for the options the foreground proxy's place is made of
FOREGROUND_FLAGS = {
    "-p": "listen_port",
    "--listen-port": "listen_port",
    "--listen-host": "listen_host",
    "--mode": "mode",
    "-m": "mode",
}


def _foreground_place(args: list[str]):
    """The place mitmdump will take from these arguments and the config file."""
    from argparse import Namespace

    given = _given(args)
    port = given.get("listen_port")
    if port is not None and not port.isdigit():
        raise CliError(f"listen port {port!r} is not a port; give one from 1 to 65535")
    return _place(
        Namespace(
            port=int(port) if port and port != "0" else None,
            listen_host=given.get("listen_host"),
            confdir=given.get("confdir"),
        )
    )


def _given(args: list[str]) -> dict[str, str]:
    """The options of the place among mitmdump's arguments: -p, --listen-port, --listen-host, --set NAME=VALUE."""
    given: dict[str, str] = {}
    for at, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        following = args[at + 1] if at + 1 < len(args) else ""
        if name in FOREGROUND_FLAGS:
            given[FOREGROUND_FLAGS[name]] = value if eq else following
        elif arg.startswith("-p") and arg[2:].isdigit():
            given["listen_port"] = arg[2:]
        elif arg == "--set":
            option, _, value = following.partition("=")
            given[option] = value
    return given


def _status_flags(args: list[str]) -> str:
    """`proxy status`'s flags for the place these foreground arguments name (the config file gives the rest)."""
    import shlex

    given = _given(args)
    flags = [("--port", given.get("listen_port")), ("--confdir", given.get("confdir"))]
    return "".join(f" {flag} {shlex.quote(value)}" for flag, value in flags if value)


def _port_free(place, status_flags: str) -> None:
    """One line instead of mitmdump's [Errno 98] when the port is taken: by this user's proxy, or another program."""
    from . import proxy

    if proxy.probe(place) is not None:
        raise CliError(
            f"a proxy of yours already runs on {place.url}; see it with: agent-session-ids proxy status{status_flags}"
        )
    held = proxy.port_holder(place.port, place.host)
    if held:
        raise CliError(f"{held}; end that program, or give another port: agent-session-ids -p {place.port + 1}")


def proxy_command(argv: list[str]) -> int:
    from . import proxy

    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    parser = _Parser(prog="agent-session-ids proxy")
    parser.add_argument("action", choices=("start", "stop", "status", "restart"))
    _common(parser)
    args = parser.parse_args(argv)
    place = _place(args)
    _not_shadowed(place, extra)
    if args.action in ("stop", "restart"):
        print(proxy.stop(place))
        if args.action == "stop":
            return 0
    if args.action in ("start", "restart"):
        status, started = proxy.start(place, extra)
        print(("started: " if started else "already running: ") + proxy.describe(status, place))
        print(f"log: {place.log_file}")
        if extra and not started and not _runs_with(status, place, extra):
            raise CliError(_not_applied(argv, extra, args.action))
        return 0
    answer = proxy.probe(place)
    if answer is None:
        held = proxy.port_holder(place.port, place.host)
        if held:
            raise CliError(f"{held}; use another port: agent-session-ids proxy start --port {place.port + 1}")
        raise CliError(
            proxy.supervisor.restarting(place)
            or f"no proxy answers on {place.url}; start it: agent-session-ids proxy start --port {place.port}"
        )
    print(proxy.describe(answer, place))
    return 0


def _not_shadowed(place, extra: list[str]) -> None:
    from .config import read, shadowed

    why = shadowed(read(place.confdir), extra)
    if why:
        raise CliError(why)


def _runs_with(status: dict, place, extra: list[str]) -> bool:
    """Was the running proxy started with these very options (Linux: its command line)?"""
    from .proxy import mitmdump_argv

    try:
        with open(f"/proc/{status.get('pid')}/cmdline", "rb") as f:
            running = f.read().split(b"\0")[:-1]
    except OSError:
        return False  # unseen: said to be not applied, with the command that applies them
    return [os.fsdecode(word) for word in running] == mitmdump_argv(place, extra)


def _not_applied(argv: list[str], extra: list[str], action: str) -> str:
    import shlex

    rest = list(argv)
    rest.remove(action)
    again = shlex.join(["agent-session-ids", "proxy", "restart", *rest, "--", *extra])
    if action == "restart":  # stop left it running: not ours to restart
        return f"the options {shlex.join(extra)} were NOT applied: that proxy was not started by 'proxy start'"
    return f"the options {shlex.join(extra)} were NOT applied to the running proxy; apply them with: {again}"


def launch_command(argv: list[str], named: bool) -> int:
    from . import env, proxy

    parser = _Parser(prog="agent-session-ids " + ("launch" if named else "run"))
    _common(parser)
    # the launcher's own options come first; the program and its arguments are the agent's, untouched
    at = 0
    while at < len(argv) and argv[at] != "--" and argv[at].startswith("-"):
        at += 1 if "=" in argv[at] or argv[at] in ("-h", "--help") else 2  # an option and its value
    at = min(at, len(argv))
    args = parser.parse_args(argv[:at])
    command = argv[at + 1 :] if argv[at : at + 1] == ["--"] else argv[at:]
    if not command:
        raise CliError("give the program to run: agent-session-ids " + ("launch pi" if named else "run -- CMD"))
    place = _place(args)
    if named:
        profile = env.profile_of(command[0])
        command[0] = profile.command or command[0]
        trust, extra = env.TRUST.get(profile.runtime, env.SHELL_TRUST), profile.launch_env
    else:
        trust, extra = env.SHELL_TRUST, ()
    program = env.program_of(command[0])  # a program that is not there starts no proxy
    proxy.start(place)  # a proxy that runs already is used as it is; one started stays up
    env.exec_with(place, program, command, trust, extra)
    return 0  # not reached: exec


def env_command(argv: list[str]) -> int:
    from . import env

    parser = _Parser(prog="agent-session-ids env")
    _common(parser)
    parser.add_argument("--shell", default="sh", help="sh (bash, zsh), fish or powershell")
    parser.add_argument("--unset", action="store_true", help="the lines that undo it")
    parser.add_argument("--no-start", action="store_true", help="print the lines only: start no proxy")
    args = parser.parse_args(argv)
    place = _place(args)
    if not (args.unset or args.no_start):
        env.ensure_proxy(place, args.shell)  # none answering: one is started; none can be: nothing is printed
    values = (
        dict.fromkeys([*env.PROXY_NAMES, *env.SHELL_TRUST], "") if args.unset else env.variables(place, env.SHELL_TRUST)
    )
    print("\n".join(env.shell_lines(values, args.shell, args.unset)))
    return 0


def doctor_command(argv: list[str]) -> int:
    from . import doctor

    parser = _Parser(prog="agent-session-ids doctor")
    _common(parser)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    return doctor.run(_place(args), args.json)


def service_command(argv: list[str]) -> int:
    from . import service

    parser = _Parser(prog="agent-session-ids service")
    parser.add_argument("action", choices=("install", "uninstall", "status", "unit"))
    parser.add_argument("--platform", choices=("linux", "macos"), help="with unit: whose unit to print")
    _common(parser)
    args = parser.parse_args(argv)
    place = _place(args)
    if args.action == "unit":
        print(service.unit_text(place, args.platform), end="")
        return 0
    if args.action == "status":
        ok, text = service.status(place)
        print(text)
        return 0 if ok else 1
    print(service.install(place) if args.action == "install" else service.uninstall(place))
    return 0


def report_command(argv: list[str]) -> int:
    from .report import main as report

    return report(argv)


def check_command(argv: list[str]) -> int:
    from .check import main as check

    return check(argv)


def top_command(argv: list[str]) -> int:
    from .top import main as top

    return top(argv)


def statusline_command(argv: list[str]) -> int:
    from .statusline import main as statusline

    return statusline(argv)


# each command's module is imported only when it runs: the status line must start fast
COMMANDS = {
    "proxy": proxy_command,
    "launch": lambda argv: launch_command(argv, named=True),
    "run": lambda argv: launch_command(argv, named=False),
    "env": env_command,
    "doctor": doctor_command,
    "service": service_command,
    "report": report_command,
    "top": top_command,
    "statusline": statusline_command,
    "check": check_command,
}


def _is_word(arg: str) -> bool:
    """A bare word first is a mistyped command, not the filter expression mitmdump would take it for."""
    return arg[:1].isascii() and arg[:1].isalpha() and arg.replace("-", "").isalpha()


def _unknown_command(word: str) -> str:
    import difflib

    close = difflib.get_close_matches(word, COMMANDS, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return (
        f"unknown command {word!r}; {hint}use one of: {', '.join(COMMANDS)} (see agent-session-ids --help; "
        "a mitmproxy filter expression starts with ~)"
    )


def version() -> str:
    """This program's version and mitmproxy's, from the installed metadata: mitmproxy is not imported."""
    from importlib import metadata

    from .. import __version__

    try:
        mitmproxy = metadata.version("mitmproxy")
    except metadata.PackageNotFoundError:
        mitmproxy = "not installed"
    return f"agent-session-ids {__version__} (mitmproxy {mitmproxy}, Python {sys.version.split()[0]})"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] in (["-h"], ["--help"]):
            print(__doc__.strip())
            return 0
        if args[:1] in (["--version"], ["-V"]):
            print(version())
            return 0
        command = COMMANDS.get(args[0]) if args else None
        if command is None and args and _is_word(args[0]):
            raise CliError(_unknown_command(args[0]))
        return command(args[1:]) if command is not None else foreground(args)
    except CliError as e:
        from ..shown import shown

        print(f"{e.prog}: {shown(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # its reader went away (... | head): quiet, as a pipe's writer should be
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
