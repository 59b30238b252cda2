"""Claude Code and Codex CLI for end-to-end tests: install, command, environment, session files.

Plain functions, no pytest inside (like ``harness``). Both clients are native binaries shipped in
npm packages; they are installed with ``harness.npm_install`` into the same cache as pi.

    from agent_clients import claude_command, claude_env, codex_exec_command, codex_env

    with Mitmdump(scripts=[STANDIN]) as proxy:
        env = claude_env(proxy, home)                        # HOME, proxy, CA, base URL, quiet
        subprocess.run(claude_command() + ["-p", "hi [[bash: echo hi]]"], env=env, cwd=work)

        env = codex_env(proxy, home)                         # also writes $CODEX_HOME/config.toml
        subprocess.run(codex_exec_command("hi [[bash: echo hi]]"), env=env, cwd=work)

What was checked with these versions (see ``/tmp/clients_facts.md`` of the session that wrote this):

- Claude Code 2.1.197 sends ``POST /api/v1/messages?beta=true`` (HTTP/1.1) to
  ``$ANTHROPIC_BASE_URL`` = ``https://openrouter.ai/api``, with header ``X-Claude-Code-Session-Id``
  and body ``metadata.user_id`` (a JSON string with ``session_id``), both the session file's uuid.
  Its Bash tool is ``Bash``; in ``-p`` mode it runs only when allowed (we allow it in
  ``~/.claude/settings.json``; ``--dangerously-skip-permissions`` is refused as root unless
  ``IS_SANDBOX=1``).
- Codex 0.169.0 sends ``POST /api/v1/responses`` over HTTP/2 with header ``session-id`` (and
  ``thread-id``, ``x-client-request-id``, ``x-codex-turn-metadata``, body ``prompt_cache_key``,
  ``client_metadata.session_id``), all the rollout file's uuid. Its shell tool is
  ``exec_command`` with ``{"cmd": ...}``.
- Claude Code 2.1.332 and Codex 0.171.0, the newest, send the same (see the docstring of
  tests/e2e/test_beyond_process.py for user agents and OpenCode Zen); Claude 2.1.332 sends no
  title-generation request in ``-p`` mode. Both versions of each are tested (``CLAUDE_VERSIONS``,
  ``CODEX_VERSIONS``); ``use_claude``/``use_codex`` select the one ``run_claude`` & co. run.
- ``*_for_other_user`` commands run from copies another user can read (``harness.OtherUser``).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import harness
from harness import Mitmdump, agent_env, node_path, npm_install

CLAUDE_NAME = "@anthropic-ai/claude-code"
CODEX_NAME = "@openai/codex"
#: Every version under test, oldest first. The e2e fixtures ``claude`` and ``codex`` are
#: parametrised over these; the newest is last (``CLAUDE_NEWEST``, ``CODEX_NEWEST``).
CLAUDE_VERSIONS = ("2.1.197", "2.1.332")
CODEX_VERSIONS = ("0.169.0", "0.171.0")
CLAUDE_NEWEST = CLAUDE_VERSIONS[-1]
CODEX_NEWEST = CODEX_VERSIONS[-1]
#: The version used when none is given and none was selected with ``use_claude``/``use_codex``.
CLAUDE_PACKAGE = (CLAUDE_NAME, CLAUDE_VERSIONS[0])
CODEX_PACKAGE = (CODEX_NAME, CODEX_VERSIONS[0])

_selected: dict[str, str] = {"claude": CLAUDE_PACKAGE[1], "codex": CODEX_PACKAGE[1]}


def use_claude(version: str) -> str:
    """Make ``version`` the Claude Code that ``claude_command``, ``run_claude`` ... run when
    no version is passed; returns the previous one (for a fixture to restore)."""
    if version not in CLAUDE_VERSIONS:
        raise ValueError(f"unknown Claude Code version {version!r}; known: {CLAUDE_VERSIONS}")
    previous, _selected["claude"] = _selected["claude"], version
    return previous


def use_codex(version: str) -> str:
    """Like ``use_claude``, for Codex CLI."""
    if version not in CODEX_VERSIONS:
        raise ValueError(f"unknown Codex version {version!r}; known: {CODEX_VERSIONS}")
    previous, _selected["codex"] = _selected["codex"], version
    return previous


def selected_claude() -> str:
    return _selected["claude"]


def selected_codex() -> str:
    return _selected["codex"]


#: The gateway the clients are pointed at (the stand-in answers it).
CLAUDE_BASE_URL = "https://openrouter.ai/api"  # Claude appends /v1/messages
CODEX_BASE_URL = "https://openrouter.ai/api/v1"  # Codex appends /responses
CODEX_PROVIDER = "openrouter"
CODEX_MODEL = "openai/gpt-4o-mini"

#: Environment that keeps Claude Code from phoning home. With these, one ``claude -p`` run makes
#: only its model requests: no title-generation request on the gateway, and nothing to
#: api.anthropic.com (without them it also calls /api/eval/sdk-*, /api/claude_cli/bootstrap,
#: /api/claude_code_penguin_mode, /mcp-registry/v0/servers, /api/claude_code/organizations/
#: metrics_enabled, /api/event_logging/v2/batch). CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC alone
#: does all of that; the others are belt and braces.
CLAUDE_QUIET_ENV = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
}

#: ``codex exec`` flags: run outside a git repo, and run shell tool calls without sandbox or
#: approval (the bundled bubblewrap sandbox is not needed; ``-s danger-full-access`` works too).
CODEX_EXEC_FLAGS = ["--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox"]


# --------------------------------------------------------------------------- install


def claude_prefix(version: str | None = None) -> Path:
    """Install Claude Code ``version`` (default: the selected one) into the npm cache (once);
    return the install prefix."""
    return npm_install(CLAUDE_NAME, version or _selected["claude"])


def codex_prefix(version: str | None = None) -> Path:
    """Install Codex CLI ``version`` (default: the selected one) into the npm cache (once);
    return the install prefix."""
    return npm_install(CODEX_NAME, version or _selected["codex"])


def claude_binary(version: str | None = None) -> Path:
    """``node_modules/.bin/claude``: npm's link to the native ``bin/claude.exe``.

    Run through this link, the process's ``comm`` is ``claude`` (as for a global npm install);
    its ``/proc/<pid>/exe`` is ``.../claude-code/bin/claude.exe``.
    """
    path = claude_prefix(version) / "node_modules" / ".bin" / "claude"
    if not path.exists():
        raise RuntimeError(f"Claude Code has no {path}")
    return path


def codex_js(version: str | None = None) -> Path:
    """The npm package's Node launcher ``@openai/codex/bin/codex.js``."""
    path = codex_prefix(version) / "node_modules" / "@openai" / "codex" / "bin" / "codex.js"
    if not path.exists():
        raise RuntimeError(f"Codex has no {path}")
    return path


def codex_binary(version: str | None = None) -> Path:
    """The native Codex binary (from the ``@openai/codex-linux-x64`` optional dependency)."""
    base = codex_prefix(version) / "node_modules" / "@openai"
    found = sorted(base.glob("codex-*/vendor/*/bin/codex"))
    if not found:
        raise RuntimeError(f"no native codex binary under {base}")
    return found[0]


def claude_command(version: str | None = None) -> list[str]:
    """argv prefix that runs Claude Code (the native binary; no Node involved)."""
    return [str(claude_binary(version))]


def codex_command(version: str | None = None) -> list[str]:
    """argv prefix that runs Codex as npm installs it: ``node codex.js``.

    With Node >= 22.15 (the wheel's Node 24) the launcher ``execve``s the native binary in
    the SAME process, so the process that owns the socket has ``comm`` ``codex`` and its exe is
    the native binary; its parent is whoever started ``node``.
    """
    return [node_path(), str(codex_js(version))]


def codex_exec_command(
    prompt: str | None = None,
    *,
    resume: str | None = None,
    flags: list[str] | tuple[str, ...] = (),
    version: str | None = None,
) -> list[str]:
    """Full argv of ``codex exec [resume <id>|--last] <CODEX_EXEC_FLAGS> <flags> <prompt>``.

    ``resume``: None for a new session, ``"--last"`` for ``codex exec resume --last`` (the newest
    session of the cwd), or a session uuid.
    """
    argv = codex_command(version) + ["exec"]
    if resume is not None:
        argv += ["resume"] + (["--last"] if resume == "--last" else [])
    argv += CODEX_EXEC_FLAGS + list(flags)
    if resume not in (None, "--last"):
        argv.append(resume)
    if prompt is not None:
        argv.append(prompt)
    return argv


def client_version(argv: list[str], env: Mapping[str, str] | None = None, timeout: float = 60) -> str:
    """``<argv> --version`` output; raises RuntimeError with the exact error if it fails."""
    proc = subprocess.run(
        argv + ["--version"],
        env=dict(env) if env else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{argv[-1]} --version failed ({proc.returncode}): {proc.stdout.strip()} {proc.stderr.strip()}"
        )
    return proc.stdout.strip()


# --------------------------------------------------------------------------- environment


_apply = harness.apply_env


def claude_config_dir(home: str | os.PathLike) -> Path:
    """``<home>/.claude`` (Claude's config dir when ``CLAUDE_CONFIG_DIR`` is unset)."""
    return Path(home) / ".claude"


def claude_env(
    proxy: Mitmdump,
    home: str | os.PathLike,
    extra: Mapping[str, str | None] | None = None,
    *,
    quiet: bool = True,
    allow_bash: bool = True,
    base_url: str = CLAUDE_BASE_URL,
) -> dict[str, str]:
    """Environment for Claude Code through ``proxy`` (``harness.agent_env`` plus Claude's part).

    HOME=home, HTTPS_PROXY, NODE_EXTRA_CA_CERTS (Claude trusts the CA through it),
    ANTHROPIC_BASE_URL=base_url, the fake ANTHROPIC_API_KEY, and (``quiet``) CLAUDE_QUIET_ENV.
    ``allow_bash`` writes ``<home>/.claude/settings.json`` = ``{"permissions": {"allow":
    ["Bash"]}}`` (merged into an existing file), so ``claude -p`` runs the Bash tool without a
    permission flag. ``extra`` is applied last (a None value deletes).
    """
    env = agent_env(proxy, home, pi_version=None)
    env["ANTHROPIC_BASE_URL"] = base_url
    if quiet:
        env.update(CLAUDE_QUIET_ENV)
    if allow_bash:
        config = claude_config_dir(home)
        config.mkdir(parents=True, exist_ok=True)
        settings_path = config / "settings.json"
        settings = {}
        if settings_path.exists():
            try:
                settings = json.loads(settings_path.read_text())
            except ValueError:
                settings = {}
        allow = settings.setdefault("permissions", {}).setdefault("allow", [])
        if "Bash" not in allow:
            allow.append("Bash")
        settings_path.write_text(json.dumps(settings, indent=2))
    return _apply(env, extra)


def codex_home(home: str | os.PathLike) -> Path:
    """``<home>/.codex`` (the ``CODEX_HOME`` that ``codex_env`` sets)."""
    return Path(home) / ".codex"


def codex_config_toml(
    *,
    provider: str = CODEX_PROVIDER,
    base_url: str = CODEX_BASE_URL,
    model: str = CODEX_MODEL,
    env_key: str = "OPENROUTER_API_KEY",
    quiet: bool = True,
) -> str:
    """config.toml declaring a Responses-API provider at ``base_url`` and selecting it.

    ``quiet`` turns off what makes Codex call home: without it one ``codex exec`` also sends
    GET api.github.com/repos/openai/plugins, GET chatgpt.com/backend-api/plugins/export/curated
    and POST ab.chatgpt.com/otlp/v1/metrics.
    """
    lines = [
        f'model = "{model}"',
        f'model_provider = "{provider}"',
    ]
    if quiet:
        lines += [
            "check_for_update_on_startup = false",
            "",
            "[analytics]",
            "enabled = false",
            "",
            "[features]",
            "plugins = false",
            "remote_plugin = false",
            "apps = false",
        ]
    lines += [
        "",
        f"[model_providers.{provider}]",
        f'name = "{provider}"',
        f'base_url = "{base_url}"',
        f'env_key = "{env_key}"',
        'wire_api = "responses"',
        "",
    ]
    return "\n".join(lines)


def codex_env(
    proxy: Mitmdump,
    home: str | os.PathLike,
    extra: Mapping[str, str | None] | None = None,
    *,
    quiet: bool = True,
    **config,
) -> dict[str, str]:
    """Environment for Codex through ``proxy``; writes ``<home>/.codex/config.toml``.

    HOME=home, CODEX_HOME=<home>/.codex (created: Codex refuses a CODEX_HOME that does not
    exist), HTTPS_PROXY, SSL_CERT_FILE (Codex trusts the CA through it), the fake
    OPENROUTER_API_KEY. ``config`` goes to ``codex_config_toml`` (provider, base_url, model,
    env_key). ``extra`` is applied last (a None value deletes).
    """
    env = agent_env(proxy, home, pi_version=None)
    ch = codex_home(home)
    ch.mkdir(parents=True, exist_ok=True)
    (ch / "config.toml").write_text(codex_config_toml(quiet=quiet, **config))
    env["CODEX_HOME"] = str(ch)
    return _apply(env, extra)


# --------------------------------------------------------------------------- running


def _run(argv: list[str], env: Mapping[str, str], cwd, timeout: float, input: str | None):
    return subprocess.run(
        argv,
        env=dict(env),
        cwd=str(cwd),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_claude(
    args: list[str], env: Mapping[str, str], cwd: str | os.PathLike, timeout: float = 90, input: str | None = None
) -> subprocess.CompletedProcess:
    """Run ``claude <args>`` to completion (e.g. ``["-p", "hi"]``, ``["-c", "-p", "more"]``)."""
    return _run(claude_command() + list(args), env, cwd, timeout, input)


def run_codex(
    args: list[str], env: Mapping[str, str], cwd: str | os.PathLike, timeout: float = 90, input: str | None = None
) -> subprocess.CompletedProcess:
    """Run ``codex <args>`` to completion; see ``codex_exec_command`` for a whole ``exec`` argv."""
    return _run(codex_command() + list(args), env, cwd, timeout, input)


def run_codex_exec(
    prompt: str,
    env: Mapping[str, str],
    cwd: str | os.PathLike,
    *,
    resume: str | None = None,
    flags=(),
    timeout: float = 90,
):
    """Run ``codex exec`` (``resume``: None, "--last" or a uuid) to completion."""
    return _run(codex_exec_command(prompt, resume=resume, flags=flags), env, cwd, timeout, None)


# --------------------------------------------------------------------------- session files

_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _java_hash_base36(text: str) -> str:
    h = 0
    data = text.encode("utf-16-le")
    for i in range(0, len(data), 2):
        h = ((h << 5) - h + int.from_bytes(data[i : i + 2], "little")) & 0xFFFFFFFF
    if h >= 1 << 31:
        h -= 1 << 32
    n, digits = abs(h), ""
    while True:
        n, r = divmod(n, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + digits
        if n == 0:
            return digits


def claude_project_dir_name(cwd: str | os.PathLike) -> str:
    """Claude's folder name for a cwd: every UTF-16 code unit that is not [A-Za-z0-9] -> '-'.

    Names over 200 chars become ``<first 200>-<base36 |int32 hash|>`` (the hash is NOT verified
    against a real client; ``claude_session_files`` matches long names on the prefix instead).
    """
    text = str(cwd)
    units = text.encode("utf-16-le")
    out = []
    for i in range(0, len(units), 2):
        code = int.from_bytes(units[i : i + 2], "little")
        ch = chr(code) if code < 0xD800 or code > 0xDFFF else "-"
        out.append(ch if re.match(r"[A-Za-z0-9]", ch) else "-")
    name = "".join(out)
    if len(name) > 200:
        name = name[:200] + "-" + _java_hash_base36(text)
    return name


def claude_project_dir(home: str | os.PathLike, cwd: str | os.PathLike) -> Path:
    """``<home>/.claude/projects/<claude_project_dir_name(cwd)>``."""
    return claude_config_dir(home) / "projects" / claude_project_dir_name(cwd)


def claude_session_files(home: str | os.PathLike, cwd: str | os.PathLike) -> list[Path]:
    """Top-level ``<uuid>.jsonl`` session files of ``cwd``, oldest first (by mtime)."""
    folder = claude_project_dir(home, cwd)
    folders = [folder]
    if len(folder.name) > 200:
        folders = sorted(folder.parent.glob(folder.name[:200] + "-*"))
    files = [p for d in folders if d.is_dir() for p in d.glob("*.jsonl") if _UUID_RE.fullmatch(p.stem)]
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name))


def claude_session_id(path: str | os.PathLike) -> str:
    """The session uuid of a Claude session file (its file name stem)."""
    return Path(path).stem


def claude_pid_files(home: str | os.PathLike) -> list[Path]:
    """``<home>/.claude/sessions/<pid>.json`` of RUNNING Claude processes (removed at exit):
    ``{"pid", "sessionId", "cwd", "startedAt", "procStart", "version", "kind", "entrypoint",
    "name", "nameSource"?, "updatedAt"?}``."""
    folder = claude_config_dir(home) / "sessions"
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def codex_session_files(home: str | os.PathLike) -> list[Path]:
    """Rollout files ``<home>/.codex/sessions/YYYY/MM/DD/rollout-<local time>-<uuid>.jsonl``,
    oldest first (by name: time, then uuid)."""
    folder = codex_home(home) / "sessions"
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*/*/*/rollout-*.jsonl"), key=lambda p: p.name)


def codex_session_meta(path: str | os.PathLike) -> dict:
    """``payload`` of the first line (``{"type": "session_meta", "payload": {"id", "session_id",
    "cwd", "timestamp", "originator", "cli_version", "source", ...}}``)."""
    with open(path, encoding="utf-8") as f:
        first = json.loads(f.readline())
    if first.get("type") != "session_meta":
        raise ValueError(f"{path}: first line is {first.get('type')!r}, not session_meta")
    return first["payload"]


def codex_session_id(path: str | os.PathLike) -> str:
    """The session uuid of a rollout file (the uuid at the end of its name)."""
    match = re.search(_UUID_RE.pattern + r"$", Path(path).stem)
    if not match:
        raise ValueError(f"no uuid in {path}")
    return match.group(0)


def codex_session_index(home: str | os.PathLike) -> list[dict]:
    """Lines of ``<home>/.codex/session_index.jsonl`` (``{"id", "thread_name", "updated_at"}``;
    the last line of an id wins). ``codex exec`` writes none; a name is set by the TUI's
    ``/rename`` or the app-server's ``thread/name/set`` (see ``codex_set_thread_name``)."""
    return harness.read_jsonl(codex_home(home) / "session_index.jsonl")


def codex_set_thread_name(home: str | os.PathLike, thread_id: str, name: str, timeout: float = 30) -> dict:
    """Name a Codex thread without the TUI: ``codex app-server`` (JSON-RPC over stdio),
    ``initialize`` then ``thread/name/set {threadId, name}``. Codex appends
    ``{"id", "thread_name", "updated_at"}`` to ``$CODEX_HOME/session_index.jsonl`` and sets
    ``threads.name`` in ``state_5.sqlite``; the rollout file gets no record. No network is used.
    Returns the ``thread/name/updated`` notification."""
    env = {k: v for k, v in os.environ.items() if not harness._drop(k)}
    env.update({"HOME": str(home), "CODEX_HOME": str(codex_home(home))})
    proc = subprocess.Popen(
        [str(codex_binary()), "app-server"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:

        def send(obj):
            proc.stdin.write(json.dumps(obj) + "\n")
            proc.stdin.flush()

        send(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {"clientInfo": {"name": "agent-session-ids-tests", "version": "1"}},
            }
        )
        send({"jsonrpc": "2.0", "method": "initialized"})
        send({"jsonrpc": "2.0", "id": 2, "method": "thread/name/set", "params": {"threadId": thread_id, "name": name}})
        # Read lines in a thread: select() on a buffered text pipe misses lines already buffered.
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout] + [lines.put(None)], daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("id") == 2 and "error" in msg:
                raise RuntimeError(f"thread/name/set failed: {msg['error']}")
            if msg.get("method") == "thread/name/updated":
                return msg["params"]
        raise TimeoutError("codex app-server did not confirm thread/name/set")
    finally:
        proc.stdin.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- opencode and Oh My Pi
#
# Checked with these versions (see ``/tmp/more_agents.md`` of the session that wrote this):
#
# - opencode 1.18.33 (npm ``opencode-ai``: a native Bun-built binary from the
#   ``opencode-linux-x64`` optional dependency; comm ``opencode``). ``opencode run -m
#   openrouter/<model>`` sends ``POST /api/v1/chat/completions`` with ``x-session-affinity`` and
#   ``x-session-id`` = its ``ses_...`` id; ``-m opencode/<model>`` sends ``POST /zen/v1/responses``
#   with ``x-opencode-session`` (and body ``prompt_cache_key``). Its session row (table
#   ``session``, column ``directory`` = the process's ``$PWD``) is in
#   ``$XDG_DATA_HOME/opencode/opencode.db`` (default ``~/.local/share/opencode``). At start it also
#   GETs ``registry.npmjs.org/@opencode-ai%2fplugin`` (the stand-in answers 404; harmless).
# - Oh My Pi 18.2.3 (npm ``@oh-my-pi/pi-coding-agent``: ``dist/cli.js`` with ``#!/usr/bin/env
#   bun``; Bun comes from npm ``bun``). 18.3.4, the newest, does not install: ``npm error
#   notarget No matching version found for @oh-my-pi/omp-stats@18.3.4``. (Checked again with
#   ``npm view``: it pins its 11 ``@oh-my-pi/*`` siblings at exactly 18.3.4 and the registry has
#   none of them at 18.3.4, the newest being 18.2.11, 18.2.10 for pi-natives, 18.2.9 for pi-tui
#   and pi-utils. Forced onto those with npm ``overrides``, 18.3.4 fails at start: ``SyntaxError:
#   Export named 'appleFmAvailability' not found in module .../pi-natives/native/index.js``.
#   So the tests keep 18.2.3.) Its process sets its
#   title, so ``comm`` is ``omp`` (exe ``bun.exe``). Toward OpenRouter it sends
#   ``POST /api/v1/responses`` with body ``prompt_cache_key`` and ``session_id`` = the session
#   uuid; the file is ``~/.omp/agent/sessions/<encode_omp(cwd)>/<time>_<uuid>.jsonl``.

OPENCODE_PACKAGE = ("opencode-ai", "1.18.33")
OMP_PACKAGE = ("@oh-my-pi/pi-coding-agent", "18.2.3")
BUN_PACKAGE = ("bun", "1.4.5")

OPENCODE_OPENROUTER_MODEL = "openrouter/openai/gpt-4o-mini"
OPENCODE_ZEN_MODEL = "opencode/gpt-5-nano"
OMP_MODEL = "openrouter/openai/gpt-4o-mini"

#: Keeps opencode from updating itself, fetching models.dev or sharing sessions.
OPENCODE_QUIET_ENV = {
    "OPENCODE_DISABLE_AUTOUPDATE": "1",
    "OPENCODE_DISABLE_MODELS_FETCH": "1",
    "OPENCODE_DISABLE_SHARE": "1",
}


def opencode_binary() -> Path:
    """``node_modules/.bin/opencode`` -> ``opencode-ai/bin/opencode.exe`` (native; no Node)."""
    path = npm_install(*OPENCODE_PACKAGE) / "node_modules" / ".bin" / "opencode"
    if not path.exists():
        raise RuntimeError(f"opencode has no {path}")
    return path


def opencode_command() -> list[str]:
    return [str(opencode_binary())]


def opencode_env(
    proxy: Mitmdump, home: str | os.PathLike, cwd: str | os.PathLike, extra: Mapping[str, str | None] | None = None
) -> dict[str, str]:
    """Environment for opencode through ``proxy``: ``agent_env`` + OPENCODE_QUIET_ENV, and
    ``PWD=cwd`` (opencode records ``$PWD`` as the session's directory, not the real cwd)."""
    env = agent_env(proxy, home, pi_version=None)
    env.update(OPENCODE_QUIET_ENV)
    env["PWD"] = str(cwd)
    return _apply(env, extra)


def run_opencode(
    args: list[str], env: Mapping[str, str], cwd: str | os.PathLike, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run ``opencode <args>`` (e.g. ``["run", "-m", OPENCODE_OPENROUTER_MODEL, "hi"]``)."""
    return _run(opencode_command() + list(args), env, cwd, timeout, None)


def opencode_db(home: str | os.PathLike) -> Path:
    return Path(home) / ".local" / "share" / "opencode" / "opencode.db"


def opencode_sessions(home: str | os.PathLike) -> list[tuple[str, str]]:
    """``(id, directory)`` of every session in opencode's database, oldest first."""
    import sqlite3

    db = opencode_db(home)
    if not db.exists():
        return []
    conn = sqlite3.connect(str(db))
    try:
        return list(conn.execute("SELECT id, directory FROM session ORDER BY time_created"))
    finally:
        conn.close()


def bun_binary() -> Path:
    """The ``bun`` executable of npm ``bun`` (``node_modules/bun/bin/bun.exe``)."""
    path = npm_install(*BUN_PACKAGE) / "node_modules" / "bun" / "bin" / "bun.exe"
    if not path.exists():
        raise RuntimeError(f"bun has no {path}")
    return path


def omp_cli() -> Path:
    path = npm_install(*OMP_PACKAGE) / "node_modules" / "@oh-my-pi" / "pi-coding-agent" / "dist" / "cli.js"
    if not path.exists():
        raise RuntimeError(f"Oh My Pi has no {path}")
    return path


def omp_command() -> list[str]:
    """``bun <omp cli.js>``: the process retitles itself, so its ``comm`` is ``omp``."""
    return [str(bun_binary()), str(omp_cli())]


def omp_env(proxy: Mitmdump, home: str | os.PathLike, extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """Environment for Oh My Pi through ``proxy`` (``agent_env``, Bun's folder first on PATH)."""
    env = agent_env(proxy, home, pi_version=None)
    env["PATH"] = str(bun_binary().parent) + os.pathsep + env["PATH"]
    return _apply(env, extra)


def run_omp(
    args: list[str], env: Mapping[str, str], cwd: str | os.PathLike, timeout: float = 150
) -> subprocess.CompletedProcess:
    """Run ``omp <args>`` (e.g. ``["-p", "--model", OMP_MODEL, "--no-lsp", "hi"]``)."""
    return _run(omp_command() + list(args), env, cwd, timeout, None)


def omp_session_files(home: str | os.PathLike) -> list[Path]:
    """``<home>/.omp/agent/sessions/*/<time>_<uuid>.jsonl``, oldest first (by name)."""
    folder = Path(home) / ".omp" / "agent" / "sessions"
    return sorted(folder.glob("*/*.jsonl"), key=lambda p: p.name) if folder.is_dir() else []


def omp_session_id(path: str | os.PathLike) -> str:
    match = re.search(_UUID_RE.pattern + r"$", Path(path).stem)
    if not match:
        raise ValueError(f"no uuid in {path}")
    return match.group(0)


# --------------------------------------------------------------------------- Qwen Code
#
# Checked with Qwen Code 0.24.4 (npm ``@qwen-code/qwen-code``: a Node bundle, ``cli-entry.js``;
# the wheel's Node 24 runs it) through a mitmdump with the addon and the stand-in:
#
# - ``qwen --auth-type openai -p <prompt>`` with ``OPENAI_BASE_URL``, ``OPENAI_API_KEY`` and
#   ``OPENAI_MODEL`` sends ``POST <base>/chat/completions`` (streamed), user agent
#   ``QwenCode/0.24.4 (linux; x64)``, and no session id of its own (no header, no body field).
# - Its shell tool is ``run_shell_command`` ``{"command": ...}`` (not one of the stand-in's
#   SHELL_TOOLS, so a scripted call is ``[[tool: run_shell_command {...}]]``, see ``qwen_shell``);
#   in ``-p`` mode it runs only with ``--yolo`` (or ``--approval-mode yolo``).
# - Its session file is ``~/.qwen/projects/<cwd, every [^A-Za-z0-9] -> '-'>/chats/<uuid>.jsonl``,
#   every record holding ``sessionId`` = that uuid (and ``cwd``, ``uuid``, ``parentUuid``,
#   ``type``). ``-c`` continues the newest session of the cwd and ``-r <uuid>`` a given one (both
#   append to its file); ``--session-id <uuid>`` starts a new session with that uuid.
# - After a turn that ends on the user's query (no tool call in it), the same process sends a
#   background request with the whole conversation and a last user message "Managed memory has
#   TWO directories. ..." (its memory extractor; its answer is logged into the same session file
#   as ``ui_telemetry``). A turn that ran a tool sends none in ``-p`` mode.
# - ``cli-entry.js`` starts a child ``node --expose-gc cli.js ...`` that makes the requests; under
#   Node 24 both processes' ``comm`` is ``MainThread``. The session file is created empty ~0.3 s
#   before its first record, and records are written asynchronously: a run's new user record
#   sometimes lands just after the request that carries it.
# - Without ``QWEN_USAGE_STATISTICS_ENABLED=false`` it also POSTs its RUM telemetry to
#   ``gb4w8c3ygj-default-sea.rum.aliyuncs.com`` (twice per run).

QWEN_PACKAGE = ("@qwen-code/qwen-code", "0.24.4")
QWEN_OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"  # Qwen appends /chat/completions
QWEN_ZEN_BASE_URL = "https://opencode.ai/zen/v1"
QWEN_OPENROUTER_MODEL = "openai/gpt-4o-mini"
QWEN_ZEN_MODEL = "gpt-5-nano"
QWEN_SHELL_TOOL = "run_shell_command"
#: Flags every ``run_qwen`` passes first: the OpenAI-compatible provider from the environment.
QWEN_AUTH_FLAGS = ["--auth-type", "openai"]
#: Keeps Qwen Code from sending its usage statistics (RUM telemetry to aliyuncs.com).
QWEN_QUIET_ENV = {
    "QWEN_USAGE_STATISTICS_ENABLED": "false",
    "QWEN_CODE_SUPPRESS_YOLO_WARNING": "1",
}


def qwen_prefix() -> Path:
    return npm_install(*QWEN_PACKAGE)


def qwen_cli() -> Path:
    """``@qwen-code/qwen-code/cli-entry.js`` (the package's ``qwen`` bin)."""
    path = qwen_prefix() / "node_modules" / "@qwen-code" / "qwen-code" / "cli-entry.js"
    if not path.exists():
        raise RuntimeError(f"Qwen Code has no {path}")
    return path


def qwen_command() -> list[str]:
    """argv prefix that runs Qwen Code with the wheel's Node 24."""
    return [node_path(), str(qwen_cli())]


def qwen_env(
    proxy: Mitmdump,
    home: str | os.PathLike,
    extra: Mapping[str, str | None] | None = None,
    *,
    base_url: str = QWEN_OPENROUTER_BASE_URL,
    model: str = QWEN_OPENROUTER_MODEL,
    quiet: bool = True,
) -> dict[str, str]:
    """Environment for Qwen Code through ``proxy``: ``agent_env`` (HOME, proxy, NODE_EXTRA_CA_CERTS,
    the fake OPENAI_API_KEY), ``OPENAI_BASE_URL=base_url``, ``OPENAI_MODEL=model`` and (``quiet``)
    QWEN_QUIET_ENV. ``extra`` is applied last (a None value deletes)."""
    env = agent_env(proxy, home, pi_version=None)
    env["OPENAI_BASE_URL"] = base_url
    env["OPENAI_MODEL"] = model
    if quiet:
        env.update(QWEN_QUIET_ENV)
    return _apply(env, extra)


def run_qwen(
    args: list[str], env: Mapping[str, str], cwd: str | os.PathLike, timeout: float = 150
) -> subprocess.CompletedProcess:
    """Run ``qwen --auth-type openai <args>`` to completion (e.g. ``["-p", "hi"]``,
    ``["-c", "-p", "more"]``, ``["-r", uuid, "-p", "more"]``, ``["--session-id", uuid, ...]``)."""
    return _run(qwen_command() + QWEN_AUTH_FLAGS + list(args), env, cwd, timeout, None)


def qwen_shell(command: str) -> str:
    """The stand-in directive for one call of Qwen's shell tool (run it with ``--yolo``)."""
    return f"[[tool: {QWEN_SHELL_TOOL} {json.dumps({'command': command})}]]"


def qwen_project_dir(home: str | os.PathLike, cwd: str | os.PathLike) -> Path:
    """``<home>/.qwen/projects/<cwd, every non-[A-Za-z0-9] -> '-'>`` (Claude's rule)."""
    return Path(home) / ".qwen" / "projects" / claude_project_dir_name(cwd)


def qwen_session_files(home: str | os.PathLike, cwd: str | os.PathLike) -> list[Path]:
    """``<project dir>/chats/<uuid>.jsonl`` of ``cwd``, oldest first (by the first record's time)."""
    folder = qwen_project_dir(home, cwd) / "chats"
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob("*.jsonl") if _UUID_RE.fullmatch(p.stem)]

    def started(path: Path):
        records = harness.read_jsonl(path)
        return (records[0].get("timestamp", "") if records else "", path.name)

    return sorted(files, key=started)


def qwen_session_id(path: str | os.PathLike) -> str:
    """The session uuid of a Qwen session file (its name)."""
    return Path(path).stem


def qwen_session_ids_in(path: str | os.PathLike) -> set[str]:
    """Every ``sessionId`` the records of a Qwen session file hold."""
    return {r["sessionId"] for r in harness.read_jsonl(path) if "sessionId" in r}


# --------------------------------------------------------------------------- Kilo CLI
#
# Kilo CLI (npm ``@kilocode/cli``, an opencode fork). Its newest, 7.8.1, cannot install here: the
# registry lacks its platform package (``@kilocode/cli-linux-x64@7.8.1``), and its postinstall
# then runs npm in a way the wheel's npm shim breaks. The newest platform package there is, 7.7.9,
# is installed alone: a Bun binary, ``bin/kilo`` (``comm`` ``kilo``). Checked here:
# - ``kilo run -m openrouter/<model> <words...>`` runs one turn; an argument with a space in it
#   reaches the model JSON-quoted, so a stand-in directive goes in space-free words; a tool that
#   is not read-only needs ``--auto``. ``-c`` continues the cwd's last session, ``-s ID`` one.
# - Toward OpenRouter it sends ``x-session-affinity`` and ``x-session-id``, both its ``ses_`` id;
#   its user agent is ``Kilo-Code/7.7.9 ai-sdk/...``. Its sessions are rows of
#   ``~/.local/share/kilo/kilo.db`` (``session.directory`` is ``$PWD``).
# - KILO_QUIET_ENV keeps it from PostHog, models.dev, updates and session sharing.

KILO_PACKAGE = ("@kilocode/cli-linux-x64", "7.7.9")
KILO_OPENROUTER_MODEL = "openrouter/openai/gpt-4o-mini"
KILO_QUIET_ENV = {
    "KILO_TELEMETRY_LEVEL": "off",
    "KILO_DISABLE_AUTOUPDATE": "1",
    "KILO_DISABLE_MODELS_FETCH": "1",
    "KILO_DISABLE_SHARE": "1",
    "KILO_DISABLE_SESSION_INGEST": "1",
}


def kilo_binary() -> Path:
    path = npm_install(*KILO_PACKAGE) / "node_modules" / "@kilocode" / "cli-linux-x64" / "bin" / "kilo"
    if not path.exists():
        raise RuntimeError(f"Kilo CLI has no {path}")
    return path


def kilo_env(
    proxy: Mitmdump, home: str | os.PathLike, cwd: str | os.PathLike, extra: Mapping[str, str | None] | None = None
) -> dict[str, str]:
    """``agent_env`` plus ``PWD`` (Kilo records it as the session's directory) and KILO_QUIET_ENV."""
    env = agent_env(proxy, home, pi_version=None)
    env["PWD"] = str(cwd)
    env.update(KILO_QUIET_ENV)
    return _apply(env, extra)


def run_kilo(
    args: list[str], env: Mapping[str, str], cwd: str | os.PathLike, timeout: float = 150
) -> subprocess.CompletedProcess:
    """Run ``kilo <args>`` to completion (``["run", "-m", model, "word", ...]``)."""
    return _run([str(kilo_binary())] + list(args), env, cwd, timeout, None)


def kilo_sessions(home: str | os.PathLike) -> list[tuple[str, str]]:
    """(id, directory) of every session in ``<home>/.local/share/kilo/kilo.db``, oldest first."""
    import sqlite3

    db = Path(home) / ".local" / "share" / "kilo" / "kilo.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [(r[0], r[1]) for r in conn.execute("SELECT id, directory FROM session ORDER BY time_created")]
    finally:
        conn.close()


# --------------------------------------------------------------------------- Cline
#
# Cline 3.0.65 (npm ``cline``): ``bin/cline`` is a Node wrapper that runs the platform package's
# Bun binary (copied to ``bin/.cline`` by its postinstall; its ``comm`` is ``.cline``).
# Checked here, through mitmdump and the stand-in:
# - ``cline auth -p <provider> -k KEY -m MODEL`` writes ``~/.cline/data/settings/providers.json``;
#   ``cline --json "<prompt>"`` runs one task. ``--id <session>`` (resume) with ``--json`` is
#   refused ("JSON output mode requires a prompt argument"), with a prompt or without.
# - Toward OpenRouter the body has ``session_id``: the session's id (``<epoch ms>_<5 chars>``);
#   toward Helicone (provider ``helicone``: ``https://ai-gateway.helicone.ai/v1/chat/completions``)
#   nothing names the session. Its user agent is ``ai-sdk/openai-compatible/... runtime/bun/...``.
# - Each session is ``~/.cline/data/sessions/<id>/<id>.json`` (``session_id``, ``pid``, ``cwd``,
#   ``started_at``, ``status``, ``prompt``) and ``<id>.messages.json``; the request's first user
#   turn is the prompt, which the hub stores as ``<user_input mode="act">prompt</user_input>``.
# - ``CLINE_SESSION_BACKEND_MODE``: ``local`` runs the task in the CLI's process; ``hub`` (and
#   ``auto`` once a hub answers) in ``.cline --cline-hub-daemon --port $CLINE_HUB_PORT`` (25463
#   by default), a detached process that serves every later session (the manifests' ``pid``).
#   The hub's health check is plain HTTP to 127.0.0.1: with HTTP_PROXY set and no NO_PROXY it
#   reaches the proxy instead. The first task of a hub just started sometimes fails ("WebSocket
#   connection ... failed: Connection ended"): ``cline hub start`` first.
# - It reports telemetry to otel.cline.bot and data.cline.bot (the stand-in answers them).

CLINE_PACKAGE = ("cline", "3.0.65")
CLINE_HELICONE = ("helicone", "gpt-4o-mini", "ai-gateway.helicone.ai", "/v1/chat/completions")
CLINE_OPENROUTER = ("openrouter", "openai/gpt-4o-mini", "openrouter.ai", "/api/v1/chat/completions")


def cline_wrapper() -> Path:
    """``cline/bin/cline`` (the package's ``cline`` bin, a Node script)."""
    path = npm_install(*CLINE_PACKAGE) / "node_modules" / "cline" / "bin" / "cline"
    if not path.exists():
        raise RuntimeError(f"Cline has no {path}")
    return path


def cline_command() -> list[str]:
    return [node_path(), str(cline_wrapper())]


def cline_env(
    proxy: Mitmdump,
    home: str | os.PathLike,
    hub_port: int,
    backend: str = "local",
    extra: Mapping[str, str | None] | None = None,
) -> dict[str, str]:
    """``agent_env`` plus NO_PROXY for the hub on loopback, its port, and the backend mode."""
    env = agent_env(proxy, home, pi_version=None)
    env.update(
        {
            "NO_PROXY": "localhost,127.0.0.1,::1",
            "no_proxy": "localhost,127.0.0.1,::1",
            "CLINE_HUB_PORT": str(hub_port),
            "CLINE_SESSION_BACKEND_MODE": backend,
        }
    )
    return _apply(env, extra)


def run_cline(
    args: list[str], env: Mapping[str, str], cwd: str | os.PathLike, timeout: float = 150
) -> subprocess.CompletedProcess:
    """Run ``cline <args>`` to completion (``["--json", "prompt"]``, ``["auth", ...]``)."""
    return _run(cline_command() + list(args), env, cwd, timeout, None)


def start_cline(args: list[str], env: Mapping[str, str], cwd: str | os.PathLike) -> subprocess.Popen:
    return subprocess.Popen(
        cline_command() + list(args),
        env=dict(env),
        cwd=str(cwd),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def cline_sessions(home: str | os.PathLike) -> dict[str, dict]:
    """Every session manifest under ``<home>/.cline/data/sessions``: id -> manifest."""
    root = Path(home) / ".cline" / "data" / "sessions"
    out = {}
    for path in sorted(root.glob("*/*.json")) if root.is_dir() else ():
        if path.name == f"{path.parent.name}.json":
            out[path.parent.name] = json.loads(path.read_text())
    return out


def cline_hub_pids(home: str | os.PathLike) -> list[int]:
    """The pids of the hub daemons started with this HOME (``--cline-hub-daemon``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--cline-hub-daemon" in cmdline and f"HOME={home}".encode() in environ:
            pids.append(int(entry))
    return pids


def _running(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1].startswith("Z")
    except OSError:
        return False


def stop_cline_hubs(home: str | os.PathLike, timeout: float = 10) -> None:
    """End the hub daemons of this HOME, by pid (SIGTERM, then SIGKILL)."""
    pids = cline_hub_pids(home)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, 15)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _running(p)]
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, 9)


# --------------------------------------------------------------------------- as another user


def claude_command_for_other_user(version: str | None = None) -> list[str]:
    """Like ``claude_command``, from a copy of the install that another user can read."""
    prefix = claude_prefix(version)
    link = claude_binary(version)  # node_modules/.bin/claude: a relative link, kept in the copy
    return [str(harness.readable_copy(prefix) / link.relative_to(prefix))]


def codex_command_for_other_user(version: str | None = None) -> list[str]:
    """Like ``codex_command``, with a Node and a Codex that another user can read."""
    prefix = codex_prefix(version)
    js = codex_js(version)
    return [harness.readable_node(), str(harness.readable_copy(prefix) / js.relative_to(prefix))]


def codex_exec_command_for_other_user(
    prompt: str | None = None, *, resume: str | None = None, flags=(), version: str | None = None
) -> list[str]:
    """``codex_exec_command`` with ``codex_command_for_other_user`` as the program."""
    argv = codex_exec_command(prompt, resume=resume, flags=flags, version=version)
    n = len(codex_command(version))
    return codex_command_for_other_user(version) + argv[n:]
