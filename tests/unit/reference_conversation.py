"""The conversation of a parsed body, read the plain way: what the streaming body reader
(rewrite/body.py) must agree with."""

from __future__ import annotations

from agent_session_ids.resolution.conversation import Conversation, Tally


def from_body(body: dict) -> Conversation | None:
    """Read the conversation from a parsed request body; None if it carries none."""
    for key in ("messages", "input", "contents"):
        messages = body.get(key)
        if isinstance(messages, list):
            tally = Tally(gemini=key == "contents")
            for message in messages:
                tally.add(message)
            return tally.conversation()
    return None
