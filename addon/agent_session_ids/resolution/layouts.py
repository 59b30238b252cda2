"""How each agent lays out its session store, as data with its source: how a cwd becomes its
folder's name (the encoders) and how its JSONL records read (its RecordFormat). Pure; used by the
profiles in agents.py."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from .formats import ANY, RecordFormat

# -- cwd encodings -----------------------------------------------------------------------------


def encode_pi(cwd: str, environ: Mapping[str, str]) -> str:
    """pi (session-manager.ts): `--<cwd without its leading slash, / \\ : -> ->--`."""
    return "--" + re.sub(r"[/\\:]", "-", re.sub(r"^[/\\]", "", cwd)) + "--"


def encode_omp(cwd: str, environ: Mapping[str, str]) -> str:
    """Oh My Pi 18.x (session-paths.ts): relative to HOME `-rel`, to tmp `-tmp-rel`, else pi's."""
    home = environ.get("HOME", "").rstrip("/")
    tmp = (environ.get("TMPDIR") or "/tmp").rstrip("/")
    for base, prefix in ((home, "-"), (tmp, "-tmp-")):
        if base and (cwd == base or cwd.startswith(base + "/")):
            rel = cwd[len(base) :].lstrip("/")
            if prefix == "-":
                return "-" + re.sub(r"[/\\:]", "-", rel)
            return prefix + re.sub(r"[/\\:]", "-", rel) if rel else "-tmp"
    return encode_pi(cwd, environ)


def _java_hash(text: str) -> int:
    h = 0
    data = text.encode("utf-16-le")
    for i in range(0, len(data), 2):
        h = (h * 31 + int.from_bytes(data[i : i + 2], "little")) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def encode_claude(cwd: str, environ: Mapping[str, str]) -> str:
    """Claude Code and Qwen Code: every UTF-16 unit that is not [a-zA-Z0-9] becomes '-';
    past 200 chars, the first 200 plus '-' and a base-36 hash (kinds/per_cwd.py also accepts any hash)."""
    units = cwd.encode("utf-16-le")
    out = []
    for i in range(0, len(units), 2):
        c = int.from_bytes(units[i : i + 2], "little")
        out.append(chr(c) if c < 128 and chr(c).isalnum() else "-")
    enc = "".join(out)
    if len(enc) > 200:
        enc = enc[:200] + "-" + _base36(abs(_java_hash(cwd)))
    return enc


def encode_sha256(cwd: str, environ: Mapping[str, str]) -> str:
    """Gemini CLI's project hash (before its projects.json registry)."""
    return hashlib.sha256(cwd.encode()).hexdigest()


# -- the profiles ---------------------------------------------------------------------------------

PI_FORMAT = RecordFormat(
    header={"type": "session"},
    id="id",
    cwd="cwd",
    created="timestamp",
    parent="parentSession",
    user={"type": "message", "message.role": "user"},
    user_content="message.content",
    assistant=(b'"role":"assistant"',),
    name={"type": "session_info"},
    name_field="name",
    name_marker=b'"session_info"',
)

OMP_FORMAT = RecordFormat(
    header={"type": "session"},
    id="id",
    cwd="cwd",
    created="timestamp",
    parent="parentSession",
    user={"type": "message", "message.role": "user"},
    user_content="message.content",
    assistant=(b'"role":"assistant"',),
    name={"type": ("title", "title_change")},
    name_field="title",
    name_marker=b'"title',
)

CLAUDE_FORMAT = RecordFormat(
    header={"sessionId": ANY, "cwd": ANY},
    id="sessionId",
    cwd="cwd",
    created="timestamp",
    user={"type": "user", "message.role": "user"},
    user_content="message.content",
    assistant=(b'"type":"assistant"',),
    assistant_not=(b'"isApiErrorMessage":true',),
    name={"type": "custom-title"},
    name_field="customTitle",
    name_marker=b'"custom-title"',
)

CODEX_FORMAT = RecordFormat(
    header={"type": "session_meta"},
    id="payload.id",
    cwd="payload.cwd",
    created="payload.timestamp",
    user={"type": "response_item", "payload.type": "message", "payload.role": "user"},
    user_content="payload.content",
    assistant=(b'"role":"assistant"',),
    assistant_not=(),
)

QWEN_FORMAT = RecordFormat(
    header={"sessionId": ANY, "cwd": ANY},
    id="sessionId",
    cwd="cwd",
    created="timestamp",
    user={"type": "user", "message.role": "user"},
    user_content="message.parts",
    assistant=(b'"type":"assistant"',),
    assistant_not=(),
)

GEMINI_FORMAT = RecordFormat(
    header={"sessionId": ANY},
    id="sessionId",
    cwd=None,
    created="startTime",
    user={"type": "user"},
    user_content="content",
    assistant=(b'"type":"gemini"',),
    assistant_not=(),
)
