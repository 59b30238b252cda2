"""Session IDs: which strings are ids (the one rule, for store files and request fields alike),
their labels and trace UUIDs, compatible with the existing pi extensions (see README)."""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
import string
import time
import uuid
from typing import TypeGuard

# The namespace of Opper's pi extension (opper-ai/cli data/pi-opper-extension/opper-session.ts).
OPPER_NAMESPACE = uuid.UUID("3f2504e0-4f89-41d3-9a0c-0305e82c3301")

UUID_RE = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# Any id an agent uses (pi 1.x: `--session-id feature-x`), within a charset safe in a header, a
# file name and a label. It starts with a letter or digit, so `..` or `.hidden` is never an id.
SAFE_ID_RE = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}"
SAFE_ID = re.compile(rf"{SAFE_ID_RE}\Z")
_UUID = re.compile(rf"{UUID_RE}\Z")

_NOT_SLUG = re.compile(r"[^a-z0-9]+")
_NOT_ALNUM = re.compile(r"[^0-9A-Za-z]")
_BASE36 = string.digits + string.ascii_lowercase


def is_safe_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and SAFE_ID.match(value) is not None


def is_uuid(text: str) -> bool:
    return _UUID.match(text) is not None


def normal_id(session_id: str) -> str:
    """Uuids lower-cased (agents write either case; they match case-insensitively), other ids exact."""
    return session_id.lower() if _UUID.match(session_id) else session_id


def slug(name: str) -> str:
    """As odonnell-anthony/pi-openrouter-session: lower-case, runs of other chars -> '-', 50 chars."""
    return _NOT_SLUG.sub("-", name.lower()).strip("-")[:50]


def short_id(session_id: str) -> str:
    """8 chars from the random END of an id (uuid v7 starts with shared timestamp bits)."""
    return _NOT_ALNUM.sub("", session_id)[-8:].lower()


def label(name: str | None, session_id: str) -> str:
    """`<slug>-<8 chars>` for a named session, the session id itself otherwise."""
    if name:
        s = slug(name)
        if s:
            return f"{s}-{short_id(session_id)}"
    return session_id


def name_hash(name: str) -> str:
    """What privacy mode sends instead of a name: stable, and says nothing of the name."""
    return "n" + hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()


@functools.lru_cache(maxsize=4096)  # asked for every request of a session: the same key each time
def trace_uuid(key: str) -> str:
    """uuid5 in Opper's namespace; the key is the session file's absolute path where there is one."""
    return str(uuid.uuid5(OPPER_NAMESPACE, key))


def mint_ephemeral(now: float | None = None) -> str:
    """`ephemeral-<ms>-<random>`, the reference extension's form for a session without a file."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"ephemeral-{ms}-{''.join(secrets.choice(_BASE36) for _ in range(10))}"


def process_fallback(pid: int, start_ticks: int, boot_id: str) -> str:
    """Stable for one process's life, never shared with another process (pids are reused)."""
    digest = hashlib.blake2b(f"{boot_id}:{pid}:{start_ticks}".encode(), digest_size=5).hexdigest()
    return f"process-{pid}-{digest}"


def connection_fallback(connection_id: str) -> str:
    digest = hashlib.blake2b(connection_id.encode(), digest_size=5).hexdigest()
    return f"connection-{digest}"
