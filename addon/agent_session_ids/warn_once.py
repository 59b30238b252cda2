"""Each problem said once: a proxy that meets the same bad input on every request must not flood
its log. What is said is bounded too: a gateway that sends a new bad value on every answer (2,400
content-encodings) gets at most MAX_SAID lines, each cut to MAX_MESSAGE characters.

Every line the addon logs passes `shown` (shown.py) on its way out: a value quoted from a request,
an answer or a folder name reaches the terminal as text, never as a control sequence."""

from __future__ import annotations

import logging

from .shown import shown

MAX_SAID = 256  # distinct problems said; past it, one line says that the rest go unsaid
MAX_KEY = 80  # characters of a problem's key kept: a key that quotes a value is cut
MAX_MESSAGE = 400  # characters of one problem's line

logger = logging.getLogger("agent_session_ids")


class ShownLines(logging.Filter):
    """Each line of a record's message through `shown`: the one rule for what is printed."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        safe = "\n".join(shown(line) for line in message.split("\n"))
        if safe != message:
            record.msg, record.args = safe, None
        return True


if not any(isinstance(f, ShownLines) for f in logger.filters):
    logger.addFilter(ShownLines())


class WarnOnce:
    def __init__(self, limit: int = MAX_SAID) -> None:
        self.said: set[str] = set()
        self.limit = limit
        self.full = False

    def __call__(self, key: str, message: str) -> None:
        key = key[:MAX_KEY]
        if key in self.said:
            return
        if len(self.said) >= self.limit:
            if not self.full:
                self.full = True
                logger.warning(
                    f"agent-session-ids: {self.limit} distinct problems were said; further ones are not "
                    "logged (sessionids.explain tells about a flow)"
                )
            return
        self.said.add(key)
        logger.warning(f"agent-session-ids: {shown(message, MAX_MESSAGE)}")
