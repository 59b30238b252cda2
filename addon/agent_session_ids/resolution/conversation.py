"""What a request's conversation says, in a form that can be compared with a session file.

A request body of OpenAI chat (`messages`), Anthropic Messages (`messages`) or OpenAI Responses
(`input`) carries the conversation so far. Two facts decide which session it belongs to: the
fingerprint of its first user turn, and how many assistant turns it already carries (none: a new
conversation's first request).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Conversation:
    first_user: str | None  # fingerprint of the first user turn's text
    n_user: int
    n_assistant: int

    @property
    def fresh(self) -> bool:
        """A new conversation's first request: nothing has been answered yet."""
        return self.n_assistant == 0


# Parts an agent adds to the request's first user turn but not to its session file (Qwen Code,
# Claude Code): left out on both sides, so that the two fingerprints agree.
INJECTED_PREFIXES = ("<system-reminder>", "<session_context>")


def text_of(content: object) -> str:
    """The plain text of a message's content: a string, or a list of parts with text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str) and not text.lstrip().startswith(INJECTED_PREFIXES):
                    texts.append(text)
            elif isinstance(part, str):
                texts.append(part)
        return "\n".join(texts)
    return ""


def fingerprint(text: str) -> str | None:
    """A short hash of a user turn's text; whitespace at the ends does not count."""
    text = text.strip()
    if not text:
        return None
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=10).hexdigest()


def from_body(body: dict) -> Conversation | None:
    """Read the conversation from a parsed request body; None if it carries none."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        messages = body.get("input")
        if not isinstance(messages, list):
            messages = body.get("contents")  # Gemini: role user / model, with parts
            if not isinstance(messages, list):
                return None
            messages = [{"role": "assistant" if m.get("role") == "model" else m.get("role"),
                         "content": m.get("parts")} for m in messages if isinstance(m, dict)]
    first_user = None
    n_user = n_assistant = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "user":
            if n_user == 0:
                first_user = fingerprint(text_of(message.get("content")))
            n_user += 1
        elif role == "assistant":
            n_assistant += 1
        elif message.get("type") in ("function_call", "reasoning") and "role" not in message:
            # Responses API: an earlier assistant turn that only called a tool
            n_assistant += 1
    if n_user == 0:
        return None
    return Conversation(first_user, n_user, n_assistant)
