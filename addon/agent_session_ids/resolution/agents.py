"""Agent profiles, as data: how to recognise an agent's process, where its session store is, how its
records read, and which request fields carry its own session id.

Adding an agent whose store is of a known kind is one more profile in PROFILES, no new code: its
`store` is the spec of its kind (kinds/: a folder per cwd, a date tree, a folder per project, a
SQLite database, a folder per session), with the fields of that kind; a cwd's encoding is one of
the encoders of layouts.py, a file name's id one of id_index.FILE_IDS.

Everything here is pure: paths come from the AGENT's environment and cwd, not the proxy's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .formats import ManifestFormat, RecordFormat
from .ids import SAFE_ID_RE, is_safe_id, normal_id
from .kinds import Database, DateTree, PerCwd, PerProject, PerSession, Root, StoreKind
from .kinds.base import Encoder
from .layouts import (
    CLAUDE_FORMAT,
    CODEX_FORMAT,
    GEMINI_FORMAT,
    OMP_FORMAT,
    PI_FORMAT,
    QWEN_FORMAT,
    encode_claude,
    encode_omp,
    encode_pi,
    encode_sha256,
)
from .model import Process


def safe_id(value: object) -> str | None:
    """The id, stripped (uuids lower-cased), if it is one an agent could use; else None."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    return normal_id(value) if is_safe_id(value) else None


@dataclass(frozen=True)
class AgentProfile:
    name: str
    process_names: frozenset[str]  # /proc comm, or the base name of argv[0] or of the executable
    process_patterns: tuple[str, ...] = ()  # regexes searched in the command line (a node script path)
    hint_headers: tuple[str, ...] = ()  # request headers that carry the agent's own session id
    hint_body_fields: tuple[str, ...] = ()  # top-level JSON body fields that carry it
    hint_pattern: str = SAFE_ID_RE  # what such an id looks like
    # a session's tree (tree.py). A sub-agent inside its parent's session: the headers with its own
    # id (a value equal to the session's id is the session itself), with the sub-agent it was
    # started by (nested ones), and with its kind. A child with a session of its own: the headers
    # and the environment variables (of its process) naming its parent session.
    subagent_headers: tuple[str, ...] = ()
    subagent_parent_headers: tuple[str, ...] = ()
    subagent_kind_headers: tuple[str, ...] = ()
    parent_headers: tuple[str, ...] = ()
    parent_env: tuple[str, ...] = ()
    subagent_file: str = ""  # a sub-agent's transcript, beside its session's file ("{stem}", "{id}")
    store: StoreKind | None = None
    # how a request shows it comes from this agent when its process cannot be read: headers
    # whose value matches a regex ("" = present at all); any one sign is enough
    request_signs: tuple[tuple[str, str], ...] = ()
    # how `agent-session-ids launch` runs it: its command, the runtime that decides how it trusts
    # a CA (cli/env.py's TRUST), and what else it needs in its environment
    command: str = ""
    runtime: str = "node"
    launch_env: tuple[tuple[str, str], ...] = ()
    _compiled: dict = field(default_factory=dict, compare=False, repr=False)

    def recognises(self, process: Process) -> bool:
        if process.comm in self.process_names:
            return True
        names = {os.path.basename(process.exe)}
        if process.cmdline:
            names.add(os.path.basename(process.cmdline[0]))
        if names & self.process_names:
            return True
        if self.process_patterns and process.cmdline:
            line = " ".join(process.cmdline[:4])
            return any(re.search(p, line) for p in self.process_patterns)
        return False

    def signed(self, headers: Mapping[str, str]) -> bool:
        """Does the request carry one of this agent's signs? (headers: lower-case names)"""
        for name, pattern in self.request_signs:
            value = headers.get(name)
            if value is not None and (not pattern or re.search(pattern, value)):
                return True
        return False

    def hint(self, headers: Mapping[str, str], body: Mapping[str, object] | None) -> tuple[str | None, str]:
        """The session id the request names, and where (headers: lower-case names)."""
        pattern = self._compiled.get("hint")
        if pattern is None:
            pattern = self._compiled["hint"] = re.compile(f"^(?:{self.hint_pattern})$")
        for name in self.hint_headers:
            value = headers.get(name)
            if value and pattern.match(value.strip()):
                return normal_id(value.strip()), f"header {name}"
        for name in self.hint_body_fields:
            member = body.get(name) if body else None
            if isinstance(member, str) and pattern.match(member.strip()):
                return normal_id(member.strip()), f"body {name}"
        return None, ""


def _pi_store(root: Root, encode: Encoder, fmt: RecordFormat) -> PerCwd:
    """pi's store, and its fork Oh My Pi's: a session folder chosen by --session-dir, by
    PI_CODING_AGENT_SESSION_DIR or by settings.json's sessionDir comes before the cwd's."""
    return PerCwd(
        (root,),
        encode,
        fmt,
        file_names="time_id",
        custom_dir_flag="--session-dir",
        custom_dir_env="PI_CODING_AGENT_SESSION_DIR",
        custom_dir_setting="settings.json:sessionDir",
    )


PI = AgentProfile(
    name="pi",
    command="pi",
    process_names=frozenset({"pi"}),
    # pi >= 0.86 sends x-session-id to OpenRouter; >= 0.75.5 sends x-opencode-session to OpenCode;
    # every pi sends session_id and prompt_cache_key to Responses-API models.
    hint_headers=("x-session-id", "x-opencode-session", "session_id"),
    hint_body_fields=("prompt_cache_key",),
    store=_pi_store(Root(("PI_CODING_AGENT_DIR",), "~/.pi/agent", "sessions"), encode_pi, PI_FORMAT),
    request_signs=(("x-opencode-client", r"^pi$"), ("user-agent", r"^pi[/ ]")),
    # pi >= 0.82 gives the commands of its bash tool PI_SESSION_ID: a pi started there inherits its
    # parent's (CHANGELOG 0.82.0)
    parent_env=("PI_SESSION_ID",),
)

OMP = AgentProfile(
    name="omp",
    command="omp",
    runtime="bun",
    process_names=frozenset({"omp"}),
    process_patterns=(r"oh-my-pi",),
    hint_headers=("x-session-id", "x-opencode-session", "session_id"),
    hint_body_fields=("prompt_cache_key",),
    store=_pi_store(
        Root(("PI_CODING_AGENT_DIR", "OMP_CODING_AGENT_DIR"), "~/.omp/agent", "sessions"), encode_omp, OMP_FORMAT
    ),
    request_signs=(("x-opencode-client", r"^omp$"), ("user-agent", r"^(omp|oh-my-pi)[/ ]")),
)

CLAUDE = AgentProfile(
    name="claude",
    command="claude",
    runtime="bun",
    # no calls to Anthropic's own hosts (telemetry, updates): only the model calls go out
    launch_env=(("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),),
    process_names=frozenset({"claude"}),
    process_patterns=(r"claude-code/cli\.m?js",),
    hint_headers=("x-claude-code-session-id",),
    # a sub-agent keeps the parent's session id and adds its own agent id (observed, 2.1.332), and
    # a nested one its parent agent's (CHANGELOG 2.1.139)
    subagent_headers=("x-claude-code-agent-id",),
    subagent_parent_headers=("x-claude-code-parent-agent-id",),
    subagent_file="{stem}/subagents/agent-{id}.jsonl",
    request_signs=(("x-claude-code-session-id", ""), ("user-agent", r"^claude-cli/")),
    store=PerCwd(
        (
            Root(("CLAUDE_CONFIG_DIR",), "~/.claude", "projects"),
            Root((), "~/.config/claude", "projects"),
        ),
        encode_claude,
        CLAUDE_FORMAT,
        file_names="uuid",
        hashed_long_names=True,
    ),
)

QWEN = AgentProfile(
    name="qwen",
    command="qwen",
    process_names=frozenset({"qwen"}),
    process_patterns=(r"qwen-code", r"(^|/)qwen( |$)"),
    request_signs=(("user-agent", r"(?i)^qwen-?code"),),
    store=PerCwd(
        (Root(("QWEN_RUNTIME_DIR",), "~/.qwen", "projects"),),
        encode_claude,
        QWEN_FORMAT,
        subdir="chats",
        file_names="uuid",
        hashed_long_names=True,
    ),
)

CODEX = AgentProfile(
    name="codex",
    command="codex",
    runtime="rust",
    process_names=frozenset({"codex"}),
    process_patterns=(r"(^|/)codex(-[a-z0-9_-]+)?( |$)", r"@openai/codex"),
    hint_headers=("session-id", "session_id", "conversation_id"),
    # a sub-agent sends the root's session-id, its own thread-id, its parent's thread and its kind
    # (codex-rs/core/src/session/session.rs, responses_metadata.rs, client.rs)
    subagent_headers=("thread-id",),
    subagent_parent_headers=("x-codex-parent-thread-id",),
    subagent_kind_headers=("x-openai-subagent",),
    hint_body_fields=("prompt_cache_key",),
    request_signs=(("x-codex-turn-metadata", ""), ("originator", r"^codex"), ("user-agent", r"^codex")),
    store=DateTree(
        (Root(("CODEX_HOME",), "~/.codex", "sessions"),),
        CODEX_FORMAT,
        file_names="rollout",
        name_index="session_index.jsonl",
    ),
)

GEMINI = AgentProfile(
    name="gemini",
    command="gemini",
    process_names=frozenset({"gemini"}),
    process_patterns=(r"gemini-cli", r"(^|/)gemini( |$)"),
    request_signs=(("user-agent", r"(?i)^gemini-?cli"),),
    # no file_names: its files' names hold only a prefix of the id
    store=PerProject(
        (Root(("GEMINI_CLI_HOME",), "~", ".gemini"),),
        encode_sha256,
        GEMINI_FORMAT,
        subdir="chats",
        projects_dir="tmp",
        project_registry="projects.json:projects",
    ),
)

OPENCODE = AgentProfile(
    name="opencode",
    command="opencode",
    runtime="bun",
    process_names=frozenset({"opencode", ".opencode"}),
    process_patterns=(r"opencode-ai|/opencode( |$)",),
    hint_headers=("x-opencode-session", "x-session-affinity", "x-session-id"),
    hint_pattern=r"ses_[0-9A-Za-z]{20,40}",
    # a task-tool sub-agent has a session of its own (packages/opencode/src/session/llm/request.ts)
    parent_headers=("x-parent-session-id",),
    request_signs=(("user-agent", r"^opencode/"), ("x-opencode-client", r"^(cli|opencode)")),
    store=Database((Root(("XDG_DATA_HOME",), "~/.local/share", "opencode"),)),
)

# Kilo CLI 7.x (npm `@kilocode/cli`, an opencode fork; checked against 7.7.9's binary): toward
# OpenRouter and OpenAI-compatible providers x-session-affinity and x-session-id, toward its own
# gateway x-kilocode-taskid, all its ses_ id; a task sub-agent has a session of its own, whose
# database row names its parent (X-KILOCODE-PARENT-TASKID toward the Kilo gateway, from its binary).
KILO = AgentProfile(
    name="kilo",
    command="kilo",
    runtime="bun",
    process_names=frozenset({"kilo", ".kilo"}),
    process_patterns=(r"@kilocode/cli",),
    hint_headers=("x-session-affinity", "x-session-id", "x-kilo-session", "x-kilocode-taskid"),
    hint_pattern=r"ses_[0-9A-Za-z]{20,40}",
    parent_headers=("x-kilocode-parent-taskid",),
    request_signs=(("user-agent", r"^Kilo-Code/"),),
    store=Database((Root(("XDG_DATA_HOME",), "~/.local/share", "kilo"),), database="kilo.db", database_env=None),
)

# Cline 3.x (npm `cline`, a Bun binary): checked against 3.0.65. Its session id is
# <epoch ms>_<5 base-36 chars>, sent toward OpenRouter in the body (session_id) and toward OpenCode
# in x-opencode-session (its llms package's stickySession), and toward no other provider. Each
# session is a folder <data>/sessions/<id>/ with the manifest <id>.json, written as the session
# starts (its `prompt`: the first user turn, inside <user_input mode="..."> when the hub ran it).
# The model calls come from the CLI's own process (.cline), or from its hub daemon
# (`.cline --cline-hub-daemon`), one process serving every session: told apart by their first
# user turn, never by the process alone.
CLINE = AgentProfile(
    name="cline",
    command="cline",
    runtime="bun",
    process_names=frozenset({"cline", ".cline"}),
    hint_headers=("x-opencode-session", "x-task-id"),
    hint_body_fields=("session_id",),
    hint_pattern=r"[0-9]{13}_[0-9a-z]{5}",
    store=PerSession(
        (
            Root(("CLINE_SESSION_DATA_DIR",), "~/.cline/data/sessions"),
            Root(("CLINE_DATA_DIR",), "~/.cline/data", "sessions"),
            Root(("CLINE_DIR",), "~/.cline", "data/sessions"),
        ),
        ManifestFormat(
            file="{id}.json",
            id="session_id",
            cwd="cwd",
            created="started_at",
            prompt="prompt",
            prompt_wrappers=(r'<user_input mode="[a-z_-]*">(.*)</user_input>',),
        ),
    ),
)

PROFILES: tuple[AgentProfile, ...] = (PI, OMP, CLAUDE, CODEX, GEMINI, QWEN, OPENCODE, KILO, CLINE)


@dataclass(frozen=True)
class SessionField:
    """A field in which a client names its own session, whatever gateway it calls."""

    where: str  # "header" (a lower-case name) or "body" (a dotted path into the JSON body)
    name: str
    clients: str  # who sends it, per session, and where that is written


# What clients meant, beside what the agents' profiles know (their hint_headers) and what the
# target gateway honours (a rule's client_fields): each is per session in its client's source.
# A value counts only if it passes the safe-id rule.
CLIENT_SESSION_FIELDS: tuple[SessionField, ...] = (
    SessionField(
        "header",
        "x-session-id",
        "opencode toward other providers (session/llm/request.ts), Crush >= "
        "0.84 (a hash of its session id, internal/agent/agent.go), Kilo",
    ),
    SessionField(
        "header", "x-session-affinity", "opencode, Crush >= 0.84, Kilo (packages/opencode/src/session/llm/request.ts)"
    ),
    SessionField("header", "x-kilo-session", "Kilo toward its own providers (session/llm/request.ts)"),
    SessionField("header", "x-kilocode-taskid", "Kilo toward the Kilo gateway (kilo-gateway/src/api/constants.ts)"),
    SessionField(
        "header", "agent-session-id", "Goose (crates/goose session_context.rs; goose-session-id before PR #6626)"
    ),
    SessionField("header", "x-amp-thread-id", "Amp, its thread id T-<uuid> (@sourcegraph/amp dist/main.js)"),
    SessionField("header", "x-roo-task-id", "Roo Code toward Roo Code Cloud, its task id (src/api/providers/roo.ts)"),
    SessionField("header", "x-task-id", "Cline toward its own providers, its session id"),
    SessionField(
        "header",
        "session_id",
        "Codex before 0.131 (codex-api/src/requests/headers.rs), Roo Code toward "
        "OpenAI's Responses API, Qwen Code toward Routify",
    ),
    SessionField(
        "body",
        "session_id",
        "Cline toward OpenRouter, its session id (sdk/packages/llms/src/providers/builtins.ts stickySession)",
    ),
    SessionField(
        "body",
        "litellm_session_id",
        "Cline's VS Code extension toward LiteLLM, cline-<task ulid> (providers/litellm.ts)",
    ),
    SessionField("body", "metadata.sessionId", "Qwen Code toward DashScope (provider/dashscope.ts)"),
)
CLIENT_SESSION_HEADERS: tuple[str, ...] = tuple(f.name for f in CLIENT_SESSION_FIELDS if f.where == "header")
HINT_HEADERS: tuple[str, ...] = tuple(sorted({h for p in PROFILES for h in p.hint_headers}))
# every request header the resolution reads: session ids and the agents' signs
TREE_HEADERS: tuple[str, ...] = tuple(
    sorted(
        {
            h
            for p in PROFILES
            for h in (p.subagent_headers + p.subagent_parent_headers + p.subagent_kind_headers + p.parent_headers)
        }
    )
)
EVIDENCE_HEADERS: tuple[str, ...] = tuple(
    sorted(
        set(HINT_HEADERS)
        | set(TREE_HEADERS)
        | set(CLIENT_SESSION_HEADERS)
        | {h for p in PROFILES for h, _ in p.request_signs}
    )
)


def recognise(process: Process) -> AgentProfile | None:
    for profile in PROFILES:
        if profile.recognises(process):
            return profile
    return None


def recognise_request(headers: Mapping[str, str]) -> AgentProfile | None:
    """The agent a request's own signs name (its user agent, the headers only it sends), for when
    its process cannot be read. Headers: lower-case names."""
    for profile in PROFILES:
        if profile.signed(headers):
            return profile
    return None


_BY_NAME = {p.name: p for p in PROFILES}


def by_name(name: str) -> AgentProfile | None:
    return _BY_NAME.get(name)
