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


class Tally:
    """Counts a conversation's messages one at a time (a body read element by element)."""

    __slots__ = ("gemini", "first_user", "n_user", "n_assistant")

    def __init__(self, gemini: bool = False) -> None:
        self.gemini = gemini  # Gemini's contents: role user / model, with parts
        self.first_user: str | None = None
        self.n_user = self.n_assistant = 0

    def copy(self) -> Tally:
        other = Tally(self.gemini)
        other.first_user, other.n_user, other.n_assistant = self.first_user, self.n_user, self.n_assistant
        return other

    def add(self, message: object) -> None:
        if not isinstance(message, dict):
            return
        role = message.get("role")
        if self.gemini:
            role = "assistant" if role == "model" else role
            content = message.get("parts")
        else:
            content = message.get("content")
        if role == "user":
            if self.n_user == 0:
                self.first_user = fingerprint(text_of(content))
            self.n_user += 1
        elif role == "assistant":
            self.n_assistant += 1
        elif not self.gemini and message.get("type") in ("function_call", "reasoning") and "role" not in message:
            # Responses API: an earlier assistant turn that only called a tool
            self.n_assistant += 1

    def conversation(self) -> Conversation | None:
        return Conversation(self.first_user, self.n_user, self.n_assistant) if self.n_user else None
