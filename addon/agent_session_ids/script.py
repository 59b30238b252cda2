"""The addon as a mitmproxy script file of the installed package: `mitmdump -s <this file>`.

`agent-session-ids` (run.py) passes it for you; from a checkout, `addon/session_ids.py` is the same.
"""

from agent_session_ids.addon import SessionIds
from agent_session_ids.status import StatusProbe
from agent_session_ids.usage.addon import UsageLedger

session_ids = SessionIds()
# as mitmproxy lists its own: one feature, one addon (the probe first: it answers before any rule)
addons = [StatusProbe(session_ids), session_ids, UsageLedger()]
