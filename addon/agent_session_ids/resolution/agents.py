"""Agent profiles: how to recognise an agent's process, where its store is, which request headers
carry its own session id. Pure: paths are computed from the AGENT's environment and cwd."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .model import Process

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass(frozen=True)
class SessionFolder:
    path: str
    cwd_filter: str | None  # a flat custom folder holds every cwd's files: filter on the header


@dataclass(frozen=True)
class AgentProfile:
    name: str
    process_names: frozenset[str]  # /proc/<pid>/comm, or the base name of argv[0]
    hint_headers: tuple[str, ...]  # request headers that carry the agent's own session id
    hint_body_fields: tuple[str, ...] = ()  # top-level JSON body fields that carry it

    def recognises(self, process: Process) -> bool:
        if process.comm in self.process_names:
            return True
        return bool(process.cmdline) and os.path.basename(process.cmdline[0]) in self.process_names

    def hint(self, headers: Mapping[str, str], body: Mapping[str, object] | None) -> tuple[str | None, str]:
        """The session id the request names, and where (headers: lower-case names)."""
        for name in self.hint_headers:
            value = headers.get(name)
            if value and _UUID.match(value.strip()):
                return value.strip().lower(), f"header {name}"
        for name in self.hint_body_fields:
            value = body.get(name) if body else None
            if isinstance(value, str) and _UUID.match(value.strip()):
                return value.strip().lower(), f"body {name}"
        return None, ""


PI = AgentProfile(
    name="pi",
    process_names=frozenset({"pi"}),
    # pi >= 0.86 sends x-session-id to OpenRouter; >= 0.75.5 sends x-opencode-session to OpenCode;
    # every pi sends session_id and prompt_cache_key to Responses-API models.
    hint_headers=("x-session-id", "x-opencode-session", "session_id"),
    hint_body_fields=("prompt_cache_key",),
)

PROFILES: tuple[AgentProfile, ...] = (PI,)


def recognise(process: Process) -> AgentProfile | None:
    for profile in PROFILES:
        if profile.recognises(process):
            return profile
    return None


def _expand(path: str, environ: Mapping[str, str]) -> str:
    home = environ.get("HOME", "")
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    return path


def _flag(cmdline: tuple[str, ...], flag: str) -> str | None:
    for i, arg in enumerate(cmdline):
        if arg == flag and i + 1 < len(cmdline):
            return cmdline[i + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1:]
    return None


def pi_encode_cwd(cwd: str) -> str:
    """pi's session folder name for a cwd (session-manager.ts)."""
    return "--" + re.sub(r"[/\\:]", "-", re.sub(r"^[/\\]", "", cwd)) + "--"


def pi_agent_dir(environ: Mapping[str, str]) -> str:
    value = environ.get("PI_CODING_AGENT_DIR")
    if value:
        return _expand(value, environ)
    return os.path.join(environ.get("HOME", ""), ".pi", "agent")


def pi_session_folders(process: Process, settings_session_dir: str | None = None) -> list[SessionFolder]:
    """Where this pi process keeps its sessions: --session-dir (when the command line shows it),
    else PI_CODING_AGENT_SESSION_DIR, else settings.json's sessionDir, else the per-cwd folder."""
    env = process.environ
    for custom in (_flag(process.cmdline, "--session-dir"), env.get("PI_CODING_AGENT_SESSION_DIR"), settings_session_dir):
        if custom:
            custom = _expand(custom, env)
            if not os.path.isabs(custom):
                custom = os.path.join(process.cwd, custom)
            return [SessionFolder(os.path.normpath(custom), process.cwd)]
    return [SessionFolder(os.path.join(pi_agent_dir(env), "sessions", pi_encode_cwd(process.cwd)), None)]


def read_pi_settings_session_dir(environ: Mapping[str, str]) -> str | None:
    """settings.json's sessionDir (I/O, small file; the caller caches it per process)."""
    path = os.path.join(pi_agent_dir(environ), "settings.json")
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return None
    value = data.get("sessionDir") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None
