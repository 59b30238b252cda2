"""agent-session-ids: give every coding-agent request the gateway session ID of its agent session."""

__version__ = "0.1.0"
