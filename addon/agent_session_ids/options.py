"""SessionIds' options, with their help (`mitmdump --set` names them)."""

from __future__ import annotations

import ipaddress

from .rules import default_rules_dir

DEFAULT_RULES = default_rules_dir()

OPTIONS = (
    (
        "session_rules",
        str,
        DEFAULT_RULES,
        "Folder of YAML rule files that say which gateway requests get a session ID, and where it goes. "
        "Defaults to the rules/ folder shipped with agent-session-ids. Edits are picked up live.",
    ),
    (
        "session_enable",
        str,
        "",
        "Rules that ship off (self-hosted gateways: litellm-session, bifrost-session) to switch on, "
        "separated by commas, each as name or name@host (the gateway's host, matched instead of the "
        "rule's own; give a name several times for several hosts).",
    ),
    (
        "session_state_file",
        str,
        "",
        "File that keeps the session IDs minted for sessions whose first request came before their "
        "session file, so they survive a proxy restart. Empty: <confdir>/agent-session-ids/state.json.",
    ),
    (
        "session_fallback",
        bool,
        True,
        "Give requests of programs that are not known agents (curl, scripts) a per-process fallback "
        "session ID. Off: only agent sessions are set, whatever the rules say.",
    ),
    (
        "session_store_homes",
        str,
        "",
        "Extra home folders whose agent session stores the proxy may read, separated by ':' "
        "(an agent's HOME in a container, its store bind-mounted): sessions are then found by "
        "their id or conversation there too. The proxy user's own stores are always read for "
        "requests whose process is not seen to be another user's; a process of another user (Linux) "
        "is looked up only in these folders.",
    ),
    (
        "session_rename",
        str,
        "follow",
        "What a session renamed mid-way (pi's /name) does to the ids sent: follow, the new name's label is "
        "sent from the next request on (a new OpenRouter sticky key: the next turn may land on a cold "
        "provider); keep, the ids sent stay those of the session's first request, and the new name shows "
        "in mitmweb, the ledger and the report.",
        ("follow", "keep"),
    ),
    (
        "session_privacy",
        bool,
        False,
        "Send a hash of a session's name instead of its name: labels read <hash>-<8 chars of the ID>, "
        "and {session.name} is the hash.",
    ),
)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_listener_warning(options) -> str | None:
    """Said at start-up when the proxy listens beyond loopback and asks no one for a password."""
    host = getattr(options, "listen_host", "127.0.0.1")
    auth = getattr(options, "proxyauth", None) if "proxyauth" in options else None
    if _is_loopback(host) or auth:
        return None
    return (
        f"the proxy listens on {host or 'every interface'} without proxyauth: anyone who can reach it "
        "can use it. Start it with --listen-host 127.0.0.1."
    )
