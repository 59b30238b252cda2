"""The running rules: loaded from a folder, swapped in whole, and watched for edits. A bad
folder keeps the rules that run (after start-up) and says why."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..resolution import agents
from .load import active_rules, load_rules_dir, rules_signature
from .matching import RuleSet
from .model import Rule, RuleError

logger = logging.getLogger("agent_session_ids")

POLL_S = 1.0


class Rulebook:
    def __init__(self, warn_once: Callable[[str, str], None]) -> None:
        self._warn_once = warn_once
        self.rules = RuleSet([])  # one assignment per swap: a flow in flight keeps the set it started with
        self.folder = ""
        self.enable = ""
        self._signature: tuple = ()
        self._watcher: asyncio.Task | None = None

    def load(self, folder: str, enable: str) -> None:
        """Load and swap in `folder`'s rules. Raises RuleError (the running rules stay)."""
        self.folder, self.enable = folder, enable  # watched from now on, even if bad now
        rules, signature = self._read(folder, enable)
        self._swap(rules, signature)

    def clear(self) -> None:
        self.rules = RuleSet([])

    def reload(self) -> str:
        """Validate the folder fully, then swap it in; keep the running rules if it is bad."""
        try:
            rules, signature = self._read(self.folder, self.enable)
        except RuleError as e:
            self._signature = rules_signature(self.folder)
            message = f"agent-session-ids: rules not reloaded, keeping the {len(self.rules.rules)} running ones: {e}"
            logger.error(message)
            return message
        self._swap(rules, signature)
        return f"reloaded {len(rules)} rules from {self.folder}"

    def watch(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    @staticmethod
    def _read(folder: str, enable: str) -> tuple[list[Rule], tuple]:
        signature = rules_signature(folder)
        return active_rules(load_rules_dir(folder), enable), signature

    def _swap(self, rules: list[Rule], signature: tuple) -> None:
        self.rules = RuleSet(rules)
        self._signature = signature
        logger.info(
            f"agent-session-ids: {len(rules)} rules from {self.folder} "
            f"for {', '.join(self.rules.hosts) or 'no hosts'}; agents: "
            f"{', '.join(p.name for p in agents.PROFILES)}"
        )

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                signature = await asyncio.get_running_loop().run_in_executor(None, rules_signature, self.folder)
                if signature != self._signature:
                    self.reload()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._warn_once("watch", f"watching the rules folder failed: {e!r}")
