"""What the resolver remembers, as plain records: a minted ID bound to its file for good (Bound),
a session whose file has not appeared (Pending), the session each live process is on (OnProcess),
and the limits on how many and how long. No I/O; saved and loaded by the resolver's
export_state/load_state."""

from __future__ import annotations

from dataclasses import dataclass

# Clock slack between a process's start time and the creation time an agent writes in its file.
SLACK_S = 2.0
# How many minted-ID bindings the state keeps (oldest dropped first).
MAX_BOUND = 20_000
# How long the minted ID of an ended process whose file never showed up is kept, so that a later
# look at its file (`pi -c` after a one-request `pi -p`) can still bind it; and how many.
ORPHAN_TTL_S = 7 * 24 * 3600.0
MAX_PENDING = 20_000
# Without the process: a file with the request's first user turn created this long before a
# minted session's first request may be its file (the agent creates the session at start and
# writes the file later), and a first turn seen again this long after is taken as the same session.
NO_PROCESS_WINDOW_S = 600.0


@dataclass
class Bound:
    """A session first seen before its file: it keeps the ID its first request got."""

    id: str
    trace_uuid: str
    seen: float


@dataclass
class Pending:
    """A process's session whose file has not appeared (yet, or ever: --no-session)."""

    id: str
    trace_uuid: str
    first_user: str | None
    since: float  # its first request
    agent: str
    started_at: float  # its process's start
    cwd: str
    ended: bool = False  # its process is gone; kept to bind the file if one is seen later


@dataclass
class OnProcess:
    """The session a live process is on."""

    agent_session: str | None  # the agent's own session id, once known
    file: str | None
    first_user: str | None
    since: float
    pending: Pending | None = None
