"""Gemini CLI for end-to-end tests: install, command, environment, session files.

Plain functions, no pytest inside (like ``harness`` and ``agent_clients``). Gemini CLI is a Node
bundle in the npm package ``@google/gemini-cli`` (``bundle/gemini.js``); the wheel's Node 24 runs
it. It is installed with ``harness.npm_install`` into the same cache as the other clients.

    with Mitmdump(scripts=[ADDON, STANDIN]) as proxy:
        env = gemini_env(proxy, home)              # HOME, proxy, CA, key, base URL, quiet settings
        run_gemini(["--yolo", "-p", "hi " + "[[bash: echo hi]]"], env, work)

What was checked with Gemini CLI 0.61.0 through a mitmdump with the addon and the stand-in:

- With ``GOOGLE_GEMINI_BASE_URL=<base>`` and ``GEMINI_API_KEY`` it posts Google's Gemini API to
  ``<base>/v1beta/models/<model>:streamGenerateContent?alt=sse`` (the agent's turns) and
  ``<base>/v1beta/models/<model>:generateContent`` (its model router's classifier, JSON mode, no
  tools), HTTP/1.1, with ``x-goog-api-key: <key>``, ``x-goog-api-client: google-genai-sdk/1.30.0
  gl-node/v24.19.0`` and user agent ``GeminiCLI-tui/0.61.0/<model> (linux; x64; terminal)``. It
  names no session of its own in any request (no header, no body field).
- ``GOOGLE_GEMINI_BASE_URL`` alone makes it pick the auth type ``gateway``, which its own check
  then refuses in ``-p`` mode ("Invalid auth method selected.", exit 41): ``settings.json`` must
  say ``security.auth.selectedType: "gemini-api-key"`` (the base URL is still used).
- In an untrusted folder ``-p`` exits 55: ``GEMINI_CLI_TRUST_WORKSPACE=true`` (or ``--skip-trust``).
- Without ``privacy.usageStatisticsEnabled: false`` it also posts its usage statistics to
  ``play.googleapis.com/log`` (twice per run). Its update check runs only in interactive mode
  (``general.enableAutoUpdate``/``enableAutoUpdateNotification`` are off anyway).
- By default (no ``-m``) each prompt first goes to the router's classifier
  (``gemini-3.5-flash-lite:generateContent``, whose answer must be the JSON it asks for, else
  it retries with backoff for ~100 s); with a score of 1 it routes the turn to
  ``gemini-3.8-flash``. ``-m <model>`` skips the router: every request is a turn of ``<model>``.
- Its shell tool is ``run_shell_command`` ``{"command": ...}``, run in ``-p`` mode with ``--yolo``.
- It relaunches itself: the process that sends the requests is a child ``node
  --max-old-space-size=<n> .../gemini.js`` of the ``node .../gemini.js`` started (both have
  ``comm`` ``MainThread``).
- Its session file is ``~/.gemini/tmp/<slug>/chats/session-<YYYY-MM-DDTHH-MM>-<first 8 of the
  id>.jsonl`` (``<slug>`` = the cwd's entry in ``~/.gemini/projects.json``, its base name at
  first), written at start: first line ``{"sessionId", "projectHash", "startTime",
  "lastUpdated", "kind": "main"}``, then ``type`` ``user`` / ``gemini`` records and ``$set``
  updates. ``--resume <uuid>`` (or ``latest``, or an index of ``--list-sessions``) continues a
  session in its file; ``--session-id <uuid>`` starts a new session with that id.
- A resumed run still writes, at start, a header record (same ``sessionId``, a new
  ``startTime``) to ``session-<now>-<id8>.jsonl``: the session's own file when the minute is
  the same, else a new file holding just that header, while the conversation goes on in the old
  file (``gemini_conversation_files`` leaves such files out).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

import harness
from harness import Mitmdump, agent_env, node_path, npm_install

GEMINI_PACKAGE = ("@google/gemini-cli", "0.61.0")
#: Cloudflare AI Gateway's Google AI Studio route (account ``acct``, gateway ``gw``); Gemini CLI
#: appends ``/v1beta/models/<model>:generateContent`` and ``...:streamGenerateContent?alt=sse``.
GEMINI_BASE_URL = "https://gateway.ai.cloudflare.com/v1/acct/gw/google-ai-studio"
GEMINI_HOST = "gateway.ai.cloudflare.com"
GEMINI_PATH_PREFIX = "/v1/acct/gw/google-ai-studio/v1beta/models/"
GEMINI_API_KEY = "fake-gemini-key"
GEMINI_SHELL_TOOL = "run_shell_command"
#: The model of ``-m`` in tests that skip the model router.
GEMINI_FIXED_MODEL = "gemini-2.5-flash"

#: ``~/.gemini/settings.json``: the API-key auth (see the module doc), and nothing sent but the
#: model requests (no usage statistics, telemetry, update checks).
GEMINI_SETTINGS = {
    "security": {"auth": {"selectedType": "gemini-api-key"}},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
}
#: Environment beside the settings: trust the cwd in ``-p`` mode.
GEMINI_QUIET_ENV = {"GEMINI_CLI_TRUST_WORKSPACE": "true", "GEMINI_TELEMETRY_ENABLED": "false"}


def gemini_prefix() -> Path:
    return npm_install(*GEMINI_PACKAGE)


def gemini_cli() -> Path:
    """``@google/gemini-cli/bundle/gemini.js`` (the package's ``gemini`` bin)."""
    path = gemini_prefix() / "node_modules" / "@google" / "gemini-cli" / "bundle" / "gemini.js"
    if not path.exists():
        raise RuntimeError(f"Gemini CLI has no {path}")
    return path


def gemini_command() -> list[str]:
    """argv prefix that runs Gemini CLI with the wheel's Node 24."""
    return [node_path(), str(gemini_cli())]


def gemini_dir(home: str | os.PathLike) -> Path:
    return Path(home) / ".gemini"


def write_gemini_settings(home: str | os.PathLike, settings: Mapping | None = None) -> Path:
    """``<home>/.gemini/settings.json`` = ``settings`` (default GEMINI_SETTINGS)."""
    folder = gemini_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "settings.json"
    path.write_text(json.dumps(dict(settings if settings is not None else GEMINI_SETTINGS), indent=2))
    return path


def gemini_env(
    proxy: Mitmdump,
    home: str | os.PathLike,
    extra: Mapping[str, str | None] | None = None,
    *,
    base_url: str = GEMINI_BASE_URL,
    settings: Mapping | None = None,
) -> dict[str, str]:
    """Environment for Gemini CLI through ``proxy``: ``agent_env`` (HOME, HTTPS_PROXY,
    NODE_EXTRA_CA_CERTS, inherited GEMINI_*/GOOGLE_* dropped), ``GEMINI_API_KEY``,
    ``GOOGLE_GEMINI_BASE_URL=base_url`` and GEMINI_QUIET_ENV; writes
    ``<home>/.gemini/settings.json`` (GEMINI_SETTINGS unless ``settings``). ``extra`` is applied
    last (a None value deletes)."""
    env = agent_env(proxy, home, pi_version=None)
    env["GEMINI_API_KEY"] = GEMINI_API_KEY
    env["GOOGLE_GEMINI_BASE_URL"] = base_url
    env.update(GEMINI_QUIET_ENV)
    write_gemini_settings(home, settings)
    return harness.apply_env(env, extra)


def run_gemini(
    args: list[str], env: Mapping[str, str], cwd: str | os.PathLike, timeout: float = 150
) -> subprocess.CompletedProcess:
    """Run ``gemini <args>`` to completion, stdin closed (e.g. ``["--yolo", "-p", "hi"]``,
    ``["--yolo", "--resume", uuid, "-p", "more"]``)."""
    return subprocess.run(
        gemini_command() + list(args),
        env=dict(env),
        cwd=str(cwd),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def gemini_shell(command: str) -> str:
    """The stand-in directive for one call of Gemini CLI's shell tool (``[[bash]]`` goes to
    ``run_shell_command`` on the Gemini API)."""
    return f"[[bash: {command}]]"


def gemini_project_dir(home: str | os.PathLike, cwd: str | os.PathLike) -> Path | None:
    """``<home>/.gemini/tmp/<slug>`` of ``cwd``, the slug from ``projects.json`` (None before
    Gemini CLI has registered the cwd)."""
    registry = gemini_dir(home) / "projects.json"
    try:
        projects = json.loads(registry.read_text()).get("projects", {})
    except (OSError, ValueError):
        return None
    slug = projects.get(str(Path(cwd).resolve())) or projects.get(str(cwd))
    return gemini_dir(home) / "tmp" / slug if slug else None


def gemini_session_id(path: str | os.PathLike) -> str:
    """The ``sessionId`` a session file holds (``.jsonl``: its first record; ``.json``: the object)."""
    path = Path(path)
    if path.suffix == ".json":
        return json.loads(path.read_text())["sessionId"]
    records = harness.read_jsonl(path)
    return records[0]["sessionId"]


def gemini_session_files(home: str | os.PathLike, cwd: str | os.PathLike) -> list[Path]:
    """``chats/session-*.json[l]`` of ``cwd``'s project, oldest first (by ``startTime``)."""
    project = gemini_project_dir(home, cwd)
    folder = project / "chats" if project else None
    if folder is None or not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.name.startswith("session-") and p.suffix in (".json", ".jsonl")]

    def started(path: Path):
        if path.suffix == ".json":
            head = json.loads(path.read_text())
        else:
            records = harness.read_jsonl(path)
            head = records[0] if records else {}
        return (head.get("startTime", ""), path.name)

    return sorted(files, key=started)


def gemini_conversation_files(home: str | os.PathLike, cwd: str | os.PathLike) -> list[Path]:
    """The session files of ``cwd`` that record a user prompt (not the header-only file a resumed
    run may leave, see the module doc), oldest first."""
    return [f for f in gemini_session_files(home, cwd) if gemini_user_prompts(f)]


def gemini_user_prompts(path: str | os.PathLike) -> list[str]:
    """The text of the user turns a ``.jsonl`` session file records (tool results and Gemini
    CLI's ``<session_context>`` left out), in order."""
    prompts = []
    for record in harness.read_jsonl(path):
        if record.get("type") != "user" or not isinstance(record.get("content"), list):
            continue
        texts = [
            p["text"]
            for p in record["content"]
            if isinstance(p, dict)
            and isinstance(p.get("text"), str)
            and not p["text"].lstrip().startswith("<session_context>")
        ]
        if texts:
            prompts.append("\n".join(texts))
    return prompts
