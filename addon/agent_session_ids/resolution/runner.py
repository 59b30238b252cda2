"""Runs the session finder for the addon: where each resolution runs, the background work between
requests, and the state file. No mitmproxy here.

- A resolution runs on the event loop when all it reads is known and on local filesystems (a
  few syscalls, cheaper than a thread hop); otherwise on one worker thread, with a time limit,
  so that a dead network mount or a large store can never hang the proxy.
- One lock keeps the resolver and the stores to one thread at a time: the worker, or the event
  loop when the worker is free.
- Between requests, on the worker: large files' tails in budgets, pruning ended processes, and
  the state file, written at most once a second.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from . import state
from .finder import SessionFinder
from .jsonl_store import INLINE
from .model import Evidence, Process, Seen, Session
from .proc import ProcessTable
from .tree import SessionTree

# Past this, the request goes on unchanged. Generous: a loaded 2-core machine must not turn into
# requests with no session.
RESOLVE_TIMEOUT_S = 2.0
STATE_SAVE_DELAY_S = 1.0
STATE_LOAD_WAIT_S = 5.0

_T = TypeVar("_T")


class Runner:
    def __init__(self, warn_once: Callable[[str, str], None], processes: ProcessTable) -> None:
        self.finder = SessionFinder(recheck=processes.recheck, alive=processes.alive)
        self.tree = SessionTree()  # where each session sits: on the event loop only
        self._warn_once = warn_once
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="session-ids")
        self._lock = threading.Lock()
        self._state_path: str | None = None
        self._catching_up = False
        self._save_pending = False

    # -- lifecycle ----------------------------------------------------------------------------

    def set_homes(self, homes: Iterable[str]) -> None:
        self._worker.submit(self._locked, self.finder.set_roots, os.environ, list(homes))

    def use_state_file(self, path: str) -> None:
        """Load the bindings saved in `path` (waiting a while; a slow disk finishes later)."""
        if path == self._state_path:
            return
        self._state_path = path
        loading = self._worker.submit(self._locked, self._load_state, path)
        try:
            loading.result(timeout=STATE_LOAD_WAIT_S)
        except TimeoutError:  # requests resolve meanwhile; the bindings join when read
            self._warn_once("state-slow", f"reading the session state {path} goes on in the background")

    def start(self) -> None:
        # list the stores by file name now, so that the first requests find their files by id
        self._worker.submit(self._locked, self._warm)

    def stop(self) -> None:
        try:
            self._worker.submit(self._save_state).result(timeout=2)
        except Exception as e:  # shutting down: say why, never raise
            self._warn_once("state-save", f"could not save state: {e}")
        self._worker.shutdown(wait=False)

    def forget_connection(self, connection_id: str) -> None:
        self.finder.forget_connection(connection_id)

    # -- one request --------------------------------------------------------------------------

    async def resolve(self, evidence: Evidence, seen: Seen) -> tuple[Session, Process | None]:
        finder = self.finder
        session = None
        proc = seen.process
        if proc is None:
            # the request of a process that cannot be read, continuing its session: the memo
            session = self._inline(finder.unseen_from_memo, evidence, seen, INLINE)
        if session is None:
            result = self._inline(finder.find, evidence, seen, time.time(), INLINE) if self._inline_ok(proc) else None
            if result is None:
                result = await asyncio.wait_for(
                    asyncio.get_running_loop().run_in_executor(
                        self._worker, self._locked, finder.find, evidence, seen, time.time()
                    ),
                    RESOLVE_TIMEOUT_S,
                )
            session, proc = result
        self._between_requests()
        return self.tree.place(session, evidence.headers, proc), proc

    def _inline(self, fn: Callable[..., _T], *args: object) -> _T | None:
        """fn(*args) on the event loop (given the INLINE read budget: every read a small step);
        None if the worker has the lock."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return fn(*args)
        finally:
            self._lock.release()

    def _inline_ok(self, proc: Process | None) -> bool:
        """Only when everything the resolution reads is known, on local filesystems, and no folder
        is still being indexed."""
        stores = self.finder.stores
        return proc is not None and not stores.io.jsonl.behind and stores.warm_and_local(proc.key)

    def _locked(self, fn: Callable[..., _T], *args: object) -> _T:
        with self._lock:
            return fn(*args)

    # -- between requests, on the worker ---------------------------------------------------

    def _between_requests(self) -> None:
        self._schedule_catch_up()
        now = time.time()
        if self.finder.prune_due(now):
            self._worker.submit(self._locked, self.finder.prune, now)
        if self.finder.scopes.dirty and not self._save_pending:
            # batch state writes: at most one a second, off the request path
            self._save_pending = True
            asyncio.get_running_loop().call_later(
                STATE_SAVE_DELAY_S, self._worker.submit, self._locked, self._save_state
            )

    def _warm(self) -> None:
        try:
            self.finder.scopes.warm()
        except Exception as e:
            self._warn_once("warm", f"listing the session stores failed: {e!r}")
        self._schedule_catch_up()

    def _schedule_catch_up(self) -> None:
        if self.finder.stores.io.jsonl.behind and not self._catching_up:
            self._catching_up = True
            self._worker.submit(self._locked, self._catch_up)

    def _catch_up(self) -> None:
        """Read large files' tails one budget at a time, queued between requests on the worker."""
        try:
            more = self.finder.stores.io.jsonl.catch_up()
        except Exception as e:
            self._warn_once("catch-up", f"reading a session file failed: {e!r}")
            more = False
        if more:
            self._worker.submit(self._locked, self._catch_up)
        else:
            self._catching_up = False

    def _load_state(self, path: str) -> None:
        """Load the saved bindings. A state file that cannot be used never stops the proxy: it is
        set aside (kept as <file>.bad), said once, and a fresh one replaces it."""
        try:
            state.remove_stale_temp_files(path)
            self.finder.load_state(state.load(path))
            self.finder.prune(time.time())
        except Exception as e:  # StateError, or anything a damaged file provokes
            self.finder.scopes.reset_bindings()
            aside = state.set_aside(path)
            kept = f"; it was kept as {aside}" if aside else ""
            self._warn_once(
                "state-load", f"the session state file {path} cannot be used ({e}); starting with an empty state{kept}"
            )

    def _save_state(self) -> None:
        self._save_pending = False
        if self._state_path and self.finder.scopes.dirty:
            try:
                state.save(self._state_path, self.finder.export_state())
            except OSError as e:
                self._warn_once("state-save", f"cannot save the session state to {self._state_path}: {e}")
