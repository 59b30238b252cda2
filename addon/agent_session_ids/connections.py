"""The process behind each client connection: looked up once when it connects, off the event
loop, and awaited by its requests. An adapter between mitmproxy's connections and
resolution/visibility.py (which asks resolution/proc, the reader of /proc and netlink)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .resolution import visibility
from .resolution.model import Process, Seen
from .resolution.proc import ProcessTable

# The process lookup's wait; past it the request is resolved without the process. Generous: a
# loaded 2-core machine must not lose the process of a request.
LOOKUP_TIMEOUT_S = 1.0


class Connections:
    def __init__(self, warn_once: Callable[[str, str], None], processes: ProcessTable) -> None:
        self._warn_once = warn_once
        self._processes = processes
        self.lookups: dict[str, asyncio.Future] = {}  # client id -> process lookup

    def connected(self, client) -> asyncio.Future:
        """Start the lookup (on mitmproxy's executor); requests on the connection await it."""
        future = self.lookups[client.id] = asyncio.get_running_loop().run_in_executor(
            None, visibility.lookup, self._processes, client.peername, client.sockname
        )
        return future

    def disconnected(self, client_id: str) -> None:
        self.lookups.pop(client_id, None)

    async def process_of(self, client) -> Seen:
        """The connection's process, or why it cannot be read. Never raises."""
        future = self.lookups.get(client.id) or self.connected(client)
        try:
            if future.done():
                return future.result()  # the usual case: looked up when the client connected
            return await asyncio.wait_for(asyncio.shield(future), LOOKUP_TIMEOUT_S)
        except TimeoutError:
            self._warn_once("lookup-timeout", "the process lookup took too long; resolving without it")
            return Seen(None, "the process lookup took too long")
        except Exception as e:
            self._warn_once(f"lookup-{type(e).__name__}", f"the process lookup failed: {e!r}; resolving without it")
            return Seen(None, f"the process lookup failed ({type(e).__name__})")

    def remember(self, client_id: str, proc: Process | None, seen: Seen) -> None:
        """The resolution found the connection's process changed (a fork left alone with the
        socket, an exec): its next requests start from the new one."""
        if proc is seen.process:
            return
        future = self.lookups.get(client_id)
        if future is not None and future.done() and not future.cancelled() and future.exception() is None:
            replaced = asyncio.get_running_loop().create_future()
            replaced.set_result(Seen(proc, seen.unreadable if proc is None else None))
            self.lookups[client_id] = replaced
