"""Entry point: `mitmdump -s addon/session_ids.py`.

Works from a checkout (the package sits next to this file) and from an installed package.
mitmproxy's hot reload re-runs only this file, so the package's modules are dropped first and
imported afresh: an edit to any of them takes effect on reload.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.insert(0, _here)
for _name in [m for m in sys.modules if m == "agent_session_ids" or m.startswith("agent_session_ids.")]:
    del sys.modules[_name]

from agent_session_ids.addon import SessionIds  # noqa: E402
from agent_session_ids.status import StatusProbe  # noqa: E402
from agent_session_ids.usage.addon import UsageLedger  # noqa: E402

session_ids = SessionIds()
# as mitmproxy lists its own: one feature, one addon (the probe first: it answers before any rule)
addons = [StatusProbe(session_ids), session_ids, UsageLedger()]
