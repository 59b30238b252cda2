"""The resolver's keys, made in this one place. They are the keys of the bindings (Resolver.bound)
and of the sessions waiting for their file (Resolver.pending), saved as they are in the state file,
and some are the names of trace UUIDs: their form never changes.

- `id:<id>`: a session the request named before its file was written (bound);
- `<agent>:<id>`: an agent's own session, bound to the ID its first request got (bound);
- `conv:<first turn>`: a session minted for a conversation seen without its process (pending);
- `<process key>`: a live process's session without a file yet (pending), and
  `<process key>#<id>`: one its process moved on from, or ended, kept to bind a later file.
"""

from __future__ import annotations

_CONVERSATION = "conv:"


def named(session_id: str) -> str:
    return f"id:{session_id}"


def agent_session(agent: str, session_id: str) -> str:
    return f"{agent}:{session_id}"


def conversation(first_user: str | None) -> str:
    return f"{_CONVERSATION}{first_user}"


def is_conversation(key: str) -> bool:
    return key.startswith(_CONVERSATION)


def orphan(process_key: str, session_id: str) -> str:
    return f"{process_key}#{session_id}"
