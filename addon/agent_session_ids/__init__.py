"""agent-session-ids: give every coding-agent request the gateway session ID of its agent session."""

__version__ = "0.1.0"
# the reserved host the proxy answers its status at (status.py); here, so the commands that ask it
# import nothing of mitmproxy
PROBE_HOST = "agent-session-ids.invalid"
