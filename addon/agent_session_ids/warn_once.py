"""Each problem said once: a proxy that meets the same bad input on every request must not flood
its log."""

from __future__ import annotations

import logging

logger = logging.getLogger("agent_session_ids")


class WarnOnce:
    def __init__(self) -> None:
        self.said: set[str] = set()

    def __call__(self, key: str, message: str) -> None:
        if key not in self.said:
            self.said.add(key)
            logger.warning(f"agent-session-ids: {message}")
